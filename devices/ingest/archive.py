"""Reading an uploaded package without trusting it.

Nothing is extracted to disk: the tar is read as a stream, member by member, into memory under
limits on member count, per-member size and total size, and the decompressed stream itself is
capped so a gzip bomb stops at the cap, not when memory runs out. Only regular files with plain
relative paths are accepted; every member must be listed in the manifest with its size and
sha256. Images are opened by Pillow under a pixel limit, ``.npy`` files without pickle, JSON
against a schema.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime

import fastjsonschema
import jsonschema
import numpy as np
import orjson
from django.conf import settings
from PIL import Image

MANIFEST = "manifest.json"
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TAR_OVERHEAD_PER_MEMBER = 3 * 512  # header, optional pax header, padding
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")


class ArchiveError(ValueError):
    """The package can never be processed as sent; the message says why."""


@dataclass(frozen=True)
class Limits:
    max_members: int
    max_member_bytes: int
    max_total_bytes: int
    max_image_pixels: int

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(
            max_members=settings.PACKAGE_MAX_MEMBERS,
            max_member_bytes=settings.PACKAGE_MAX_MEMBER_BYTES,
            max_total_bytes=settings.PACKAGE_MAX_TOTAL_BYTES,
            max_image_pixels=settings.PACKAGE_MAX_IMAGE_PIXELS,
        )

    @property
    def max_stream_bytes(self) -> int:
        return self.max_total_bytes + (self.max_members + 2) * _TAR_OVERHEAD_PER_MEMBER + 10240


MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["format", "id", "kind", "device", "created", "records", "files"],
    "properties": {
        "format": {"const": 1},
        "id": {"type": "string", "format": "uuid"},
        "kind": {"type": "string", "maxLength": 20},
        "device": {"type": "string", "format": "uuid"},
        "created": {"type": "string", "format": "date-time"},
        "client_version": {"type": "string", "maxLength": 40},
        "records": {"type": "array", "maxItems": 10000, "items": {"type": "string", "format": "uuid"}},
        "files": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path", "sha256", "size"],
                "properties": {
                    "path": {"type": "string", "maxLength": 300},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "size": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
}


@dataclass
class ImageFile:
    data: bytes
    format: str
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return Image.MIME[self.format]


@dataclass
class PackageContents:
    """A package that passed every structural check: its manifest, and its files by path."""

    manifest: dict
    files: dict[str, bytes] = field(default_factory=dict)
    limits: Limits | None = None

    def json(self, path: str, schema: dict):
        return parse_json(self.files[path], schema, path)

    def image(self, path: str) -> ImageFile:
        return open_image(self.files[path], path, (self.limits or Limits.from_settings()).max_image_pixels)

    def npy(self, path: str) -> np.ndarray:
        return load_npy(self.files[path], path)


def read_package(fileobj, limits: Limits | None = None) -> PackageContents:
    """Read and check the archive in ``fileobj`` (a binary stream of the tar.gz)."""
    limits = limits or Limits.from_settings()
    stream = _CappedReader(gzip.GzipFile(fileobj=fileobj, mode="rb"), limits.max_stream_bytes)
    try:
        members = _read_members(stream, limits)
        _drain(stream)
    except ArchiveError:
        raise
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise ArchiveError(f"Not a valid gzip stream: {exc}.") from None
    except EOFError:
        raise ArchiveError("The archive is truncated: the gzip stream ends early.") from None
    except (tarfile.TarError, ValueError) as exc:
        # tarfile lets some malformed headers out as ValueError or UnicodeDecodeError (a pax
        # hdrcharset that is not UTF-8, a GNU sparse map that is not numbers); uncaught, they
        # would crash the task and leave the package processing, to be retried forever.
        raise ArchiveError(f"Not a valid tar archive: {exc}.") from None
    return _check_against_manifest(members, limits)


def _read_members(stream, limits: Limits) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    total = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for count, member in enumerate(tar, start=1):
            if count > limits.max_members:
                raise ArchiveError(f"The archive has more than {limits.max_members} members.")
            _check_member(member, limits, first=count == 1)
            if member.name in members:
                raise ArchiveError(f"Member {member.name!r} appears twice.")
            total += member.size
            if total > limits.max_total_bytes:
                raise ArchiveError(f"The archive expands past {limits.max_total_bytes} bytes.")
            members[member.name] = tar.extractfile(member).read()
    if not members:
        raise ArchiveError(f"The archive is empty: it must start with {MANIFEST}.")
    return members


def _drain(stream) -> None:
    """Read the gzip stream to its end. tarfile stops at the end-of-archive blocks, so without
    this a stream cut off in its trailer, or with a wrong CRC, would pass; the cap still holds."""
    while stream.read(64 * 1024):
        pass


def _check_member(member: tarfile.TarInfo, limits: Limits, *, first: bool) -> None:
    name = member.name
    if not member.isreg() or member.sparse is not None:
        raise ArchiveError(f"Member {name!r} is a {_member_type(member)}: only regular files are allowed.")
    check_path(name)
    if first and name != MANIFEST:
        raise ArchiveError(f"The first member must be {MANIFEST}, not {name!r}.")
    if member.size > limits.max_member_bytes:
        raise ArchiveError(f"Member {name!r} is {member.size} bytes, over the limit of {limits.max_member_bytes}.")


def check_path(name: str) -> None:
    """A plain relative path: no leading '/', no '..', no empty or hidden parts, no backslash."""
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ArchiveError(f"Member {name!r} has an absolute path.")
    parts = name.split("/")
    if ".." in parts:
        raise ArchiveError(f"Member {name!r} points outside the archive ('..').")
    if len(parts) > 4 or not all(_PART.match(part) for part in parts):
        raise ArchiveError(
            f"Member {name!r} has a path that is not allowed: up to 4 parts of letters, digits, '.', '_', '-'."
        )


def _member_type(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"hard link (to {member.linkname!r})"
    if member.isdir():
        return "directory"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if member.sparse is not None:  # tarfile counts sparse files as regular; their holes expand
        return "sparse file"
    return "special member"


def _check_against_manifest(members: dict[str, bytes], limits: Limits) -> PackageContents:
    manifest = parse_json(members.pop(MANIFEST), MANIFEST_SCHEMA, MANIFEST)
    listed = {entry["path"]: entry for entry in manifest["files"]}
    if len(listed) != len(manifest["files"]):
        raise ArchiveError("The manifest lists a file twice.")
    for name in members:
        if name not in listed:
            raise ArchiveError(f"Member {name!r} is not listed in the manifest.")
    for name, entry in listed.items():
        if name not in members:
            raise ArchiveError(f"The manifest lists {name!r} but the archive has no such member.")
        data = members[name]
        if len(data) != entry["size"]:
            raise ArchiveError(f"Member {name!r} is {len(data)} bytes; the manifest says {entry['size']}.")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ArchiveError(f"Member {name!r} does not match its sha256 in the manifest.")
    return PackageContents(manifest=manifest, files=members, limits=limits)


# --- Member formats ---------------------------------------------------------------------------

_FORMAT_CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


def parse_json(data: bytes, schema: dict, path: str):
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ArchiveError(f"{path} is not valid JSON: {exc}.") from None
    validate(value, schema, path)
    return value


def validate(value, schema: dict, path: str) -> None:
    """Check ``value`` against ``schema``. Valid documents (nearly all) go through a compiled
    fastjsonschema check, ~20× cheaper than jsonschema's; only an invalid one is run through
    jsonschema too, whose best_match names the most relevant error."""
    check, validator = _validators(schema)
    try:
        check(value)
        return
    except fastjsonschema.JsonSchemaException as fast_error:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is None:  # the two disagree: trust the refusal, say it in fastjsonschema's words
            raise ArchiveError(f"{path}: {fast_error.message}.") from None
    where = "/".join(str(part) for part in error.absolute_path)
    raise ArchiveError(f"{path}{' at ' + where if where else ''}: {error.message}.")


_compiled: dict[int, tuple] = {}


def _validators(schema: dict):
    # Building a validator costs more than validating one small document; schemas are module
    # constants, so their validators are built once (the schema is held to pin its id).
    cached = _compiled.get(id(schema))
    if cached is None or cached[0] is not schema:
        if len(_compiled) > 256:  # only a caller building schemas on the fly gets here
            _compiled.clear()
        validator = jsonschema.Draft202012Validator(schema, format_checker=_FORMAT_CHECKER)
        cached = _compiled[id(schema)] = (schema, fastjsonschema.compile(schema), validator)
    return cached[1], cached[2]


MAX_JSON_DEPTH = 32


def check_storable(value, path: str) -> None:
    """PostgreSQL refuses NUL in text and JSON, and JSON nested ~1,000 deep overflows the encoder's
    recursion when the row is saved: refuse both here, as content, instead of failing the insert."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise ArchiveError(f"{path} is nested deeper than {MAX_JSON_DEPTH} levels.")
        if isinstance(item, str) and "\x00" in item:
            raise ArchiveError(f"{path} holds a NUL character, which cannot be stored.")
        if isinstance(item, dict):
            pending.extend((part, depth + 1) for pair in item.items() for part in pair)
        elif isinstance(item, list):
            pending.extend((part, depth + 1) for part in item)


