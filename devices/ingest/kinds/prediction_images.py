"""``prediction_images``: images a device kept for some of its predictions, one member each:
``images/<prediction id>.<png|jpg|jpeg|webp>``, the prediction ids listed in ``manifest.records``.

Every image is decoded in full under the pixel limit, and must be in the format its extension
names, before anything is stored. Files go to the prediction-images storage under
``<device id>/<prediction id>.<ext>``; rows are unique on (device, prediction id), so an image
that arrives again (a replay, or another package) is skipped, file and row.
"""

from __future__ import annotations

import re
import uuid

from devices.ingest.archive import ArchiveError, ImageFile
from devices.ingest.kinds import store_file
from devices.models import PackageKind, PredictionImage

KIND = PackageKind.PREDICTION_IMAGES
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
IMAGE = re.compile(rf"images/({_UUID})\.(png|jpg|jpeg|webp)")
MEMBERS = (IMAGE,)
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def handle(package, contents) -> dict:
    paths = _paths_by_prediction(contents.files)
    _check_records(contents.manifest, paths)
    images = {prediction_id: _open(contents, path) for prediction_id, path in paths.items()}
    stored = PredictionImage.objects.filter(device=package.device_id, prediction_id__in=list(paths))
    known = set(stored.values_list("prediction_id", flat=True))
    fresh = [_store(package, pid, paths[pid], image) for pid, image in images.items() if pid not in known]
    PredictionImage.objects.bulk_create(fresh, ignore_conflicts=True)
    return {"images": len(images), "stored": len(fresh)}


def _paths_by_prediction(files) -> dict[uuid.UUID, str]:
    paths: dict[uuid.UUID, str] = {}
    for path in sorted(files):
        prediction_id = uuid.UUID(IMAGE.fullmatch(path).group(1))
        if prediction_id in paths:
            raise ArchiveError(f"Prediction {prediction_id} has two images: {paths[prediction_id]!r} and {path!r}.")
        paths[prediction_id] = path
    return paths


def _check_records(manifest: dict, paths: dict[uuid.UUID, str]) -> None:
    listed = {uuid.UUID(record) for record in manifest["records"]}
    for prediction_id, path in paths.items():
        if prediction_id not in listed:
            raise ArchiveError(f"Member {path!r} is for prediction {prediction_id}, not listed in manifest.records.")
    if missing := listed - paths.keys():
        raise ArchiveError(f"manifest.records lists prediction {min(missing)}, but the package has no image for it.")


def _open(contents, path: str) -> ImageFile:
    image = contents.image(path)
    expected = FORMATS[path.rsplit(".", 1)[1]]
    if image.format != expected:
        raise ArchiveError(f"Image {path!r} is a {image.format} file, not {expected} as its extension says.")
    return image


def _store(package, prediction_id: uuid.UUID, path: str, image: ImageFile) -> PredictionImage:
    extension = path.rsplit(".", 1)[1]
    return PredictionImage(
        device_id=package.device_id,
        prediction_id=prediction_id,
        storage_key=_save(f"{package.device_id}/{prediction_id}.{extension}", image.data),
        content_type=image.content_type,
        width=image.width,
        height=image.height,
        size=len(image.data),
        package=package,
    )


def _save(name: str, data: bytes) -> str:
    return store_file("prediction_images", name, data)
