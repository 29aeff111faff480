"""Model bundles: verified downloads, safe unpacking, atomic switch, rollback slot."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest

from edge_client.bundles import BundleManager
from edge_client.tests.flaky_server import FlakyServer


@pytest.fixture
def server():
    with FlakyServer() as server:
        yield server


class Loader:
    """Stands in for the pipeline: loads the arrays, fails on demand, remembers what serves."""

    def __init__(self):
        self.serving, self.calls, self.broken = None, [], set()

    def __call__(self, path):
        self.calls.append(path.name)
        weights = np.load(path / "weights.npz", allow_pickle=False)
        if int(weights["version"]) in self.broken:
            raise RuntimeError("reference set has the wrong shape")
        self.serving = int(weights["version"])


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def tar_gz(files: dict[str, bytes], *, links: dict[str, str] | None = None, hardlinks=None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        for name, target in (hardlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.LNKTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


@functools.cache  # np.savez stamps the zip with the current time: build each version's bytes once
def bundle(version: int) -> bytes:
    weights = npz(version=np.array(version), reference=np.ones((4, 3), dtype=np.float32))
    card = json.dumps({"labels": list("0123456789")}).encode()
    manifest = {"files": [{"path": "weights.npz", "sha256": hashlib.sha256(weights).hexdigest()}]}
    return tar_gz({"weights.npz": weights, "labels.json": card, "manifest.json": json.dumps(manifest).encode()})


def offer(server, name: str, data: bytes, *, version: str | None = None, **overrides) -> dict:
    server.files[name] = data
    model = {
        "version": version or name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "url": f"/files/{name}",
        "size": len(data),
    }
    return {**model, **overrides}


def manager(server, tmp_path, loader, **kwargs) -> BundleManager:
    return BundleManager(
        tmp_path / "bundles", loader=loader, server_url=server.url, token=lambda: "sphd_device", **kwargs
    )


def installed(server, tmp_path, loader, *versions) -> BundleManager:
    bundles = manager(server, tmp_path, loader)
    for version in versions:
        assert bundles.apply(offer(server, f"v{version}", bundle(version))).status == "installed"
    return bundles


def test_it_installs_a_bundle_and_keeps_the_previous_one_as_rollback_slot(server, tmp_path):
    loader = Loader()
    bundles = installed(server, tmp_path, loader, 1, 2)

    assert (bundles.current().version, bundles.previous().version) == ("v2", "v1")
    assert loader.serving == 2
    assert (bundles.current().path / "labels.json").is_file()
    assert bundles.apply(offer(server, "v2", bundle(2))).status == "unchanged"

    assert bundles.rollback().status == "installed"
    assert (bundles.current().version, bundles.previous().version, loader.serving) == ("v1", "v2", 1)


def test_only_current_and_previous_are_kept_on_disk(server, tmp_path):
    bundles = installed(server, tmp_path, Loader(), 1, 2, 3)
    kept = {folder.name for folder in (tmp_path / "bundles" / "versions").iterdir()}
    assert kept == {bundles.current().sha256, bundles.previous().sha256}
    assert not list((tmp_path / "bundles" / "tmp").iterdir())


def test_returning_to_the_previous_version_needs_no_download(server, tmp_path):
    bundles = installed(server, tmp_path, Loader(), 1, 2)
    downloads = server.count("GET", "/files/v1")
    assert bundles.apply(offer(server, "v1", bundle(1))).status == "installed"
    assert server.count("GET", "/files/v1") == downloads


def test_a_corrupt_download_is_refused_while_the_old_bundle_keeps_serving(server, tmp_path):
    loader = Loader()
    bundles = installed(server, tmp_path, loader, 1)
    model = offer(server, "v2", bundle(2))
    server.files["v2"] = bundle(2)[:-10] + b"\0" * 10  # flipped bytes on the way

    outcome = bundles.apply(model)

    assert outcome.status == "refused" and "sha256 mismatch" in outcome.error
    assert (bundles.current().version, loader.serving, loader.calls) == ("v1", 1, [bundles.current().sha256])
    # A checksum failure may be transient: retried, but only after a delay.
    assert bundles.apply(model).status == "deferred"
    assert server.count("GET", "/files/v2") == 1


def test_a_bundle_whose_file_does_not_match_its_manifest_is_refused_and_the_old_one_keeps_serving(server, tmp_path):
    loader = Loader()
    bundles = installed(server, tmp_path, loader, 1)
    signed_sha256 = hashlib.sha256(npz(version=np.array(2))).hexdigest()
    signed = json.dumps({"files": [{"path": "weights.npz", "sha256": signed_sha256}]})
    swapped = npz(version=np.array(666))  # a valid npz, but not the one manifest.json vouches for
    archive = tar_gz({"weights.npz": swapped, "manifest.json": signed.encode()})

    outcome = bundles.apply(offer(server, "v2", archive))  # the outer sha256 matches the tampered tar

    assert outcome.status == "refused" and "weights.npz: sha256 does not match manifest.json" in outcome.error
    assert (bundles.current().version, loader.serving, len(loader.calls)) == ("v1", 1, 1)
    assert len(list((tmp_path / "bundles" / "versions").iterdir())) == 1


class Payload:
    """Unpickling this object would create ``marker``: proof that a pickle ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_an_npz_holding_a_pickled_object_array_is_refused_without_unpickling_it(server, tmp_path):
    loader = Loader()
    bundles = installed(server, tmp_path, loader, 1)
    marker = tmp_path / "pickle-ran"
    pickled = npz(version=np.array(2), reference=np.array([Payload(marker)], dtype=object))

    outcome = bundles.apply(offer(server, "weights.npz", pickled))

    assert outcome.status == "refused" and "weights.npz: does not load" in outcome.error, outcome
    assert "allow_pickle" in outcome.error
    assert not marker.exists()
    assert (bundles.current().version, loader.serving) == ("v1", 1)


