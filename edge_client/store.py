"""Durable local store: the outbox of everything the device reports, and its local log.

Every prediction log, drift event, quarantine sample and metric is appended here, under a
client-generated UUID, before any network attempt. ``append`` returns only after the row is
committed: SQLite in WAL mode with ``synchronous=FULL`` syncs the log at each commit, so a record
whose UUID the caller got back survives SIGKILL and power loss. The server deduplicates on that
UUID, so the sync client may resend freely.

Rows move ``pending`` → ``sent`` (after a 2xx) or ``failed`` (the server refused the record
itself: a poison message, kept with the server's reason and never retried). A failed attempt
bumps ``attempts`` and sets ``next_attempt_at``; pending rows are read in insertion order, so
shipping resumes after a restart where it stopped.

Disk use is bounded by ``max_bytes`` (payload plus attachments) and ``max_rows``. When an append
goes over either bound, rows are evicted, oldest first within each tier, until the store is back
under 90 % of both bounds (headroom, so eviction runs once per many appends, not on each):

1. records already delivered (``sent``) or refused (``failed``), of any kind;
2. pending prediction logs and metrics;
3. pending drift events and quarantine samples (the evidence the server most needs).

Sent rows are kept as the device's local log until eviction removes them.

>>> import tempfile, os
>>> store = Store(os.path.join(tempfile.mkdtemp(), "outbox.sqlite3"))
>>> item_id = store.append("prediction", {"label": "7", "confidence": 0.91})
>>> [item.payload["label"] for item in store.pending("prediction")]
['7']
>>> store.mark_sent([item_id])
>>> store.pending("prediction")
[]
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PREDICTION, METRIC, DRIFT_EVENT, QUARANTINE_SAMPLE = "prediction", "metric", "drift_event", "quarantine_sample"
# Eviction tier of a pending record per kind; delivered and refused records are tier 0.
PENDING_TIER = {PREDICTION: 1, METRIC: 1, DRIFT_EVENT: 2, QUARANTINE_SAMPLE: 2}
KINDS = tuple(PENDING_TIER)
ATTACHMENT_KINDS = (DRIFT_EVENT, QUARANTINE_SAMPLE)
PENDING, SENT, FAILED = "pending", "sent", "failed"
# Attachment names become file names inside packages: keep them plain.
ATTACHMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EVICT_TO = 0.9
MAX_VERDICTS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS item (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    parent TEXT,
    created_at REAL NOT NULL,
    payload TEXT NOT NULL,
    size INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    tier INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at REAL
);
-- The sync client's read: due pending rows of one kind, in insertion order.
CREATE INDEX IF NOT EXISTS item_pending_by_kind ON item (kind, status, seq);
-- Eviction: the lowest tier first, oldest first within it.
CREATE INDEX IF NOT EXISTS item_eviction_order ON item (tier, seq);
-- Children of a drift event ship with it.
CREATE INDEX IF NOT EXISTS item_by_parent ON item (parent) WHERE parent IS NOT NULL;
CREATE TABLE IF NOT EXISTS attachment (
    item_id TEXT NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (item_id, name)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Drift-event verdicts applied on the device; acked_at stays NULL until the server has the ack.
CREATE TABLE IF NOT EXISTS verdict (
    event_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    applied_at REAL NOT NULL,
    acked_at REAL
);
-- Running totals kept by triggers, so bound checks never scan the table.
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    evicted_pending INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0, 0);
CREATE TRIGGER IF NOT EXISTS item_added AFTER INSERT ON item BEGIN
    UPDATE totals SET rows = rows + 1, bytes = bytes + NEW.size WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS item_removed AFTER DELETE ON item BEGIN
    UPDATE totals SET rows = rows - 1, bytes = bytes - OLD.size,
        evicted_pending = evicted_pending + (OLD.status = 'pending') WHERE id = 1;
    DELETE FROM attachment WHERE item_id = OLD.id;
END;
"""


@dataclass(frozen=True)
class Item:
    id: str
    kind: str
    created_at: float
    payload: dict
    size: int
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    parent: str | None = None
    seq: int = field(default=0, repr=False)


COLUMNS = "id, kind, created_at, payload, size, status, attempts, next_attempt_at, last_error, parent, seq"


def _item(row) -> Item:
    return Item(*row[:3], json.loads(row[3]), *row[4:])


