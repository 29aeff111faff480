"""The labeling page in a real browser (Debian's chromium through Playwright) against runsphere:
a labeler answers tasks with the keyboard alone (digit keys, ``s`` to skip, ``u`` to undo), the
labels land in the database with their timings, and the queue counts follow another labeler's
work live. The screenshot it takes is labeling.png (tests/test_browser_fleet.py says where)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.live_server import HttpClient, Login, SphereServer, running_sphere
from tests.test_browser_drift import sign_in
from tests.test_browser_fleet import SCREENSHOTS, browser  # noqa: F401 (browser: the fixture, chromium or a skip)

pytestmark = [pytest.mark.slow, pytest.mark.embedded]

# 8×8 grey-level digits like the demo fleet's (0 background … 9 full ink), one per task.
GLYPHS = {
    "3": ["02888820", "08200880", "00000880", "00288800", "00000880", "08200880", "02888820", "00000000"],
    "5": ["08888880", "08800000", "08888820", "00000880", "00000880", "08200880", "02888820", "00000000"],
    "7": ["08888880", "00000880", "00002800", "00008200", "00028000", "00088000", "00088000", "00000000"],
    "1": ["00028000", "00288000", "02888000", "00088000", "00088000", "00088000", "02888820", "00000000"],
    "9": ["02888820", "08800880", "08800880", "02888880", "00000880", "08200880", "02888820", "00000000"],
    "4": ["00008800", "00088800", "00828800", "08208800", "88888888", "00008800", "00008800", "00000000"],
}
# (drawn digit, model's prediction, confidence): the least confident is served first.
QUEUE = [("3", "8", 0.41), ("5", "6", 0.44), ("7", "1", 0.47), ("1", "7", 0.50), ("9", "4", 0.53), ("4", "9", 0.56)]


def pixels(glyph: list[str]) -> list[int]:
    return [int(cell) * 255 // 9 for line in glyph for cell in line]


def queue_digit_tasks(server: SphereServer) -> list[int]:
    """Store one 8×8 PNG per task in the prediction-images area and queue the tasks; their ids."""
    specs = [(pixels(GLYPHS[drawn]), predicted, confidence) for drawn, predicted, confidence in QUEUE]
    return json.loads(
        server.shell_value(
            f"""
            import io, json
            from django.core.files.base import ContentFile
            from django.core.files.storage import storages
            from PIL import Image
            from labeling.queue import Candidate, enqueue
            ids = []
            for n, (data, predicted, confidence) in enumerate({specs!r}):
                image = Image.new("L", (8, 8))
                image.putdata(data)
                png = io.BytesIO()
                image.save(png, "PNG")
                key = storages["prediction_images"].save(f"browser/{{n}}.png", ContentFile(png.getvalue()))
                rest = round(1 - confidence, 2)
                (task,) = enqueue([Candidate(
                    key=f"browser:{{n}}", source="uncertain", model_version="digits@2",
                    predicted_label=predicted, confidence=confidence,
                    probabilities={{predicted: confidence, "3": round(rest * 0.6, 2), "5": round(rest * 0.3, 2)}},
                    image_area="prediction_images", image_key=key,
                )])
                ids.append(task.pk)
            print("RESULT=" + json.dumps(ids))
            """
        )
    )


def create_labeler(server: SphereServer, username: str) -> Login:
    """Staff (the admin login admits only staff) who may label and see prediction images, nothing else."""
    password = f"pw-{username}-labels"
    server.shell(
        f"""
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Permission
        user = get_user_model().objects.create_user({username!r}, password={password!r}, is_staff=True)
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="labeling", codename="label_tasks")
            | Permission.objects.filter(content_type__app_label="devices", codename="view_predictionimage")
        )
        """
    )
    return Login(username, password)


def stored_labels(server: SphereServer) -> list[list]:
    return json.loads(
        server.shell_value(
            """
            import json
            from labeling.models import Label
            rows = [
                [label.task_id, label.value, label.labeled_by.username, label.undone_at is not None,
                 label.seconds is not None and label.seconds >= 0]
                for label in Label.objects.select_related("labeled_by").order_by("pk")
            ]
            print("RESULT=" + json.dumps(rows))
            """
        )
    )


def label_over_http(server: SphereServer, login: Login, value: str) -> int:
    """Another labeler answers the task the queue gives them, without following the redirect (so
    they claim no further task)."""
    import re

    client = HttpClient(server.url)
    client.login(login)
    page = client.get("/labeling/")
    assert page.status == 200, page
    task = re.search(r'action="/labeling/tasks/(\d+)/label/"', page.text).group(1)
    fields = dict(re.findall(r'name="(csrfmiddlewaretoken|served)" value="([^"]+)"', page.text))
    answer = client.post(f"/labeling/tasks/{task}/label/", form={**fields, "value": value})
    assert answer.status == 302, answer
    return int(task)


def test_a_labeler_works_the_queue_with_the_keyboard_alone(tmp_path, browser):  # noqa: F811
    from playwright.sync_api import expect

    with running_sphere(tmp_path / "data") as server:
        ids = queue_digit_tasks(server)
        lena, liam = create_labeler(server, "lena"), create_labeler(server, "liam")
        page = browser.new_page(viewport={"width": 1200, "height": 980})
        page.set_default_timeout(10_000)
        try:
            sign_in(page, server, lena, "/labeling/")
            heading = page.locator("h1 .meta")
            expect(heading).to_contain_text(f"task {ids[0]}")
            expect(page.locator("button[name=value]")).to_have_count(10)
            expect(page.locator("#live-state")).to_have_text("live")
            image = page.locator("#task-image")
            page.wait_for_function("() => document.getElementById('task-image').naturalWidth > 0")
            assert image.evaluate("i => [i.naturalWidth, i.clientWidth, getComputedStyle(i).imageRendering]") == [
                8,
                400,
                "pixelated",
            ]
            expect(page.locator(".task-facts .prediction")).to_contain_text("8")
            expect(page.locator("table.top-classes tr")).to_have_count(3)

            page.keyboard.press("3")  # task 0 is a 3
            expect(heading).to_contain_text(f"task {ids[1]}")
            page.keyboard.press("s")  # skip task 1
            expect(heading).to_contain_text(f"task {ids[2]}")
            page.keyboard.press("1")  # a slip: task 2 is a 7 …
            expect(heading).to_contain_text(f"task {ids[3]}")
            page.keyboard.press("u")  # … taken back: task 2 is shown again
            expect(heading).to_contain_text(f"task {ids[2]}")
            expect(page.locator(".message")).to_contain_text("is undone")
            page.keyboard.press("7")
            expect(heading).to_contain_text(f"task {ids[3]}")  # the skipped task 1 is not served again
            page.keyboard.press("1")
            expect(heading).to_contain_text(f"task {ids[4]}")
            expect(page.locator('[data-count="session_labels"]')).to_have_text("3")
            expect(page.locator('[data-count="labels_today"]')).to_have_text("3")
            pending = page.locator('[data-count="pending"]')
            expect(pending).to_have_text("2")  # the skipped task 1 and task 5
            page.evaluate("window.sphereSamePage = true")  # gone if the page reloads

            # Another labeler takes and answers a task: the open page's count follows, live.
            assert label_over_http(server, liam, "5") == ids[1]
            expect(pending).to_have_text("1", timeout=4_000)
            assert page.evaluate("window.sphereSamePage === true"), "the page reloaded"
            page.wait_for_timeout(1_300)  # the count's flash fades, for a clean screenshot
            page.screenshot(path=str(tmp_path / "labeling.png"))
        finally:
            page.screenshot(path=str(tmp_path / "labeling-last.png"), full_page=True)

        assert stored_labels(server) == [
            [ids[0], "3", "lena", False, True],
            [ids[2], "1", "lena", True, True],
            [ids[2], "7", "lena", False, True],
            [ids[3], "1", "lena", False, True],
            [ids[1], "5", "liam", False, True],
        ]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "labeling.png", SCREENSHOTS / "labeling.png")
