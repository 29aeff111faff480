"""The drift pages in a real browser (Debian's chromium through Playwright) against runsphere:
drift events arriving from a package and from the direct API appear on the open overview without
a reload, and a verdict given on an event's page reaches the overview live. Its screenshots are
docs/screenshots/drift-overview.png and drift-event.png."""

from __future__ import annotations

import io
import shutil
import urllib.error
import urllib.request
import uuid

import pytest
from PIL import Image, ImageDraw

from drift.tests.test_drift_packages import drift_package, event_record, sample_record
from tests.live_server import HttpClient, Login, SphereServer, enroll, running_sphere
from tests.test_browser_fleet import SCREENSHOTS, browser  # noqa: F401 (browser: the fixture, chromium or a skip)

pytestmark = [pytest.mark.slow, pytest.mark.embedded]
PACKAGE_PROCESSING_S = 15  # upload, then the in-process worker stores the event


def digit_png(slant: int) -> bytes:
    """A 28×28 white-on-black stroke, like the digits the demo fleet classifies."""
    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).line([(6, 6), (22, 6), (6 + slant, 23)], fill=255, width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload_package(server: SphereServer, token: str, archive) -> int:
    request = urllib.request.Request(
        f"{server.url}/api/v1/device/packages",
        data=archive.body,
        method="POST",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/gzip",
            "X-Package-Id": archive.package_id,
            "X-Package-Kind": archive.kind,
            "X-Package-Sha256": archive.sha256,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        raise AssertionError(f"upload refused: HTTP {error.code} {error.read()[:2000]!r}") from None


def report_directly(server: SphereServer, token: str, **fields) -> None:
    body = {"id": str(uuid.uuid4()), "created": "2026-11-23T12:01:00Z", "model_version": "digits@3", **fields}
    answer = HttpClient(server.url).post(
        "/api/v1/device/drift-events", json_body=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status == 201, answer


def sign_in(page, server: SphereServer, login: Login, target: str) -> None:
    page.goto(f"{server.url}/admin/login/?next={target}")
    page.fill("#id_username", login.username)
    page.fill("#id_password", login.password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server.url}{target}")


def test_new_drift_events_and_a_verdict_reach_the_open_overview_without_a_reload(tmp_path, browser):  # noqa: F811
    from playwright.sync_api import expect

    with running_sphere(tmp_path / "data") as server:
        login = server.create_user("dora", staff=True, apps=("devices", "drift"))
        device = enroll(server, server.create_enrollment_token(), name="edge-cam-7")
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(10_000)
        overview, event_page = context.new_page(), None
        try:
            sign_in(overview, server, login, "/drift/")
            pending = overview.locator('[data-count="pending"]')
            expect(overview.locator("#live-state")).to_have_text("live")
            expect(pending).to_have_text("0")
            overview.evaluate("window.sphereSamePage = true")  # gone if the page reloads

            # A drift event package with three sample images, stored by the in-process worker.
            event = event_record(detector="knn_distance", scores={"distance": 3.2}, params={"threshold": 2.5})
            images = [{"image.png": digit_png(slant)} for slant in (0, 4, 8)]
            samples = [(sample_record(event, label="7", confidence=0.52), files) for files in images]
            upload_package(server, device["token"], drift_package(device["device_id"], event, samples))
            packaged = overview.locator(".event-card").filter(has_text="knn_distance")
            expect(packaged).to_have_count(1, timeout=PACKAGE_PROCESSING_S * 1000)
            expect(packaged).to_contain_text("edge-cam-7")
            expect(packaged.locator("img")).to_have_count(3)
            overview.wait_for_function(
                "() => [...document.querySelectorAll('.event-card img')].every(i => i.complete && i.naturalWidth > 0)"
            )

            # A direct report (no images) appears the same way.
            report_directly(server, device["token"], detector="page_hinkley")
            expect(overview.locator(".event-card").filter(has_text="page_hinkley")).to_have_count(1, timeout=3_000)
            expect(pending).to_have_text("2", timeout=3_000)
            assert overview.evaluate("window.sphereSamePage === true"), "the overview reloaded"
            overview.screenshot(path=str(tmp_path / "drift-overview.png"), full_page=True)

            # An operator confirms the packaged event on its page, in a second tab.
            event_page = context.new_page()
            event_page.goto(server.url + packaged.locator("a.detector").get_attribute("href"))
            expect(event_page.locator(".sample img")).to_have_count(3)
            event_page.fill("#id_note", "lens fogged on line 2")
            event_page.get_by_role("button", name="Confirm drift").click()
            expect(event_page.locator(".message.success")).to_contain_text("is now confirmed")
            expect(event_page.locator('[data-live-region="verdict"] [data-field="status"]')).to_have_text("Confirmed")
            expect(event_page.locator(".facts-table").first).to_contain_text("lens fogged on line 2")
            event_page.screenshot(path=str(tmp_path / "drift-event.png"), full_page=True)

            # The overview of pending events follows: the confirmed one leaves, the count drops.
            expect(pending).to_have_text("1", timeout=3_000)
            expect(packaged).to_have_count(0, timeout=3_000)
            assert overview.evaluate("window.sphereSamePage === true"), "the overview reloaded"
        finally:
            overview.screenshot(path=str(tmp_path / "drift-overview-after.png"), full_page=True)
            context.close()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in ("drift-overview.png", "drift-event.png"):
        shutil.copyfile(tmp_path / name, SCREENSHOTS / name)