def test_a_download_the_server_fails_is_deferred_not_refused_and_retried_later(server, tmp_path):
    clock = [1000.0]
    bundles = manager(server, tmp_path, Loader(), clock=lambda: clock[0])
    model = offer(server, "v1", bundle(1))
    server.set_faults(error=1.0, paths=("/files/",))

    outcome = bundles.apply(model)

    # Nothing is known against the bundle itself: the server must not fail the rollout over it.
    assert outcome.status == "deferred" and "HTTP 500" in outcome.error
    assert bundles.last_outcome()["status"] == "deferred"
    server.set_faults()
    assert bundles.apply(model).status == "deferred"  # waits for its retry time
    clock[0] += 61
    assert bundles.apply(model).status == "installed"


def test_the_last_outcome_is_the_heartbeats_bundle_object(server, tmp_path):
    bundles = manager(server, tmp_path, Loader(), clock=lambda: 1234.5)
    assert bundles.last_outcome() is None
    model = offer(server, "v1", bundle(1))

    bundles.apply(model)

    assert bundles.last_outcome() == {
        "status": "installed",
        "version": "v1",
        "sha256": model["sha256"],
        "error": "",
        "at": 1234.5,
    }


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (
            {"status": "refused", "version": "v" * 90, "sha256": "F" * 64, "error": "e" * 2500, "at": 1.0, "x": 1},
            {"status": "refused", "version": "v" * 80, "sha256": None, "error": "e" * 2000, "at": 1.0},
        ),
        (
            {"status": "rolled_back", "version": 3, "sha256": None, "error": None, "at": "yesterday"},
            {"status": "rolled_back", "version": None, "sha256": None, "error": "", "at": None},
        ),
        (
            {"status": "refused", "error": "bad name \udcff\x00 here"},
            {"status": "refused", "version": None, "sha256": None, "error": "bad name ? here", "at": None},
        ),
        (
            {"status": "installed", "sha256": "ab" * 32 + "\n", "error": ["x"], "at": float("nan")},
            {"status": "installed", "version": None, "sha256": None, "error": "", "at": None},
        ),
        ({"status": "exploded"}, None),
        ({"status": ["refused"]}, None),
        ([], None),
    ],
)
def test_the_last_outcome_keeps_to_the_servers_keys_and_limits(tmp_path, stored, expected):
    bundles = BundleManager(tmp_path / "bundles")
    (tmp_path / "bundles" / "last_outcome.json").write_text(json.dumps(stored))
    assert bundles.last_outcome() == expected


def test_an_unreadable_last_outcome_is_no_outcome(tmp_path):
    bundles = BundleManager(tmp_path / "bundles")
    (tmp_path / "bundles" / "last_outcome.json").write_text('{"status": "ins')
    assert bundles.last_outcome() is None


def test_a_bundle_whose_loader_fails_is_rolled_back_and_not_fetched_again(server, tmp_path):
    loader = Loader()
    bundles = installed(server, tmp_path, loader, 1)
    loader.broken.add(2)
    model = offer(server, "v2", bundle(2))

    outcome = bundles.apply(model)

    assert outcome.status == "rolled_back" and "loader failed" in outcome.error
    assert (bundles.current().version, bundles.previous(), loader.serving) == ("v1", None, 1)
    assert bundles.apply(model).status == "deferred"
    assert server.count("GET", "/files/v2") == 1
    last = json.loads((tmp_path / "bundles" / "last_outcome.json").read_text())
    assert (last["status"], last["version"]) == ("rolled_back", "v2")


