"""The ASGI body guard answers 413 before Django buffers an oversized body."""

import asyncio

from sphere.asgi_limits import BodySizeLimit


def run(guard, scope, chunks):
    sent, seen_by_app = [], []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            seen_by_app.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        if seen_by_app[-1]["type"] != "http.disconnect":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    messages = iter(
        [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)]
    )

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    guard.app = app
    asyncio.run(guard(scope, receive, send))
    return sent, seen_by_app


def scope(path="/api/v1/device/heartbeat", length=None):
    headers = [(b"content-length", str(length).encode())] if length is not None else []
    return {"type": "http", "path": path, "headers": headers}


def guard():
    return BodySizeLimit(None, [("/api/", 100), ("/api/v1/packages", 1000)])


def test_a_declared_oversized_body_is_refused_without_reading_it():
    sent, seen = run(guard(), scope(length=101), [b"x" * 101])
    assert sent[0]["status"] == 413
    assert seen == []


def test_a_streamed_body_is_cut_off_once_it_passes_the_limit():
    sent, seen = run(guard(), scope(), [b"x" * 60, b"x" * 60, b"x" * 60])
    assert sent[0]["status"] == 413
    assert seen[-1] == {"type": "http.disconnect"}
    assert len(sent) == 2, "the app sent nothing after the guard answered"


def test_bodies_within_the_limit_pass_through():
    sent, seen = run(guard(), scope(length=100), [b"x" * 50, b"x" * 50])
    assert sent[0]["status"] == 200
    assert b"".join(m["body"] for m in seen) == b"x" * 100


def test_the_longest_matching_prefix_sets_the_limit():
    assert guard().limit_for("/api/v1/packages/upload") == 1000
    assert guard().limit_for("/api/v1/device/heartbeat") == 100
    assert guard().limit_for("/admin/") is None
