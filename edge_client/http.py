"""The one door for outbound HTTP (standard library urllib only).

Everything the edge client sends or fetches goes through ``request`` and ``download`` here.
Callers take an ``http`` argument that defaults to this module, so a test can pass any object
with the same two functions (or monkeypatch them) and no test ever touches the network.

Outcomes are split the way the sync client needs them:

- an HTTP answer, whatever its status, is a ``Response`` (4xx and 5xx are not exceptions);
- no answer at all (refused, reset or dropped connection, DNS failure, timeout, a truncated
  answer) raises ``TransportError``: always worth retrying later.

The bearer token goes in an *unredirected* header: urllib copies ordinary headers onto a
redirect, which would hand the device's secret to whatever host the redirect names.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import random
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from edge_client import __version__

USER_AGENT = f"sphere-edge/{__version__}"
MAX_ANSWER_BYTES = 1024 * 1024  # JSON answers are small; a bigger one is a misbehaving server
CHUNK_BYTES = 64 * 1024


class TransportError(Exception):
    """No usable HTTP answer. Transient by nature: retry with backoff."""


class TooLarge(Exception):
    """A download went over its byte limit; the transfer was cut off."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self):
        """The answer as JSON, or None when it is not JSON (a proxy's HTML error page, say)."""
        try:
            return jsonlib.loads(self.body)
        except ValueError:
            return None

    def text(self, limit: int = 500) -> str:
        return self.body[:limit].decode("utf-8", errors="replace")


def request(
    method: str,
    url: str,
    *,
    json=None,
    body: bytes | BinaryIO | None = None,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    timeout: float = 10.0,
    max_answer_bytes: int = MAX_ANSWER_BYTES,
) -> Response:
    """Send one request. ``body`` may be an open binary file: it is streamed from disk in
    chunks, and the caller must then give its Content-Length in ``headers``."""
    headers = dict(headers or {})
    if json is not None:
        body = jsonlib.dumps(json, separators=(",", ":"), allow_nan=False).encode()
        headers["Content-Type"] = "application/json"
    prepared = _prepare(method, url, body, headers, token)
    return _exchange(prepared, timeout, lambda answer: _read_limited(answer, max_answer_bytes))


def download(url: str, sink: BinaryIO, *, max_bytes: int, token: str | None = None, timeout: float = 30.0) -> Response:
    """GET ``url`` and stream a 2xx body into ``sink`` (never held in memory); raise ``TooLarge``
    as soon as it passes ``max_bytes``. A non-2xx answer is returned with its (short) body and
    nothing written."""
    prepared = _prepare("GET", url, None, {}, token)
    return _exchange(prepared, timeout, lambda answer: _copy_limited(answer, sink, max_bytes))


def _prepare(method: str, url: str, body, headers: dict, token: str | None) -> urllib.request.Request:
    prepared = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
    prepared.add_header("User-Agent", USER_AGENT)
    prepared.add_header("Accept", "application/json")
    if token:
        prepared.add_unredirected_header("Authorization", f"Bearer {token}")
    return prepared


def _exchange(prepared: urllib.request.Request, timeout: float, read_body) -> Response:
    if not prepared.full_url.startswith(("http://", "https://")):
        raise ValueError(f"refusing a non-HTTP URL: {prepared.full_url!r}")
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as answer:  # noqa: S310 (scheme checked above)
            return Response(answer.status, read_body(answer), dict(answer.headers))
    except urllib.error.HTTPError as error:  # an answer with a 4xx/5xx status
        with error:
            return Response(error.code, _read_limited(error, MAX_ANSWER_BYTES), dict(error.headers or {}))
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        # URLError wraps refused connections and DNS failures; HTTPException covers dropped
        # connections (RemoteDisconnected) and truncated bodies; OSError covers timeouts and resets.
        raise TransportError(f"{prepared.get_method()} {prepared.full_url}: {_reason(exc)}") from exc


def _read_limited(answer, limit: int) -> bytes:
    data = answer.read(limit + 1)
    if len(data) > limit:
        raise TransportError(f"answer larger than {limit} bytes")
    return data


def _copy_limited(answer, sink: BinaryIO, limit: int) -> bytes:
    copied = 0
    while chunk := answer.read(CHUNK_BYTES):
        copied += len(chunk)
        if copied > limit:
            raise TooLarge(f"download exceeds its limit of {limit} bytes")
        sink.write(chunk)
    return b""


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max_s, base_s * 2**(attempt-1))].
    Jitter spreads a fleet that lost the server at the same moment over the whole window."""
    ceiling = min(max_s, base_s * 2 ** min(max(attempt - 1, 0), 62))
    return (rng or random).uniform(0, ceiling)


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
