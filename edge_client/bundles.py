"""Model bundles: download, verify, switch atomically, keep a rollback slot.

The server's desired state names the bundle the device should run::

    "model": {"version": "digits@4", "sha256": "<64 hex>", "url": "/api/v1/...", "size": 123456}

``BundleManager.apply(model)`` makes it so, or leaves the serving bundle untouched:

1. Download into ``tmp/`` in the bundle folder, streamed to disk, cut off past ``size`` (or
   ``max_bytes``); check the size and the sha256 of the bytes received.
2. Unpack into a staging folder. A tar (gzip or plain) is extracted member by member: regular
   files and folders only (no links, devices or fifos), no absolute paths, no ``..``, no
   duplicate names, at most ``max_members`` members and ``max_extracted_bytes`` in all. A
   single ``.npz`` or ``.json`` file is taken as is. If the bundle has a ``manifest.json`` with
   ``"files": [{"path", "sha256"}]``, every listed file must match.
3. Check contents: every ``.npz``/``.npy`` loads with ``allow_pickle=False`` (pickles never
   cross the wire), every ``.json`` parses.
4. fsync the files, rename the staging folder to ``versions/<sha256>``, then switch the pointer
   files (``previous.json`` := old current, ``current.json`` := new), each written to a temp
   file, fsynced and put in place with ``os.replace``. A power cut leaves either the old or the
   new pointer, never a torn one.
5. Call ``loader(path)``. If it raises, the pointers go back and the new version is refused for
   good (status ``rolled_back``): the old bundle keeps serving.

A download or checksum failure is retried on later desired states with a growing delay; a
bundle that fails its checks or its loader is not fetched again. Each outcome is returned,
logged and kept in ``last_outcome.json``; the heartbeat reports the serving version as
``model_version`` and ``last_outcome()`` as ``bundle``. The server fails a device's rollout
assignment on ``refused`` or ``rolled_back`` for the assigned version, so those name the version
that was turned down, and a bundle that could not be fetched at all (the server or the network
failed, or the disk) is ``deferred``, not refused. At start-up ``load_current()`` loads the
current bundle and falls back to the previous one by itself if that fails (a switch interrupted
before its load was checked).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from edge_client import http as default_http
from edge_client.files import atomic_write_json, fsync_dir

log = logging.getLogger(__name__)

SHA256 = re.compile(r"^[0-9a-f]{64}$")
STATUSES = frozenset({"none", "unchanged", "installed", "loaded", "refused", "rolled_back", "deferred"})
# The limits of BundleOutcomeSerializer on the server: a longer value would get the heartbeat refused.
MAX_VERSION, MAX_ERROR = 80, 2000
SINGLE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.(npz|json)$")
COPY_CHUNK = 64 * 1024


class BundleError(Exception):
    def __init__(self, message: str, *, permanent: bool = True):
        super().__init__(message)
        self.permanent = permanent


class Unreachable(BundleError):
    """The bundle could not be fetched or written (network, server or disk): says nothing
    about the bundle itself, so it is retried later and reported as deferred."""

    def __init__(self, message: str):
        super().__init__(message, permanent=False)


@dataclass(frozen=True)
class Bundle:
    version: str
    sha256: str
    path: Path


@dataclass(frozen=True)
class Outcome:
    """``status``: none (nothing assigned), unchanged, installed, loaded, refused, rolled_back,
    deferred (a failed download waits for its retry time)."""

    status: str
    version: str | None = None
    sha256: str | None = None
    error: str = ""


@dataclass(frozen=True)
class Wanted:
    version: str
    sha256: str
    url: str
    size: int | None


class BundleManager:
    def __init__(
        self,
        bundle_dir: str | Path,
        *,
        loader: Callable[[Path], object] | None = None,
        server_url: str = "",
        token: Callable[[], str | None] | None = None,
        http=default_http,
        max_bytes: int = 64 * 1024 * 1024,
        max_extracted_bytes: int = 256 * 1024 * 1024,
        max_members: int = 1000,
        timeout_s: float = 30.0,
        retry_base_s: float = 60.0,
        retry_max_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ):
        self.dir = Path(bundle_dir)
        self.loader = loader or (lambda path: None)
        self.server_url, self.token, self.http = server_url, token or (lambda: None), http
        self.max_bytes, self.max_extracted_bytes, self.max_members = max_bytes, max_extracted_bytes, max_members
        self.timeout_s, self.retry_base_s, self.retry_max_s, self.clock = timeout_s, retry_base_s, retry_max_s, clock
        for folder in ("versions", "tmp"):
            (self.dir / folder).mkdir(parents=True, exist_ok=True)
        self._clean_leftovers()

    @classmethod
    def from_config(cls, config, *, loader: Callable[[Path], object] | None = None, **kwargs) -> BundleManager:
        token_file = config.path(config.token_file)
        return cls(
            config.path(config.model.bundle_dir),
            loader=loader,
            server_url=config.server_url,
            token=lambda: _read_token(token_file),
            max_bytes=config.model.max_bundle_bytes,
            max_extracted_bytes=config.model.max_extracted_bytes,
            timeout_s=config.sync.request_timeout_s * 3,
            **kwargs,
        )

    # --- pointers -------------------------------------------------------------------------------

    def current(self) -> Bundle | None:
        return self._pointer("current")

    def previous(self) -> Bundle | None:
        return self._pointer("previous")

    def _pointer(self, name: str) -> Bundle | None:
        data = _read_json(self.dir / f"{name}.json")
        if not data:
            return None
        return Bundle(data["version"], data["sha256"], self.dir / "versions" / data["sha256"])

    def _point(self, name: str, bundle: Bundle | None) -> None:
        data = {"version": bundle.version, "sha256": bundle.sha256} if bundle else None
        _write_json_atomic(self.dir / f"{name}.json", data)

    # --- applying the desired state -------------------------------------------------------------

    def apply(self, model: dict | None) -> Outcome:
        """Make the assigned bundle the serving one, or leave the serving one untouched."""
        if not model:
            return Outcome("none")
        if not isinstance(model, dict):
            return self._report(Outcome("refused", error=f"model must be an object, not {type(model).__name__}"))
        try:
            wanted = _wanted(model)
        except BundleError as exc:
            version = model.get("version") if isinstance(model.get("version"), str) else None
            return self._report(Outcome("refused", version, None, str(exc)))
        current = self.current()
        if current and current.sha256 == wanted.sha256:
            return Outcome("unchanged", current.version, current.sha256)
        waiting = self._waiting(wanted)
        if waiting:
            return Outcome("deferred", wanted.version, wanted.sha256, waiting)
        try:
            path = self._install(wanted)
        except BundleError as exc:
            return self._refuse(wanted, exc, "deferred" if isinstance(exc, Unreachable) else "refused")
        except OSError as exc:  # a full disk or a vanished folder: worth another try later
            return self._refuse(wanted, Unreachable(f"cannot write the bundle: {exc}"), "deferred")
        return self._switch(Bundle(wanted.version, wanted.sha256, path))

    def load_current(self) -> Outcome:
        """At start-up: load the current bundle; if it fails, go back to the previous one."""
        current = self.current()
        if current is None:
            return Outcome("none")
        try:
            self.loader(current.path)
            return Outcome("loaded", current.version, current.sha256)
        except Exception as exc:
            log.exception("bundle %s failed to load; falling back to the previous one", current.version)
            self._remember_failure(current.sha256, f"loader failed: {exc}", permanent=True)
            return self._fall_back(current, exc)

    def rollback(self) -> Outcome:
        """Serve the previous bundle again (an operator's or a health check's decision)."""
        current, previous = self.current(), self.previous()
        if previous is None:
            return Outcome("refused", current and current.version, error="no previous bundle to roll back to")
        return self._switch(previous)

    def _switch(self, new: Bundle) -> Outcome:
        old_current, old_previous = self.current(), self.previous()
        # previous first: a cut between the two writes leaves current still pointing at the old one.
        self._point("previous", old_current)
        self._point("current", new)
        try:
            self.loader(new.path)
        except Exception as exc:
            log.exception("bundle %s failed to load; switching back", new.version)
            self._point("current", old_current)
            self._point("previous", old_previous)
            self._prune()
            wanted = Wanted(new.version, new.sha256, "", None)
            return self._refuse(wanted, BundleError(f"loader failed: {exc}"), "rolled_back")
        self._prune()
        return self._report(Outcome("installed", new.version, new.sha256))

    def _fall_back(self, broken: Bundle, exc: Exception) -> Outcome:
        previous = self.previous()
        self._point("current", previous)
        self._point("previous", None)
        if previous is not None:
            self.loader(previous.path)  # if the old one fails too, the caller must know: let it raise
        serving = f"serving {previous.version} again" if previous else "no previous bundle to serve"
        # Names the broken version: the server fails that version's assignment, not the fallback's.
        return self._report(Outcome("rolled_back", broken.version, broken.sha256, f"loader failed: {exc}; {serving}"))

    # --- failures and outcomes ------------------------------------------------------------------

    def _refuse(self, wanted: Wanted, exc: BundleError, status: str) -> Outcome:
        self._remember_failure(wanted.sha256, str(exc), exc.permanent)
        return self._report(Outcome(status, wanted.version, wanted.sha256, str(exc)))

    def _remember_failure(self, sha256: str, error: str, permanent: bool) -> None:
        failures = _read_json(self.dir / "failures.json") or {}
        attempts = failures.get(sha256, {}).get("attempts", 0) + 1
        delay = min(self.retry_max_s, self.retry_base_s * 2 ** min(attempts - 1, 30))
        retry_at = None if permanent else self.clock() + delay
        # Only the newest few matter: a refused version is rarely assigned again.
        kept = dict(list(failures.items())[-9:])
        kept[sha256] = {"attempts": attempts, "retry_at": retry_at, "error": error}
        _write_json_atomic(self.dir / "failures.json", kept)

    def _waiting(self, wanted: Wanted) -> str:
        failure = (_read_json(self.dir / "failures.json") or {}).get(wanted.sha256)
        if failure is None:
            return ""
        if failure["retry_at"] is None:
            return f"refused earlier: {failure['error']}"
        return failure["error"] if self.clock() < failure["retry_at"] else ""

    def last_outcome(self) -> dict | None:
        """The last reported outcome as the heartbeat's ``bundle`` object, or None if there is
        none (or it cannot be read): exactly the server's keys, each within its limits."""
        try:
            data = _read_json(self.dir / "last_outcome.json")
        except (OSError, ValueError) as exc:
            log.warning("cannot read last_outcome.json: %s", exc)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("status"), str) or data["status"] not in STATUSES:
            return None
        version, sha256, error = (data.get(key) for key in ("version", "sha256", "error"))
        return {
            "status": data["status"],
            "version": _text(version, MAX_VERSION) if isinstance(version, str) else None,
            "sha256": sha256 if isinstance(sha256, str) and SHA256.fullmatch(sha256) else None,
            "error": _text(error, MAX_ERROR) if isinstance(error, str) else "",
            "at": _timestamp(data.get("at")),
        }

    def _report(self, outcome: Outcome) -> Outcome:
        log.log(logging.INFO if outcome.status == "installed" else logging.WARNING, "bundle outcome: %s", outcome)
        _write_json_atomic(self.dir / "last_outcome.json", {**asdict(outcome), "at": self.clock()})
        return outcome

    # --- download, verification, unpacking ------------------------------------------------------

    def _install(self, wanted: Wanted) -> Path:
        final = self.dir / "versions" / wanted.sha256
        if final.is_dir():  # the rollback slot already holds it: renamed in only once complete
            return final
        download = self.dir / "tmp" / f"{uuid.uuid4().hex}.part"
        staging = self.dir / "versions" / f".staging-{uuid.uuid4().hex}"
        try:
            self._download(wanted, download)
            _unpack(download, staging, wanted.url, self.max_extracted_bytes, self.max_members)
            _check_contents(staging)
            _fsync_tree(staging)
            os.replace(staging, final)
            fsync_dir(final.parent)
        finally:
            download.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        return final

    def _download(self, wanted: Wanted, target: Path) -> None:
        if wanted.size is not None and wanted.size > self.max_bytes:
            raise BundleError(f"bundle of {wanted.size} bytes exceeds max_bytes ({self.max_bytes})")
        url = urllib.parse.urljoin(self.server_url, wanted.url)
        with open(target, "wb") as sink:
            writer = _HashingWriter(sink)
            answer = self._fetch(url, writer, wanted.size if wanted.size is not None else self.max_bytes)
            os.fsync(sink.fileno())
        if not answer.ok:
            raise Unreachable(f"download answered HTTP {answer.status}: {answer.text(200)}")
        if wanted.size is not None and writer.size != wanted.size:
            raise BundleError(f"downloaded {writer.size} bytes, expected {wanted.size}", permanent=False)
        if writer.hexdigest() != wanted.sha256:
            raise BundleError(f"sha256 mismatch: got {writer.hexdigest()}, expected {wanted.sha256}", permanent=False)

    def _fetch(self, url: str, writer, limit: int):
        # The device token goes only to the server itself, never to a storage host.
        token = self.token() if _same_origin(url, self.server_url) else None
        try:
            return self.http.download(url, writer, max_bytes=limit, token=token, timeout=self.timeout_s)
        except default_http.TooLarge as exc:
            raise BundleError(str(exc), permanent=False) from None
        except default_http.TransportError as exc:
            raise Unreachable(f"download failed: {exc}") from None
        except ValueError as exc:  # not an http(s) URL
            raise BundleError(f"cannot download the bundle: {exc}") from None

    # --- housekeeping ---------------------------------------------------------------------------

    def _prune(self) -> None:
        keep = {bundle.sha256 for bundle in (self.current(), self.previous()) if bundle}
        for folder in (self.dir / "versions").iterdir():
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def _clean_leftovers(self) -> None:
        # Downloads and staging folders of a run that died half-way.
        for leftover in (self.dir / "tmp").iterdir():
            leftover.unlink(missing_ok=True)
        for staging in (self.dir / "versions").glob(".staging-*"):
            shutil.rmtree(staging, ignore_errors=True)