def parse_time(value: str, where: str) -> datetime:
    """A time the schema already checked as RFC 3339, as a datetime. RFC 3339 allows a
    lowercase 't' and 'z', and a leap second or year 0 cannot be a Python datetime."""
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError:
        raise ArchiveError(f"{where}: {value!r} is not a time the server can store.") from None


def open_image(data: bytes, path: str, max_pixels: int) -> ImageFile:
    """Decode the whole image (a truncated or corrupt file fails here, not when shown), after
    checking its declared size: a tiny PNG can declare gigapixels."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ArchiveError(f"Image {path!r} is {width}×{height} pixels, over the limit of {max_pixels}.")
            image.load()
            return ImageFile(data=data, format=image.format, width=width, height=height)
    except ArchiveError:
        raise
    except Image.DecompressionBombError as exc:
        raise ArchiveError(f"Image {path!r} is over the pixel limit: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ArchiveError(f"Image {path!r} cannot be read ({', '.join(IMAGE_FORMATS)} only): {exc}.") from None


def load_npy(data: bytes, path: str) -> np.ndarray:
    if not data.startswith(b"\x93NUMPY"):
        raise ArchiveError(f"{path} is not a .npy file.")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ArchiveError(f"{path} is not a numeric .npy array: {str(exc).rstrip('.')}.") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise ArchiveError(f"{path} must hold a numeric array.")
    return array


class _CappedReader(io.RawIOBase):
    """Stops reading the decompressed stream past ``cap`` bytes: a bomb never expands further."""

    def __init__(self, inner, cap: int):
        self.inner, self.cap, self.seen = inner, cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.inner.read(len(buffer))
        self.seen += len(chunk)
        if self.seen > self.cap:
            raise ArchiveError(f"The archive expands past {self.cap} bytes (a decompression bomb?).")
        buffer[: len(chunk)] = chunk
        return len(chunk)
