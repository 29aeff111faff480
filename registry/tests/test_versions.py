"""Versions, bundles and aliases: integrity, history, resolution, the shipped version."""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.storage import storages
from django.utils import timezone

from edge_client.bundles import BundleManager
from edge_client.knn import KNN
from edge_client.pipeline import load_bundle
from edge_client.transforms import PCA, FeatureTransform, StandardScaler
from labeling.models import LabelTask
from registry import versions
from registry.bundles import BundleError, build_bundle, read_bundle
from registry.models import CHALLENGER, CHAMPION, AliasEvent, ModelVersion, VersionStatus
from registry.tests.factories import digits_family

pytestmark = pytest.mark.django_db


def _model(seed=0, n=40, dim=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    y = np.arange(n) % 3
    scaler = StandardScaler.fit(x)
    pca = PCA.fit(scaler.transform(x), n_components=4)
    transform = FeatureTransform([scaler, pca])
    return transform, KNN(k=3, max_size=n).fit(transform.transform(x), y), x


def _register(family, seed=0, **fields):
    transform, knn, _ = _model(seed)
    number = versions.next_number(family)
    built = build_bundle(
        label=f"{family.name}@{number}", classes=["a", "b", "c"], transform=transform, knn=knn, feature_dim=6
    )
    return versions.register_version(family, built, feature_dim=6, number=number, **fields)


class TestBundles:
    def test_the_same_model_gives_the_same_bytes_and_sha256(self):
        transform, knn, _ = _model()
        one = build_bundle(label="m@1", classes=["a", "b", "c"], transform=transform, knn=knn, feature_dim=6)
        two = build_bundle(label="m@1", classes=["a", "b", "c"], transform=transform, knn=knn, feature_dim=6)
        assert one.data == two.data and one.sha256 == hashlib.sha256(one.data).hexdigest()

    def test_a_bundle_reads_back_to_the_same_predictions(self):
        transform, knn, x = _model()
        built = build_bundle(label="m@1", classes=["a", "b", "c"], transform=transform, knn=knn, feature_dim=6)
        contents = read_bundle(built.data)
        expected = knn.predict_batch(transform.transform(x)).labels
        assert contents.knn.predict_batch(contents.transform.transform(x)).labels.tolist() == expected.tolist()
        assert contents.manifest["version"] == "m@1" and contents.manifest["feature_dim"] == 6

    def test_a_member_changed_after_building_is_refused_by_its_manifest_hash(self):
        transform, knn, _ = _model()
        built = build_bundle(label="m@1", classes=["a", "b", "c"], transform=transform, knn=knn, feature_dim=6)
        tampered = _rewrite(built.data, "transform.json", b'{"steps": []}')
        with pytest.raises(BundleError, match="transform.json: sha256 does not match"):
            read_bundle(tampered)

    def test_links_and_nested_paths_are_refused(self):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w:gz") as tar:
            link = tarfile.TarInfo("knn.npz")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
        with pytest.raises(BundleError, match="only plain top-level files"):
            read_bundle(raw.getvalue())

    def test_the_edge_client_installs_and_loads_a_server_bundle(self, tmp_path):
        transform, knn, x = _model()
        built = build_bundle(label="m@1", classes=["a", "b", "c"], transform=transform, knn=knn, feature_dim=6)
        manager = BundleManager(tmp_path, loader=load_bundle, http=_Serving(built.data))
        outcome = manager.apply({"version": "m@1", "sha256": built.sha256, "url": "http://s/b/1", "size": built.size})
        assert outcome.status == "installed"
        loaded_transform, loaded_knn = load_bundle(manager.current().path)
        assert loaded_knn.predict_batch(loaded_transform.transform(x)).labels.tolist() == (
            knn.predict_batch(transform.transform(x)).labels.tolist()
        )


class TestRegistering:
    def test_versions_are_numbered_per_family_and_stored_with_their_sha256(self):
        family = digits_family()
        first, second = _register(family, 0), _register(family, 1)
        assert (first.number, second.number) == (1, 2) and second.label == "digits@2"
        with storages["artifacts"].open(second.bundle_key, "rb") as handle:
            data = handle.read()
        assert hashlib.sha256(data).hexdigest() == second.bundle_sha256 and len(data) == second.bundle_size

    def test_a_failed_row_leaves_no_bundle_behind(self, monkeypatch):
        family = digits_family()
        monkeypatch.setattr(ModelVersion.objects, "create", _raise)
        with pytest.raises(RuntimeError):
            _register(family)
        assert (
            not storages["artifacts"].exists("models/digits") or not storages["artifacts"].listdir("models/digits")[1]
        )

    def test_archiving_a_version_with_an_alias_is_refused(self):
        family = digits_family()
        version = _register(family)
        versions.move_alias(family, CHALLENGER, version)
        with pytest.raises(ValueError, match="still has aliases"):
            versions.archive_version(version, "worse")
        versions.move_alias(family, CHALLENGER, None)
        assert versions.archive_version(version, "worse").status == VersionStatus.ARCHIVED

    def test_the_shipped_reference_becomes_version_one_and_champion_once(self):
        family = digits_family()
        version = versions.ensure_shipped_version(family)
        assert version.label == "digits@1" and version.source == "shipped"
        assert versions.alias_version(family, CHAMPION) == version
        assert versions.ensure_shipped_version(family) == version and family.versions.count() == 1
        loaded = versions.load_model(version)
        assert loaded.feature_dim == 64 and loaded.classes == [str(n) for n in range(10)]


class TestAliases:
    def test_every_move_is_recorded_and_the_past_can_be_asked(self):
        family = digits_family()
        one, two = _register(family, 0), _register(family, 1)
        start = timezone.now()
        versions.move_alias(family, CHAMPION, one, reason="first")
        AliasEvent.objects.filter(alias=CHAMPION).update(at=start)
        versions.move_alias(family, CHAMPION, two, reason="better")
        later = AliasEvent.objects.filter(alias=CHAMPION, version=two).get()
        AliasEvent.objects.filter(pk=later.pk).update(at=start + timedelta(hours=1))
        assert versions.alias_at(family, CHAMPION, start - timedelta(seconds=1)) is None
        assert versions.alias_at(family, CHAMPION, start + timedelta(minutes=30)) == one
        assert versions.alias_at(family, CHAMPION, start + timedelta(hours=2)) == two
        assert later.previous == one and later.reason == "better"

    def test_moving_to_where_it_points_writes_no_history(self):
        family = digits_family()
        one = _register(family)
        versions.move_alias(family, CHALLENGER, one)
        assert versions.move_alias(family, CHALLENGER, one) is None
        assert AliasEvent.objects.filter(alias=CHALLENGER).count() == 1

    def test_removing_an_alias_is_history_too(self):
        family = digits_family()
        one = _register(family)
        versions.move_alias(family, CHALLENGER, one)
        event = versions.move_alias(family, CHALLENGER, None, reason="withdrawn")
        assert event.version is None and event.previous == one
        assert versions.alias_version(family, CHALLENGER) is None

    def test_a_new_champion_recomputes_the_labeling_priorities(self, monkeypatch):
        from labeling import tasks as labeling_tasks

        seen = []
        monkeypatch.setattr(labeling_tasks.recompute_priorities, "delay_on_commit", seen.append)
        family = digits_family()
        versions.move_alias(family, CHAMPION, _register(family))
        assert seen == [family.class_set_id]
        assert LabelTask.objects.count() == 0  # nothing else touched

    def test_another_familys_version_cannot_take_an_alias(self):
        from labeling.models import ClassSet
        from registry.models import ModelFamily

        other = ModelFamily.objects.create(name="other", class_set=ClassSet.objects.create(name="other", classes=["x"]))
        with pytest.raises(ValueError, match="not a version of other"):
            versions.move_alias(other, CHAMPION, _register(digits_family()))


class TestResolving:
    def test_by_alias_number_and_label(self):
        family = digits_family()
        one, two = _register(family, 0), _register(family, 1)
        versions.move_alias(family, CHAMPION, one)
        assert versions.resolve("digits", "champion") == one
        assert versions.resolve("digits", "2") == two
        assert versions.resolve("digits", "digits@2") == two

    @pytest.mark.parametrize(
        "family, ref, message",
        [("nope", "1", "no model family 'nope'"), ("digits", "9", "no version or alias '9'"), ("digits", "x@1", "x@1")],
    )
    def test_unknown_references_say_what_is_missing(self, family, ref, message):
        with pytest.raises(versions.VersionNotFound, match=message):
            versions.resolve(family, ref)

    def test_what_ran_on_a_device_at_a_moment_comes_from_its_heartbeats(self, device_a):
        from devices.models import Telemetry

        now = timezone.now()
        for minutes, label in ((60, "digits@1"), (30, "digits@2")):
            Telemetry.objects.create(
                device=device_a.device,
                client_id=uuid.uuid4(),
                received_at=now - timedelta(minutes=minutes),
                model_version=label,
            )
        assert versions.version_on_device_at(device_a.device, now - timedelta(minutes=45)) == "digits@1"
        assert versions.version_on_device_at(device_a.device, now) == "digits@2"
        assert versions.version_on_device_at(device_a.device, now - timedelta(hours=2)) == ""


# --- helpers ---------------------------------------------------------------------------------------


class _Answer:
    def __init__(self, status=200):
        self.status, self.ok = status, status == 200

    def text(self, limit=None):
        return ""


class _Serving:
    TooLarge = TransportError = RuntimeError

    def __init__(self, data: bytes):
        self.data = data

    def download(self, url, writer, *, max_bytes, token, timeout):
        writer.write(self.data)
        return _Answer()


def _rewrite(data: bytes, name: str, content: bytes) -> bytes:
    source = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for member in source:
            body = content if member.name == name else source.extractfile(member).read()
            member.size = len(body)
            tar.addfile(member, io.BytesIO(body))
    return raw.getvalue()


def _raise(*args, **kwargs):
    raise RuntimeError("database refused the row")
