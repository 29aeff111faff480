"""Refuse oversized request bodies at the ASGI layer, before Django buffers them.

Django's ASGI handler reads the whole body (to a temporary file) before any view runs, so a
limit enforced in a view is too late to protect disk and memory. This wrapper answers 413 as
soon as the declared Content-Length, or the bytes actually streamed, pass the limit.
"""

from __future__ import annotations

import json


class BodySizeLimit:
    def __init__(self, app, limits: list[tuple[str, int]]):
        self.app = app
        # Longest prefix first, so a specific path can have a larger limit than /api/.
        self.limits = sorted(limits, key=lambda item: len(item[0]), reverse=True)

    def limit_for(self, path: str) -> int | None:
        return next((limit for prefix, limit in self.limits if path.startswith(prefix)), None)

    async def __call__(self, scope, receive, send):
        limit = self.limit_for(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            return await self.app(scope, receive, send)
        if _declared_length(scope) > limit:
            return await _reject(send, limit)
        return await self.app(scope, self._counting(receive, send, limit), send)

    @staticmethod
    def _counting(receive, send, limit):
        seen = 0

        async def wrapped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    await _reject(send, limit)
                    return {"type": "http.disconnect"}  # Django aborts the request quietly
            return message

        return wrapped


def _declared_length(scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


async def _reject(send, limit):
    body = json.dumps({"detail": f"Request body exceeds the limit of {limit} bytes."}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
