"""Live events over websockets: permission before joining, delivery after commit, any thread."""

import asyncio
import threading

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing.websocket import WebsocketCommunicator

from conftest import heartbeat_body
from sphere import live
from sphere.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest_asyncio.fixture(autouse=True)
async def _close_connections_of_the_sync_thread():
    """sync_to_async work runs in a shared thread whose connection would outlive the test."""
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


async def connect_anonymously(topic="fleet"):
    communicator = WebsocketCommunicator(
        application, f"/ws/live/{topic}/", headers=[(b"origin", b"http://testserver"), (b"host", b"testserver")]
    )
    connected, code = await communicator.connect()
    return connected, code


async def session_cookie_for(user):
    from django.test import Client

    client = Client()
    await sync_to_async(client.force_login)(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def connect_with_session(user, origin=b"http://testserver", topic="fleet"):
    cookie = await session_cookie_for(user)
    communicator = WebsocketCommunicator(
        application, f"/ws/live/{topic}/", headers=[(b"origin", origin), (b"host", b"testserver"), (b"cookie", cookie)]
    )
    connected, _ = await communicator.connect()
    return communicator, connected


async def test_an_operator_receives_a_status_change_after_the_heartbeat_commits(operator, device_a):
    from devices import services

    communicator, connected = await connect_with_session(operator)
    assert connected
    await sync_to_async(services.record_heartbeat)(device_a.device, heartbeat_body())
    first = await communicator.receive_json_from(timeout=3)
    assert first["event"] == "device.status"
    assert first["data"]["status"] == "online" and first["data"]["previous"] == "new"
    counts = await communicator.receive_json_from(timeout=3)
    assert counts["event"] == "fleet.counts" and counts["data"]["online"] == 1
    await communicator.disconnect()


async def test_anonymous_and_outsiders_are_refused_before_joining(outsider):
    connected, code = await connect_anonymously()
    assert (connected, code) == (False, 4403)
    communicator, connected = await connect_with_session(outsider)
    assert not connected


async def test_staff_without_the_topic_permission_is_refused(django_user_model):
    staff = await sync_to_async(django_user_model.objects.create_user)("sid", password="pw-sid-123", is_staff=True)
    _, connected = await connect_with_session(staff)
    assert not connected


async def test_unknown_topics_are_refused(operator):
    _, connected = await connect_with_session(operator, topic="secrets")
    assert not connected


async def test_a_foreign_origin_is_refused(operator):
    _, connected = await connect_with_session(operator, origin=b"http://evil.example")
    assert not connected


async def test_an_event_published_from_a_worker_thread_reaches_the_socket(operator):
    communicator, connected = await connect_with_session(operator)
    assert connected

    def worker():  # as the in-process Celery worker thread would, outside any event loop
        live._send("fleet", "package.processed", {"id": 7})

    thread = threading.Thread(target=worker)
    await asyncio.get_running_loop().run_in_executor(None, lambda: (thread.start(), thread.join()))
    message = await communicator.receive_json_from(timeout=3)
    assert message == {"event": "package.processed", "data": {"id": 7}}
    await communicator.disconnect()


async def test_the_layer_in_use_matches_the_topology(settings):
    layer = get_channel_layer()
    expected = "RedisChannelLayer" if settings.REDIS_URL else "InProcessChannelLayer"
    assert type(layer).__name__ == expected
