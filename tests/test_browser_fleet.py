"""The fleet page in a real browser (Debian's chromium through Playwright) against runsphere."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.live_server import BASE_DIR, HttpClient, enroll, heartbeat, running_sphere

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = BASE_DIR / "test-artifacts"


def _missing_browser() -> str | None:
    if shutil.which(str(CHROMIUM)) is None:
        return f"needs chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs the playwright Python package (requirements/dev.txt)"
    return None


@pytest.fixture
def browser():
    missing = _missing_browser()
    if missing:
        if os.environ.get("SPHERE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"SPHERE_REQUIRE_SERVICES=1 but this run {missing}", pytrace=False)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_the_fleet_page_shows_a_device_going_offline_live_without_a_reload(tmp_path, browser):
    from playwright.sync_api import expect

    with running_sphere(tmp_path / "data") as server:
        login = server.create_operator()
        device = enroll(server, server.create_enrollment_token(), name="edge-browser")
        assert heartbeat(server, device["token"]).status == 200
        page = browser.new_page(viewport={"width": 1100, "height": 600})
        page.set_default_timeout(10_000)
        try:
            page.goto(f"{server.url}/admin/login/?next=/fleet/")
            page.fill("#id_username", login.username)
            page.fill("#id_password", login.password)
            page.click("input[type=submit]")
            page.wait_for_url(f"{server.url}/fleet/")

            row = page.locator(f'tr[data-device="{device["device_id"]}"]')
            badge = row.locator('[data-field="status"]')
            offline_count = page.locator('[data-count="offline"]')
            online_count = page.locator('[data-count="online"]')
            expect(row).to_contain_text("edge-browser")
            expect(badge).to_have_text("online")
            expect(online_count).to_have_text("1")
            expect(offline_count).to_have_text("0")
            expect(page.locator("#live-state")).to_have_text("live")
            page.evaluate("window.sphereSamePage = true")  # gone if the page reloads

            sent = time.monotonic()
            assert heartbeat(server, device["token"], shutting_down=True).json()["status"] == "offline"
            expect(offline_count).to_have_text("1", timeout=2_000)
            expect(badge).to_have_text("offline", timeout=2_000)
            expect(online_count).to_have_text("0", timeout=2_000)
            assert time.monotonic() - sent < 2.0
            expect(badge).to_have_class("badge status-offline")

            newcomer = enroll(server, server.create_enrollment_token(), name="edge-newcomer")
            new_row = page.locator(f'tr[data-device="{newcomer["device_id"]}"]')
            expect(new_row).to_contain_text("edge-newcomer", timeout=2_000)
            expect(new_row.locator('[data-field="status"]')).to_have_text("new")
            expect(page.locator('[data-count="total"]')).to_have_text("2", timeout=2_000)
            assert page.evaluate("window.sphereSamePage === true"), "the page reloaded"
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "fleet.png"), full_page=True)

        # The live update matches what the server now renders.
        operator = HttpClient(server.url)
        operator.login(login)
        assert operator.get(f"/api/v1/devices/{device['device_id']}/").json()["status"] == "offline"
