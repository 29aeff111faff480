"""The registry pages in a real browser (Debian's chromium through Playwright) against runsphere.

An operator watches /registry/jobs/ while a colleague presses "Run now" in another tab: the job
appears, its progress bar moves and it ends as a promoted challenger, all without a reload. The
progress comes from ``registry.jobs.progress``, called by the training worker inside the server
process: the embedded channel layer reaches only that process's websockets, so a call from this
test's process (or a ``manage.py shell``) would never arrive. Then a canary rollout's page shows
a decision made in another tab appear live. The screenshots it takes are
docs/screenshots/jobs.png, registry.png, version.png and rollout.png."""

from __future__ import annotations

import shutil

import pytest

from tests.live_server import SphereServer, running_sphere
from tests.test_browser_drift import sign_in
from tests.test_browser_fleet import SCREENSHOTS, browser  # noqa: F401 (browser: the fixture, chromium or a skip)

pytestmark = [pytest.mark.slow, pytest.mark.embedded]
TRAINING_S = 120  # labels → snapshot → features through the extractor → search → register

# Every value a job's progress bar takes while the page is open, and whether the page reloaded.
WATCH_PROGRESS = """() => {
  window.sphereSamePage = true;
  window.progressSeen = [];
  const record = () => {
    for (const bar of document.querySelectorAll('[data-job] progress[data-field="progress"]')) {
      const row = bar.closest("[data-job]");
      const stage = row.querySelector('[data-field="stage"]').textContent;
      window.progressSeen.push([row.dataset.job, Number(bar.value), stage]);
    }
  };
  const everything = {subtree: true, childList: true, attributes: true, characterData: true};
  new MutationObserver(record).observe(document.body, everything);
}"""


def prepare_training(server: SphereServer) -> None:
    """Rotated digits, labeled: a job trains a challenger that beats the shipped model on them. Its
    features are read 500 items at a time (registry.training.READ_CHUNK), each chunk a progress
    event: 1,600 items make the bar move several times while the page watches."""
    server.shell(
        """
        from labeling.models import TaskSource
        from registry.tests.factories import digits_family, policy
        from registry.tests.test_training import labeled, stream
        digits_family()
        labeled(*stream(1500, "rotation", 90.0, seed=21), source=TaskSource.QUARANTINE)
        labeled(*stream(100, "rotation", 90.0, seed=22), source=TaskSource.UNCERTAIN)
        policy(name="digits on drift", search={"n_components": [16], "k": [3]})
        """
    )


def start_canary(server: SphereServer) -> int:
    """The challenger to 10% of 20 devices, which install it; a tick judges the phase on their
    predictions and advances. Returns the rollout's id."""
    return int(
        server.shell_value(
            """
            from registry import versions
            from registry.models import CHALLENGER
            from registry.rollouts import start_rollout, tick
            from registry.tests.factories import digits_family
            from registry.tests.test_rollouts import GATES, backdate, fleet, install, observe_phase
            challenger = versions.alias_version(digits_family(), CHALLENGER)
            devices = fleet(20)
            rollout = start_rollout(challenger, phases=[0.1, 0.5, 1.0], gates=GATES, name="rotated digits canary")
            install(devices)
            backdate(rollout, 12)  # the phase has been observed long enough: the tick judges it now
            observe_phase(rollout)
            assert tick(rollout) == "advanced"
            print("RESULT=" + str(rollout.pk))
            """
        )
    )