def test_at_start_up_a_current_bundle_that_fails_to_load_falls_back_to_the_previous_one(server, tmp_path):
    installed(server, tmp_path, Loader(), 1, 2)
    restarted = Loader()
    restarted.broken.add(2)  # say the switch was cut by a power loss before the load was checked

    bundles = manager(server, tmp_path, restarted)
    outcome = bundles.load_current()

    # The outcome names the version turned down (the server fails its assignment), not the fallback.
    assert (outcome.status, outcome.version, restarted.serving) == ("rolled_back", "v2", 1)
    assert "serving v1 again" in outcome.error
    assert bundles.last_outcome()["status"] == "rolled_back" and bundles.last_outcome()["version"] == "v2"
    assert manager(server, tmp_path, Loader()).current().version == "v1"


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (tar_gz({"../evil.json": b"{}"}), "leaves the archive"),
        (tar_gz({"/etc/evil.json": b"{}"}), "absolute"),
        (tar_gz({"weights.npz": npz(a=np.ones(2))}, links={"labels.json": "/etc/passwd"}), "links"),
        (tar_gz({"weights.npz": npz(a=np.ones(2))}, hardlinks={"copy.npz": "weights.npz"}), "links"),
        (tar_gz({"weights.npz": npz(a=np.array([{"x": 1}], dtype=object))}), "weights.npz: does not load"),
        (tar_gz({"labels.json": b"{not json"}), "labels.json: does not load"),
        (tar_gz({"a.json": b"{}", "./a.json": b"[]"}), "duplicate member"),
        (tar_gz({"w.json": b"{}", "manifest.json": b'{"files": [{"path": "w.json", "sha256": "0"}]}'}), "manifest"),
        (tar_gz({}), "bundle is empty"),
        (b"\x1f\x8b" + b"truncated gzip", "unreadable archive"),
        (b"MZ\x90\x00 an executable", "unknown bundle format"),
    ],
)
def test_it_refuses_unsafe_or_broken_bundles_and_keeps_serving(server, tmp_path, archive, reason):
    loader = Loader()
    bundles = installed(server, tmp_path, loader, 1)

    outcome = bundles.apply(offer(server, "bad", archive))

    assert outcome.status == "refused" and reason in outcome.error, outcome
    assert (bundles.current().version, loader.serving) == ("v1", 1)
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "bundles" / "evil.json").exists()
    assert len(list((tmp_path / "bundles" / "versions").iterdir())) == 1


def test_it_cuts_off_a_download_larger_than_announced_or_allowed(server, tmp_path):
    bundles = manager(server, tmp_path, Loader(), max_bytes=10_000)
    too_long = offer(server, "long", bundle(1) + b"\0" * 50_000, size=100)
    assert "exceeds its limit of 100 bytes" in bundles.apply(too_long).error
    announced = offer(server, "big", b"\0" * 20_000)
    assert "exceeds max_bytes" in bundles.apply(announced).error
    assert bundles.current() is None


def test_a_single_npz_file_is_taken_as_is(server, tmp_path):
    loader = Loader()
    bundles = manager(server, tmp_path, loader)
    assert bundles.apply(offer(server, "weights.npz", npz(version=np.array(5)))).status == "installed"
    assert loader.serving == 5


def test_the_token_goes_to_the_server_only(server, tmp_path):
    bundles = installed(server, tmp_path, Loader(), 1)
    with FlakyServer() as storage:  # another origin, like an object-storage host
        storage.files["v2"] = bundle(2)
        model = offer(server, "v2", bundle(2), url=f"{storage.url}/files/v2")
        assert bundles.apply(model).status == "installed"
        assert [auth for _, _, auth in storage.requests] == [None]
    assert {auth for _, _, auth in server.requests} == {"Bearer sphd_device"}


def test_a_malformed_model_entry_is_refused(server, tmp_path):
    bundles = manager(server, tmp_path, Loader())
    outcome = bundles.apply({"version": "v1", "sha256": "abc", "url": "/files/v1"})
    assert outcome.status == "refused" and "64 hex digits" in outcome.error
    assert bundles.apply(None).status == "none"


def test_leftovers_of_an_interrupted_install_are_cleaned_at_start(server, tmp_path):
    bundles = installed(server, tmp_path, Loader(), 1)
    (tmp_path / "bundles" / "tmp" / "dead.part").write_bytes(b"half")
    (tmp_path / "bundles" / "versions" / ".staging-dead").mkdir()
    manager(server, tmp_path, Loader())
    assert not list((tmp_path / "bundles" / "tmp").iterdir())
    assert [folder.name for folder in (tmp_path / "bundles" / "versions").iterdir()] == [bundles.current().sha256]


def test_it_is_built_from_the_device_config(server, tmp_path):
    from edge_client import config

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "token").write_text("sphd_device\n")
    device = config.load(_config_file(tmp_path, server.url))
    bundles = BundleManager.from_config(device, loader=Loader())
    assert bundles.apply(offer(server, "v1", bundle(1))).status == "installed"
    assert bundles.current().path.parent.parent == tmp_path / "data" / "bundles"
    assert server.requests[-1][2] == "Bearer sphd_device"


def _config_file(tmp_path, url):
    path = tmp_path / "edge.json"
    path.write_text(json.dumps({"server_url": url, "model": {"max_bundle_bytes": 100_000}}))
    return path