class Store:
    """The outbox. Thread-safe: one connection behind a lock (the pipeline appends while the
    sync thread reads and marks)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        max_rows: int = 200_000,
        clock: Callable[[], float] = time.time,
    ):
        self.path, self.max_bytes, self.max_rows, self.clock = Path(path), max_bytes, max_rows, clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = self._connect()

    @classmethod
    def from_config(cls, config) -> Store:
        section = config.store
        return cls(config.path(section.path), max_bytes=section.max_bytes, max_rows=section.max_rows)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a write transaction takes
        # the lock up front instead of failing half-way when another process writes.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit: survives power loss
        db.execute("PRAGMA journal_size_limit=4194304")  # truncate the WAL after checkpoints
        db.executescript(SCHEMA)
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- writing --------------------------------------------------------------------------------

    def append(
        self,
        kind: str,
        payload: dict,
        *,
        attachments: dict[str, bytes] | None = None,
        parent: str | None = None,
        item_id: str | None = None,
    ) -> str:
        """Store one record; return its UUID once committed. ``parent`` links a quarantine sample
        to its drift event (they ship in one package). Bound checks may evict older records."""
        item_id = item_id or str(uuid.uuid4())
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        attachments = _checked_attachments(kind, attachments or {})
        size = len(text) + sum(len(data) for data in attachments.values())
        if size > self.max_bytes:
            raise ValueError(f"record of {size} bytes exceeds the store's max_bytes ({self.max_bytes})")
        with self._write() as db:
            db.execute(
                "INSERT INTO item (id, kind, parent, created_at, payload, size, tier) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (item_id, kind, parent, self.clock(), text, size, PENDING_TIER[kind]),
            )
            db.executemany(
                "INSERT INTO attachment (item_id, name, data) VALUES (?, ?, ?)",
                [(item_id, name, data) for name, data in attachments.items()],
            )
            self._evict_if_over(db)
        return item_id

    def mark_sent(self, ids: Iterable[str]) -> None:
        self._update(ids, "status = 'sent', tier = 0, sent_at = ?, last_error = NULL", self.clock())

    def mark_failed(self, item_id: str, error: str) -> None:
        """A poison message: the server refused the record itself. Kept, never retried."""
        self._update([item_id], "status = 'failed', tier = 0, last_error = ?", error[:2000])

    def mark_retry(self, ids: Iterable[str], error: str, delay_s: float) -> None:
        """A transient failure: count the attempt, try again ``delay_s`` from now."""
        self._update(
            ids, "attempts = attempts + 1, next_attempt_at = ?, last_error = ?", self.clock() + delay_s, error[:2000]
        )

    def _update(self, ids: Iterable[str], assignments: str, *values) -> None:
        rows = [(*values, item_id) for item_id in ids]
        with self._write() as db:
            # Only pending rows change: a late answer must not resurrect or re-fail a row.
            db.executemany(f"UPDATE item SET {assignments} WHERE id = ? AND status = 'pending'", rows)  # noqa: S608

    def set_meta(self, key: str, value) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # --- reading --------------------------------------------------------------------------------

    def get(self, item_id: str) -> Item | None:
        row = self._query(f"SELECT {COLUMNS} FROM item WHERE id = ?", (item_id,))  # noqa: S608
        return _item(row[0]) if row else None

    def pending(
        self, kind: str, *, limit: int = 100, after_seq: int = 0, unparented: bool = False, now: float | None = None
    ) -> list[Item]:
        """Due pending records of ``kind`` in insertion order, after ``after_seq``. ``unparented``
        keeps only records whose parent is no longer pending (they cannot ship with it)."""
        now = self.clock() if now is None else now
        orphans = " AND NOT EXISTS (SELECT 1 FROM item AS up WHERE up.id = item.parent AND up.status = 'pending')"
        rows = self._query(
            f"SELECT {COLUMNS} FROM item WHERE kind = ? AND status = 'pending' AND seq > ? "  # noqa: S608
            f"AND next_attempt_at <= ?{orphans if unparented else ''} ORDER BY seq LIMIT ?",
            (kind, after_seq, now, limit),
        )
        return [_item(row) for row in rows]

    def iter_pending(self, kind: str, batch_size: int) -> Iterator[list[Item]]:
        """Batches of due pending records, oldest first. Each batch starts after the last one, so
        records put back for a later retry are not yielded twice in one pass; a new pass (after
        a restart, say) starts again from the oldest pending record."""
        after = 0
        while batch := self.pending(kind, limit=batch_size, after_seq=after):
            yield batch
            after = batch[-1].seq

    def children(self, parent: str, *, status: str = PENDING) -> list[Item]:
        rows = self._query(
            f"SELECT {COLUMNS} FROM item WHERE parent = ? AND status = ? ORDER BY seq",  # noqa: S608
            (parent, status),
        )
        return [_item(row) for row in rows]

    def attachments(self, item_id: str) -> dict[str, bytes]:
        rows = self._query("SELECT name, data FROM attachment WHERE item_id = ? ORDER BY name", (item_id,))
        return {name: bytes(data) for name, data in rows}

    # --- verdicts -------------------------------------------------------------------------------

    def verdict_status(self, event_id: str) -> str | None:
        rows = self._query("SELECT status FROM verdict WHERE event_id = ?", (event_id,))
        return rows[0][0] if rows else None

    def record_verdict(self, event_id: str, status: str) -> None:
        """Remember an applied verdict, to be acknowledged (again) to the server."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO verdict (event_id, status, applied_at, acked_at) VALUES (?, ?, ?, NULL)",
                (event_id, status, self.clock()),
            )
            # Bounded: the oldest acknowledged verdicts go first.
            db.execute(
                "DELETE FROM verdict WHERE acked_at IS NOT NULL AND event_id NOT IN "
                "(SELECT event_id FROM verdict ORDER BY applied_at DESC LIMIT ?)",
                (MAX_VERDICTS,),
            )

    def unacked_verdicts(self) -> list[dict]:
        rows = self._query("SELECT event_id, status FROM verdict WHERE acked_at IS NULL ORDER BY applied_at")
        return [{"event_id": event_id, "status": status} for event_id, status in rows]

    def ack_verdicts(self, verdicts: list[dict]) -> None:
        rows = [(self.clock(), verdict["event_id"], verdict["status"]) for verdict in verdicts]
        with self._write() as db:
            db.executemany("UPDATE verdict SET acked_at = ? WHERE event_id = ? AND status = ?", rows)

    def get_meta(self, key: str, default=None):
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def counts(self) -> dict[str, dict[str, int]]:
        """``{kind: {status: n}}`` for the records kept."""
        counts: dict[str, dict[str, int]] = {}
        for kind, status, n in self._query("SELECT kind, status, COUNT(*) FROM item GROUP BY kind, status"):
            counts.setdefault(kind, {})[status] = n
        return counts

    def totals(self) -> dict[str, int]:
        rows, size, evicted = self._query("SELECT rows, bytes, evicted_pending FROM totals WHERE id = 1")[0]
        return {"rows": rows, "bytes": size, "evicted_pending": evicted}

    # --- internals ------------------------------------------------------------------------------

    def _query(self, sql: str, params=()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _write(self):
        return _Transaction(self._db, self._lock)

    def _evict_if_over(self, db: sqlite3.Connection) -> None:
        rows, size = db.execute("SELECT rows, bytes FROM totals WHERE id = 1").fetchone()
        if rows <= self.max_rows and size <= self.max_bytes:
            return
        excess_rows = rows - int(self.max_rows * EVICT_TO)
        excess_bytes = size - int(self.max_bytes * EVICT_TO)
        victims = []
        for item_id, item_size in db.execute("SELECT id, size FROM item ORDER BY tier, seq"):
            if excess_rows <= 0 and excess_bytes <= 0:
                break
            victims.append((item_id,))
            excess_rows, excess_bytes = excess_rows - 1, excess_bytes - item_size
        db.executemany("DELETE FROM item WHERE id = ?", victims)


def _checked_attachments(kind: str, attachments: dict[str, bytes]) -> dict[str, bytes]:
    if kind not in PENDING_TIER:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    if attachments and kind not in ATTACHMENT_KINDS:
        raise ValueError(f"{kind} records take no attachments (only {', '.join(ATTACHMENT_KINDS)})")
    for name, data in attachments.items():
        if not ATTACHMENT_NAME.match(name) or ".." in name:
            raise ValueError(f"attachment name {name!r} must match {ATTACHMENT_NAME.pattern} without '..'")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError(f"attachment {name!r} must be bytes, not {type(data).__name__}")
    return {name: bytes(data) for name, data in attachments.items()}


class _Transaction:
    """``with store._write() as db``: lock, BEGIN IMMEDIATE, COMMIT (or ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, exc_type, exc, tb):
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()