def _wanted(model: dict) -> Wanted:
    version, sha256, url, size = (model.get(key) for key in ("version", "sha256", "url", "size"))
    if not isinstance(version, str) or not version:
        raise BundleError("model.version must be a non-empty string")
    if not isinstance(sha256, str) or not SHA256.match(sha256.lower()):
        raise BundleError("model.sha256 must be 64 hex digits")
    if not isinstance(url, str) or not url:
        raise BundleError("model.url must be a non-empty string")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise BundleError("model.size must be a non-negative integer or null")
    return Wanted(version, sha256.lower(), url, size)


def _text(value: str, limit: int) -> str:
    # The server refuses NUL characters, and lone surrogates (undecodable file names) are not UTF-8.
    return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:limit]


def _timestamp(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        return None
    return float(value)


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        return None


def _same_origin(url: str, server_url: str) -> bool:
    a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(server_url)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


class _HashingWriter:
    def __init__(self, sink):
        self.sink, self.size, self._hash = sink, 0, hashlib.sha256()

    def write(self, chunk: bytes) -> int:
        self._hash.update(chunk)
        self.size += len(chunk)
        return self.sink.write(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


# --- unpacking ----------------------------------------------------------------------------------


def _unpack(download: Path, staging: Path, url: str, max_total: int, max_members: int) -> None:
    staging.mkdir()
    with open(download, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PK\x03\x04"):  # npz is a zip archive
        shutil.copyfile(download, staging / _single_name(url, "model.npz"))
    elif head.lstrip()[:1] in (b"{", b"["):
        shutil.copyfile(download, staging / _single_name(url, "model.json"))
    elif head.startswith(b"\x1f\x8b") or tarfile.is_tarfile(download):
        _extract_tar(download, staging, max_total, max_members)
    else:
        raise BundleError("unknown bundle format: expected a tar archive, an .npz or a .json file")


def _single_name(url: str, default: str) -> str:
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name
    return name if SINGLE_FILE.match(name) and name.endswith(default[-4:]) else default


def _extract_tar(archive: Path, staging: Path, max_total: int, max_members: int) -> None:
    total = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise BundleError(f"archive has more than {max_members} members")
                total += _extract_member(tar, member, staging, max_total - total)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"unreadable archive: {exc}") from None


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path, budget: int) -> int:
    relative = _member_path(member.name)
    target = staging.joinpath(*relative.parts)
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return 0
    if not member.isfile():
        raise BundleError(f"{member.name}: links, devices and fifos are refused")
    if member.size > budget:
        raise BundleError("archive unpacks to more than max_extracted_bytes")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tar.extractfile(member) as source, open(target, "xb") as sink:
            shutil.copyfileobj(source, sink, COPY_CHUNK)
    except FileExistsError:
        raise BundleError(f"{member.name}: duplicate member") from None
    return member.size


def _member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or "\\" in name or "\x00" in name or path.is_absolute():
        raise BundleError(f"{name!r}: absolute or malformed member path")
    parts = [part for part in path.parts if part != "."]
    if not parts or ".." in parts:
        raise BundleError(f"{name!r}: member path leaves the archive")
    return PurePosixPath(*parts)


# --- checking contents --------------------------------------------------------------------------


def _check_contents(root: Path) -> None:
    files = [path for path in root.rglob("*") if path.is_file()]
    if not files:
        raise BundleError("bundle is empty")
    for path in files:
        _check_file(path, path.relative_to(root).as_posix())
    manifest = root / "manifest.json"
    if manifest.is_file():
        _check_manifest(root, json.loads(manifest.read_text(encoding="utf-8")))


def _check_file(path: Path, name: str) -> None:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                for key in arrays.files:
                    arrays[key]  # loads each array: an object (pickled) array raises here
        elif path.suffix == ".npy":
            np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # numpy raises ValueError, OSError, zipfile errors, EOFError ...
        raise BundleError(f"{name}: does not load ({type(exc).__name__}: {exc})") from None


def _check_manifest(root: Path, manifest) -> None:
    entries = manifest.get("files", []) if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        raise BundleError('manifest.json: "files" must be a list of {"path", "sha256"}')
    for entry in entries:
        if not isinstance(entry, dict):
            raise BundleError('manifest.json: each "files" entry must be {"path", "sha256"}')
        path = root.joinpath(*_member_path(str(entry.get("path", ""))).parts)
        if not path.is_file():
            raise BundleError(f"manifest.json lists {entry.get('path')!r}, which the bundle lacks")
        if _file_sha256(path) != str(entry.get("sha256", "")).lower():
            raise BundleError(f"{entry.get('path')}: sha256 does not match manifest.json")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- durable files ------------------------------------------------------------------------------


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _write_json_atomic(path: Path, data) -> None:
    atomic_write_json(path, data)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):  # files before the folders holding them
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        else:
            fsync_dir(path)
    fsync_dir(root)