def test_job_progress_and_rollout_decisions_reach_open_pages_without_a_reload(tmp_path, browser):  # noqa: F811
    from playwright.sync_api import expect

    with running_sphere(tmp_path / "data", MLFLOW_ENABLED=0) as server:
        login = server.create_user("rita", staff=True, apps=("registry", "labeling", "drift"))
        prepare_training(server)
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        context.set_default_timeout(10_000)
        watching, acting = context.new_page(), context.new_page()
        try:
            sign_in(watching, server, login, "/registry/jobs/")
            expect(watching.locator("#live-state")).to_have_text("live")
            expect(watching.locator("[data-job]")).to_have_count(0)
            watching.evaluate(WATCH_PROGRESS)

            # A colleague presses "Run now" in another tab.
            acting.goto(f"{server.url}/registry/jobs/")
            acting.locator('[data-row^="policy-"]').filter(has_text="digits on drift").get_by_role(
                "button", name="Run now"
            ).click()
            expect(acting.locator(".message.success")).to_contain_text("is queued")

            # The watching tab gets the job, its progress and its end, live.
            job = watching.locator("tr[data-job]")
            expect(job).to_have_count(1, timeout=5_000)
            status = job.locator('[data-field="status"]')
            expect(status).to_have_text("Promoted to challenger", timeout=TRAINING_S * 1000)
            expect(job.locator('[data-field="percent"]')).to_have_text("100%")
            expect(job.get_by_role("link", name="digits@2")).to_be_visible()
            seen = watching.evaluate("window.progressSeen")
            moving = {value for _, value, _ in seen if 0 < value < 100}
            assert len(moving) >= 3, f"the bar did not move live: {seen[:50]}"
            assert any(stage == "features" for _, _, stage in seen), seen[:50]
            assert watching.evaluate("window.sphereSamePage === true"), "the jobs page reloaded"
            watching.wait_for_timeout(1_300)  # the row's flash fades, for a clean screenshot
            watching.screenshot(path=str(tmp_path / "jobs.png"), full_page=True)

            # The new version, from the registry's front page: the challenger against its champion.
            watching.goto(f"{server.url}/registry/")
            expect(watching.locator('[data-alias="digits-champion"]')).to_have_text("digits@1")
            watching.screenshot(path=str(tmp_path / "registry.png"), full_page=True)
            watching.locator('[data-alias="digits-challenger"]').click()
            expect(watching.locator("h1")).to_contain_text("digits@2")
            expect(watching.locator("svg.registry-comparison")).to_be_visible()
            expect(watching.locator('[data-row="metric-drift-set"]')).to_contain_text("+")
            watching.screenshot(path=str(tmp_path / "version.png"), full_page=True)

            # A canary of the new challenger; its page is open while another tab pauses it.
            rollout = start_canary(server)
            page_url = f"{server.url}/registry/rollouts/{rollout}/"
            watching.goto(page_url)
            expect(watching.locator("#live-state")).to_have_text("live")
            expect(watching.locator('[data-field="status"]').first).to_have_text("Running")
            expect(watching.locator('[data-row="gate-mean-confidence"]').first).to_contain_text("pass")
            expect(watching.locator('[data-decision="pause"]')).to_have_count(0)
            watching.evaluate("window.sphereSamePage = true")

            acting.goto(page_url)
            acting.fill('input[name="reason"]', "line 2 camera is being serviced")
            acting.get_by_role("button", name="Pause").click()
            expect(acting.locator(".message.success")).to_contain_text("it is now paused")

            paused = watching.locator('[data-decision="pause"]')
            expect(paused).to_have_count(1, timeout=3_000)
            expect(paused).to_contain_text("line 2 camera is being serviced")
            expect(paused).to_contain_text("rita")
            expect(watching.locator('[data-live-region="status"] [data-field="status"]')).to_have_text("Paused")
            expect(watching.get_by_role("button", name="Resume")).to_be_visible()
            assert watching.evaluate("window.sphereSamePage === true"), "the rollout page reloaded"
            watching.wait_for_timeout(1_300)
            watching.screenshot(path=str(tmp_path / "rollout.png"), full_page=True)
        finally:
            watching.screenshot(path=str(tmp_path / "registry-last.png"), full_page=True)
            context.close()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in ("jobs.png", "registry.png", "version.png", "rollout.png"):
        shutil.copyfile(tmp_path / name, SCREENSHOTS / name)
