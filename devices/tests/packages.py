"""Building package archives for tests: well-formed ones like the edge client's, and every
kind of malformed one (members are given as TarInfo-like specs so links, devices, absolute
paths and lying sizes can be made)."""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import os
import struct
import tarfile
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.core.files.storage import storages
from PIL import Image

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
        return {name: value for name, value in headers.items() if value is not None}  # None: leave it out


def manifest_for(device, kind: str, files: list[tuple[str, bytes]], *, package_id=None, records=None) -> dict:
    return {
        "format": 1,
        "id": str(package_id or uuid.uuid4()),
        "kind": kind,
        "device": str(getattr(device, "pk", device)),
        "created": "2026-11-23T11:58:12.500Z",
        "client_version": "0.1.0",
        "records": [str(record) for record in (records or [])],
        "files": [
            {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in files
        ],
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


def metrics_package(device, beats: int = 2, **kwargs) -> Archive:
    lines = [{"id": str(uuid.uuid4()), "cpu_percent": 10.0} for _ in range(beats)]
    return build(
        device, "metrics", [("metrics.jsonl", metrics_lines(*lines))], records=[b["id"] for b in lines], **kwargs
    )


def incompressible_metrics(device, size: int) -> Archive:
    """A valid metrics package of at least ``size`` bytes once compressed: each heartbeat
    carries random base64 padding (unknown keys are allowed and ignored)."""
    lines, total = [], 0
    while total < size * 4 // 3 + 4096:
        pad = base64.b64encode(os.urandom(96 * 1024)).decode()
        lines.append({"id": str(uuid.uuid4()), "cpu_percent": 10.0, "pad": pad})
        total += len(pad)
    return build(device, "metrics", [("metrics.jsonl", metrics_lines(*lines))], records=[b["id"] for b in lines])


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    """A regular-file member, as the edge client writes it."""
    return _info(name, data), data


def special(name: str, type: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    """A member that is not a regular file: tarfile.SYMTYPE, LNKTYPE, DIRTYPE, CHRTYPE, FIFOTYPE…"""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = type, linkname, 0o644, 1_700_000_000
    return info, None


def raw(package_id: str, kind: str, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Archive:
    """An archive of exactly ``members``, in that order (no manifest is added)."""
    return Archive(str(package_id), kind, tar_gz(members))


def manifest_member(document: dict) -> tuple[tarfile.TarInfo, bytes]:
    return regular("manifest.json", json.dumps(document).encode())


def stored_objects(area: str = "packages") -> list[Path]:
    """Every file in a storage area (tests keep each area in its own folder)."""
    root = Path(storages[area].location)
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


# --- Bombs, built as streams so a test never holds their expanded size ------------------------
#
# A gzip file may hold several gzip members, read as one stream: a bomb is the gzipped tar
# headers, then a cached gzip of the zeros, then the gzipped rest.


def zeros(size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    block = bytes(chunk)
    while size > 0:
        yield block[: min(chunk, size)]
        size -= chunk


@functools.cache
def gzipped_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return b"".join(compressor.compress(part) for part in zeros(size)) + compressor.flush()


@functools.cache
def sha256_of_zeros(size: int) -> str:
    digest = hashlib.sha256()
    for part in zeros(size):
        digest.update(part)
    return digest.hexdigest()


def tar_blocks(info: tarfile.TarInfo, data: bytes = b"") -> bytes:
    """A member's header, then ``data`` and its padding when given whole."""
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def zeros_bomb(device, size: int, count: int = 1) -> Archive:
    """A metrics package listing ``count`` members of ``size`` bytes of zeros each (about
    1000:1 gzipped), all properly listed in its manifest."""
    names = ["metrics.jsonl"] + [f"part-{number}.bin" for number in range(1, count)]
    document = manifest_for(device, "metrics", [])
    document["files"] = [{"path": name, "sha256": sha256_of_zeros(size), "size": size} for name in names]
    manifest = json.dumps(document).encode()
    parts = [gzip.compress(tar_blocks(_info("manifest.json", manifest), manifest), mtime=0)]
    padding = gzip.compress(bytes(-size % tarfile.BLOCKSIZE), mtime=0)
    for name in names:
        info = _info(name, b"")
        info.size = size
        parts += [gzip.compress(tar_blocks(info), mtime=0), gzipped_zeros(size), padding]
    parts.append(gzip.compress(tar_end(), mtime=0))
    return Archive(document["id"], "metrics", b"".join(parts), document)


def tar_end() -> bytes:
    return bytes(2 * tarfile.BLOCKSIZE)


def raw_tar(package_id: str, kind: str, tar: bytes) -> Archive:
    """An archive of hand-made tar blocks (the end-of-archive blocks are added)."""
    return Archive(str(package_id), kind, gzip.compress(tar + tar_end(), mtime=0))


def pax_blocks(records: dict[bytes, bytes]) -> bytes:
    """A pax extended header (applies to the next member) holding ``records`` as given."""
    data = b"".join(_pax_record(keyword, value) for keyword, value in records.items())
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(data)
    return tar_blocks(info, data)


def _pax_record(keyword: bytes, value: bytes) -> bytes:
    rest = b" " + keyword + b"=" + value + b"\n"
    length = len(rest) + len(str(len(rest)))
    length = len(rest) + len(str(length))
    return str(length).encode() + rest


def pax_header_bomb(device, size: int) -> Archive:
    """A metrics package whose first member carries a pax extended header of ``size`` bytes of
    zeros: tarfile reads a pax header whole, before any member limit applies."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, size
    archive = metrics_package(device)
    tail = bytes(-size % tarfile.BLOCKSIZE) + gzip.decompress(archive.body)
    body = gzip.compress(tar_blocks(info), mtime=0) + gzipped_zeros(size) + gzip.compress(tail, mtime=0)
    return Archive(archive.package_id, archive.kind, body, archive.manifest)


def png(width: int, height: int) -> bytes:
    """A valid 1×1 PNG whose header then claims ``width``×``height`` (CRC fixed up): a pixel bomb
    a few dozen bytes long."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    # Signature (8), then the IHDR chunk: length (4), type (4), width and height first in its data.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)
