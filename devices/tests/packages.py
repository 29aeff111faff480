"""Building package archives for tests: well-formed ones like the edge client's, and every
kind of malformed one (members are given as TarInfo-like specs so links, devices, absolute
paths and lying sizes can be made)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import uuid
from dataclasses import dataclass, field

PACKAGES = "/api/v1/device/packages"


@dataclass
class Archive:
    package_id: str
    kind: str
    body: bytes
    manifest: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    def headers(self, **overrides) -> dict:
        headers = {
            "HTTP_X_PACKAGE_ID": self.package_id,
            "HTTP_X_PACKAGE_KIND": self.kind,
            "HTTP_X_PACKAGE_SHA256": self.sha256,
        }
        headers.update(overrides)
        return headers


def manifest_for(device, kind: str, files: list[tuple[str, bytes]], *, package_id=None, records=None) -> dict:
    return {
        "format": 1,
        "id": str(package_id or uuid.uuid4()),
        "kind": kind,
        "device": str(getattr(device, "pk", device)),
        "created": "2026-11-23T11:58:12.500Z",
        "client_version": "0.1.0",
        "records": [str(record) for record in (records or [])],
        "files": [{"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in files],
    }


def build(device, kind: str, files: list[tuple[str, bytes]], *, records=None, manifest=None, extra=None) -> Archive:
    """A package as the edge client builds it. ``manifest`` overrides manifest keys; ``extra``
    adds raw members (TarInfo, data) after the listed files."""
    document = manifest_for(device, kind, files, records=records)
    document.update(manifest or {})
    members = [(_info("manifest.json", json.dumps(document).encode()), json.dumps(document).encode())]
    members += [(_info(name, data), data) for name, data in files]
    members += list(extra or [])
    return Archive(document["id"], kind, tar_gz(members), document)


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def _info(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
    return info


def upload(api, persona, archive: Archive, **headers):
    return api.post(
        PACKAGES,
        data=archive.body,
        content_type="application/gzip",
        **persona.auth,
        **archive.headers(**headers),
    )


def metrics_lines(*heartbeats: dict) -> bytes:
    return b"".join(json.dumps(heartbeat).encode() + b"\n" for heartbeat in heartbeats)
