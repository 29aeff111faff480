"""The durable outbox: nothing acknowledged is lost, bounds hold, eviction follows its order."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge_client.store import DRIFT_EVENT, METRIC, PREDICTION, QUARANTINE_SAMPLE, Store

ROOT = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from edge_client.store import Store
    store = Store(sys.argv[1])
    n = 0
    while True:
        if n % 4 == 0:
            item_id = store.append("quarantine_sample", {"n": n}, attachments={"image.png": bytes(4096)})
        else:
            item_id = store.append("prediction", {"n": n, "label": "7", "confidence": 0.5, "pad": "x" * 300})
        print(item_id, flush=True)  # printed only once append() returned: acknowledged
        n += 1
    """
)


def test_it_keeps_every_acknowledged_record_when_the_writer_is_killed_mid_write(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    rng = random.Random(7)
    acknowledged: list[str] = []
    for _ in range(5):
        acknowledged += _run_and_kill(path, after_s=rng.uniform(0.05, 0.4))
        with Store(path) as store:
            missing = [item_id for item_id in acknowledged if store.get(item_id) is None]
            assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged records lost"
        assert _integrity(path) == "ok"
    assert len(acknowledged) > 50, "the writer should have acknowledged records before each kill"


def _run_and_kill(path: Path, after_s: float) -> list[str]:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(ROOT)], stdout=subprocess.PIPE, text=True)
    first = writer.stdout.readline()  # the writer is running and writing
    time.sleep(after_s)
    os.kill(writer.pid, signal.SIGKILL)
    rest, _ = writer.communicate(timeout=10)
    assert writer.returncode == -signal.SIGKILL
    # A line cut short by the kill was never acknowledged: only whole UUIDs count.
    return [line.strip() for line in [first, *rest.splitlines()] if len(line.strip()) == 36]


