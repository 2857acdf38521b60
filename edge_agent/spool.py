"""The store-and-forward spool: a bounded SQLite outbox of encoded face messages.

Every face message goes through the spool, whether the broker is up or not: it is written
first and deleted only when the broker acknowledges it (PUBACK), so a message survives a
broker outage and an agent restart (at-least-once; consumers de-duplicate on
``message_id``). The spool holds only what would be published (encoded, scrambled face
messages); raw frames and faces never reach it.

It is bounded in messages and payload bytes: when full, the oldest messages are dropped and
counted (``spool_full``), persistently. Messages whose MQTT expiry has passed are dropped
(``expired``) instead of being sent late.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rllfpr.files import private_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    expires_at REAL NOT NULL,
    key_epoch INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_expiry ON outbox (expires_at);
CREATE INDEX IF NOT EXISTS outbox_epoch ON outbox (key_epoch);
CREATE TABLE IF NOT EXISTS dropped (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"""

OnDrop = Callable[[str, int], None]  # reason, how many


@dataclass(frozen=True)
class Outgoing:
    id: int
    topic: str
    payload: bytes
    expires_at: float  # wall clock, seconds since the epoch


class Spool:
    def __init__(
        self,
        path: Path,
        max_messages: int,
        max_bytes: int,
        on_drop: OnDrop = lambda _reason, _count: None,
    ) -> None:
        private_dir(path.parent)
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox")
        self._count, self._bytes = row.fetchone()

    @property
    def depth(self) -> int:
        return int(self._count)

    @property
    def size_bytes(self) -> int:
        return int(self._bytes)

    def put(self, topic: str, payload: bytes, expires_at: float, key_epoch: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO outbox (topic, payload, expires_at, key_epoch) VALUES (?, ?, ?, ?)",
                (topic, payload, expires_at, key_epoch),
            )
            self._count += 1
            self._bytes += len(payload)
            self._enforce_bounds()

    def _enforce_bounds(self) -> None:
        dropped = 0
        while self._count > self.max_messages or self._bytes > self.max_bytes:
            oldest = self._db.execute(
                "SELECT id, LENGTH(payload) FROM outbox ORDER BY id LIMIT 1"
            ).fetchone()
            if oldest is None:
                break
            self._delete(oldest[0], oldest[1])
            dropped += 1
        if dropped:
            self._record_drop("spool_full", dropped)

    def _delete(self, message_id: int, size: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (message_id,))
        self._count -= 1
        self._bytes -= size

    def _record_drop(self, reason: str, count: int) -> None:
        self._db.execute(
            "INSERT INTO dropped (reason, count) VALUES (?, ?) "
            "ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
            (reason, count),
        )
        self._on_drop(reason, count)

    def take(self, after_id: int, limit: int) -> list[Outgoing]:
        """The oldest messages with an id above ``after_id``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, expires_at FROM outbox WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Outgoing(row[0], row[1], bytes(row[2]), row[3]) for row in rows]

    def get(self, ids: list[int]) -> list[Outgoing]:
        """The messages with these ids that are still in the spool, oldest first."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, topic, payload, expires_at FROM outbox WHERE id IN ({marks}) "
                "ORDER BY id",
                ids,
            ).fetchall()
        return [Outgoing(row[0], row[1], bytes(row[2]), row[3]) for row in rows]

    def remove(self, message_id: int, reason: str | None = None) -> bool:
        """Delete one message (acknowledged, or dropped for ``reason``); False if absent."""
        with self._lock:
            row = self._db.execute(
                "SELECT LENGTH(payload) FROM outbox WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                return False
            self._delete(message_id, row[0])
            if reason is not None:
                self._record_drop(reason, 1)
            return True

    def expire(self, now: float | None = None) -> int:
        """Drop messages whose expiry has passed; returns how many."""
        now = time.time() if now is None else now
        return self._drop_where("expires_at <= ?", now, "expired")

    def drop_epoch(self, key_epoch: int) -> int:
        """Drop messages scrambled with a revoked key: no recognizer accepts them."""
        return self._drop_where("key_epoch = ?", key_epoch, "revoked")

    def _drop_where(self, condition: str, value: float, reason: str) -> int:
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, LENGTH(payload) FROM outbox WHERE {condition}", (value,)
            ).fetchall()
            for message_id, size in rows:
                self._delete(message_id, size)
            if rows:
                self._record_drop(reason, len(rows))
        return len(rows)

    def dropped(self) -> dict[str, int]:
        """Messages dropped by reason since the spool was created (survives restarts)."""
        with self._lock:
            rows = self._db.execute("SELECT reason, count FROM dropped").fetchall()
        return {reason: int(count) for reason, count in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
