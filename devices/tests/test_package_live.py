"""Operators watching /ws/live/packages/ see each package processed or failed, after commit."""

import io
import uuid

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async

from devices.ingest import uploads
from devices.tests.packages import build, metrics_lines
from sphere.tests.test_live import connect_with_session

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest_asyncio.fixture(autouse=True)
async def _close_connections_of_the_sync_thread():
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


def receive(persona, archive):
    """Upload through the service, as the endpoint does; the eager task runs at commit."""
    upload = uploads.Upload(uuid.UUID(archive.package_id), archive.kind, archive.sha256)
    return uploads.receive_package(persona.device, upload, io.BytesIO(archive.body)).package


def metrics_archive(device, beats=2):
    lines = [{"id": str(uuid.uuid4()), "cpu_percent": 10.0} for _ in range(beats)]
    return build(device, "metrics", [("metrics.jsonl", metrics_lines(*lines))], records=[b["id"] for b in lines])


async def test_an_operator_sees_a_package_processed_with_its_summary(operator, device_a):
    communicator, connected = await connect_with_session(operator, topic="packages")
    assert connected
    archive = metrics_archive(device_a.device)
    package = await sync_to_async(receive)(device_a, archive)
    message = await communicator.receive_json_from(timeout=3)
    assert message["event"] == "package.processed"
    assert message["data"]["package_id"] == archive.package_id == str(package.package_id)
    assert message["data"]["summary"] == {"heartbeats": 2, "stored": 2}
    assert message["data"]["processing_ms"] >= 0
    await communicator.disconnect()


async def test_an_operator_sees_a_failed_package_with_its_reason(operator, device_a):
    communicator, connected = await connect_with_session(operator, topic="packages")
    assert connected
    archive = build(device_a.device, "metrics", [("metrics.jsonl", b"{not json\n")])
    await sync_to_async(receive)(device_a, archive)
    message = await communicator.receive_json_from(timeout=3)
    assert message["event"] == "package.failed"
    assert "metrics.jsonl line 1 is not valid JSON" in message["data"]["error"]
    await communicator.disconnect()


async def test_someone_without_the_package_permission_cannot_watch(outsider):
    _, connected = await connect_with_session(outsider, topic="packages")
    assert not connected