def _integrity(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def test_it_runs_in_wal_mode_with_full_sync(tmp_path):
    with Store(tmp_path / "outbox.sqlite3") as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_it_evicts_delivered_records_then_predictions_and_metrics_then_drift_evidence(tmp_path):
    with Store(tmp_path / "outbox.sqlite3", max_rows=10) as store:
        event = store.append(DRIFT_EVENT, {"n": 0})
        sample = store.append(QUARANTINE_SAMPLE, {"n": 1}, parent=event)
        delivered = store.append(PREDICTION, {"n": 2})
        store.mark_sent([delivered])
        refused = store.append(METRIC, {"n": 3})
        store.mark_failed(refused, "bad")
        predictions = [store.append(PREDICTION, {"n": n}) for n in range(4, 7)]
        metric = store.append(METRIC, {"n": 7})
        later_event = store.append(DRIFT_EVENT, {"n": 8})
        later_sample = store.append(QUARANTINE_SAMPLE, {"n": 9})
        kept = _ids(store)
        assert len(kept) == 10

        newest = store.append(PREDICTION, {"n": 10})  # 11 rows: evict down to 9 (90 %)
        assert _ids(store) == kept - {delivered, refused} | {newest}

        for n in range(11, 15):
            store.append(PREDICTION, {"n": n})
        survivors = _ids(store)
        assert {event, sample, later_event, later_sample} <= survivors
        assert not set(predictions) & survivors and metric not in survivors
        assert store.totals()["evicted_pending"] >= 4


def test_it_evicts_drift_evidence_oldest_first_when_nothing_else_is_left(tmp_path):
    with Store(tmp_path / "outbox.sqlite3", max_rows=5) as store:
        events = [store.append(DRIFT_EVENT, {"n": n}) for n in range(8)]
        assert _ids(store) <= set(events[3:])
        assert events[-1] in _ids(store)


def _ids(store: Store) -> set[str]:
    return {row[0] for row in store._db.execute("SELECT id FROM item")}


def test_it_stays_within_its_byte_and_row_bounds(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    max_bytes = 128 * 1024
    with Store(path, max_bytes=max_bytes, max_rows=1000) as store:
        for n in range(1500):
            if n % 10 == 0:
                store.append(QUARANTINE_SAMPLE, {"n": n}, attachments={"features.npy": os.urandom(2000)})
            else:
                store.append(PREDICTION, {"n": n, "pad": "p" * 200})
            totals = store.totals()
            assert totals["bytes"] <= max_bytes and totals["rows"] <= 1000
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        on_disk = path.stat().st_size + Path(f"{path}-wal").stat().st_size
    # SQLite reuses the pages of evicted rows: the file stays near the bound, it does not grow.
    assert on_disk < 3 * max_bytes, on_disk


def test_it_refuses_a_record_larger_than_the_whole_store(tmp_path):
    with Store(tmp_path / "outbox.sqlite3", max_bytes=1000) as store:
        with pytest.raises(ValueError, match="exceeds the store's max_bytes"):
            store.append(QUARANTINE_SAMPLE, {}, attachments={"image.png": bytes(2000)})
        assert store.totals()["rows"] == 0


def test_it_refuses_unknown_kinds_bad_attachment_names_and_non_json_payloads(tmp_path):
    with Store(tmp_path / "outbox.sqlite3") as store:
        with pytest.raises(ValueError, match="unknown record kind"):
            store.append("telemetry", {})
        with pytest.raises(ValueError, match="attachment name"):
            store.append(QUARANTINE_SAMPLE, {}, attachments={"../x.png": b"1"})
        with pytest.raises(ValueError, match="take no attachments"):
            store.append(PREDICTION, {}, attachments={"x.png": b"1"})
        with pytest.raises(ValueError):
            store.append(PREDICTION, {"confidence": float("nan")})
        assert store.totals()["rows"] == 0


def test_it_keeps_status_retry_counters_and_attachments_across_a_reopen(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    clock = [1000.0]
    with Store(path, clock=lambda: clock[0]) as store:
        sent, retried, failed = (store.append(PREDICTION, {"n": n}) for n in range(3))
        sample = store.append(QUARANTINE_SAMPLE, {"n": 3}, attachments={"image.png": b"\x89PNG"})
        store.mark_sent([sent])
        store.mark_retry([retried], "HTTP 503", delay_s=30)
        store.mark_failed(failed, "confidence: out of range")
    with Store(path, clock=lambda: clock[0]) as store:
        assert store.get(sent).status == "sent"
        assert (store.get(retried).attempts, store.get(retried).next_attempt_at) == (1, 1030.0)
        assert (store.get(failed).status, store.get(failed).last_error) == ("failed", "confidence: out of range")
        assert store.pending(PREDICTION) == []  # the retry is not due yet
        clock[0] = 1031.0
        assert [item.id for item in store.pending(PREDICTION)] == [retried]
        assert store.attachments(sample) == {"image.png": b"\x89PNG"}


def test_a_late_answer_does_not_change_a_record_that_is_no_longer_pending(tmp_path):
    with Store(tmp_path / "outbox.sqlite3") as store:
        item_id = store.append(PREDICTION, {})
        store.mark_sent([item_id])
        store.mark_failed(item_id, "late")
        store.mark_retry([item_id], "late", 10)
        assert (store.get(item_id).status, store.get(item_id).attempts) == ("sent", 0)


def test_it_iterates_pending_records_in_batches_and_resumes_from_the_oldest_pending(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    with Store(path) as store:
        ids = [store.append(PREDICTION, {"n": n}) for n in range(10)]
        batches = store.iter_pending(PREDICTION, batch_size=4)
        first = next(batches)
        store.mark_sent([item.id for item in first])
        second = next(batches)
        store.mark_retry([second[0].id], "HTTP 500", delay_s=0)  # due again at once
        assert [item.id for item in second] == ids[4:8]
        # Within one pass, a record put back is not yielded again.
        assert [item.id for item in next(batches)] == ids[8:]
    with Store(path) as store:  # a new pass after a restart starts from the oldest pending
        assert [item.id for item in next(store.iter_pending(PREDICTION, batch_size=4))] == ids[4:8]


def test_it_lists_children_and_orphans_of_drift_events(tmp_path):
    with Store(tmp_path / "outbox.sqlite3") as store:
        event = store.append(DRIFT_EVENT, {})
        child = store.append(QUARANTINE_SAMPLE, {}, parent=event)
        loose = store.append(QUARANTINE_SAMPLE, {})
        assert [item.id for item in store.children(event)] == [child]
        assert [item.id for item in store.pending(QUARANTINE_SAMPLE, unparented=True)] == [loose]
        store.mark_sent([event])
        assert [item.id for item in store.pending(QUARANTINE_SAMPLE, unparented=True)] == [child, loose]


def test_it_remembers_verdicts_until_acknowledged(tmp_path):
    with Store(tmp_path / "outbox.sqlite3") as store:
        store.record_verdict("e1", "confirmed")
        store.record_verdict("e2", "rejected")
        assert store.verdict_status("e1") == "confirmed"
        store.ack_verdicts([{"event_id": "e1", "status": "confirmed"}])
        assert store.unacked_verdicts() == [{"event_id": "e2", "status": "rejected"}]


def test_appends_from_several_threads_all_land(tmp_path):
    import threading

    with Store(tmp_path / "outbox.sqlite3") as store:
        ids: list[str] = []

        def writer():
            for _ in range(50):
                ids.append(store.append(PREDICTION, {}))

        threads = [threading.Thread(target=writer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.totals()["rows"] == 200 == len(set(ids))
