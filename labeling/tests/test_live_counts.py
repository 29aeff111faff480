"""The live queue counts on the embedded topology: `manage.py runsphere` with its in-process worker,
driven over HTTP and a websocket. Labels mark the counts dirty; the labeling.publish_counts task,
a second later, publishes them once for the whole burst."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.live_server import HttpClient, open_live, running_sphere

pytestmark = [pytest.mark.slow, pytest.mark.embedded]

BURST = 6


def label_next(client: HttpClient, value: str) -> None:
    page = client.get("/labeling/")
    assert page.status == 200, page
    task = re.search(r'action="/labeling/tasks/(\d+)/label/"', page.text).group(1)
    fields = dict(re.findall(r'name="(csrfmiddlewaretoken|served)" value="([^"]+)"', page.text))
    answer = client.post(f"/labeling/tasks/{task}/label/", form={**fields, "value": value})
    assert answer.status == 302, answer


def test_a_burst_of_labels_reaches_the_live_page_as_one_count_from_the_in_process_worker(tmp_path):
    with running_sphere(tmp_path / "data") as server:
        server.shell(
            f"""
            from labeling.queue import Candidate, enqueue
            enqueue([Candidate(key=f"live:{{n}}", source="uncertain", model_version="digits@1",
                               predicted_label="7", confidence=0.5) for n in range({BURST + 2})])
            """
        )
        login = server.create_user("lena", staff=True, apps=("labeling",))
        labeler = HttpClient(server.url)
        labeler.login(login)
        with open_live(server, "labeling", session_id=labeler.cookie("sessionid")) as live:
            started = time.monotonic()
            for n in range(BURST):
                label_next(labeler, str(n))
            burst_s = time.monotonic() - started
            events = counts_until_quiet(live, last=lambda data: data["pending"] == "2")
        assert events[-1] == {"pending": "2", "leased": "0", "labeled": "0"}
        # At most one count a second, counted once for several labels: fewer events than labels.
        assert len(events) <= burst_s + 2 < BURST, (events, burst_s, server.log_tail())


def counts_until_quiet(live, last, quiet_s: float = 2.5, timeout: float = 15) -> list[dict]:
    """Every labeling.counts event until one matching ``last``, then nothing for ``quiet_s``."""
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = quiet_s if events and last(events[-1]) else deadline - time.monotonic()
        try:
            message = json.loads(live.recv(timeout=max(waiting, 0.01)))
        except TimeoutError:
            break
        if message["event"] == "labeling.counts":
            events.append(message["data"])
    assert events and last(events[-1]), events
    return events
