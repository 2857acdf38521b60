"""The audit log: a Redis stream of enrollments, erasures, searches and gallery drops.

Stream ``{prefix}:audit``; each entry has ``action`` (enroll, erase, search, drop, expire),
``actor`` (who asked: ``mqtt:{agent}``, ``http:{token id}``, ``retention``), and the scope,
epoch, subject, site and detail that apply. One ``search`` entry is written per recognition
event (a decided track), not per face. Retention: the stream is capped at ``max_entries``
(approximately, on every write) and entries older than ``retention`` are trimmed by the
maintenance sweep (``XTRIM MINID``). Read it with ``XREVRANGE`` or ``GET /v1/audit``.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from recognizer_service.gallery import RedisClient


class AuditLog:
    def __init__(
        self,
        client: RedisClient,
        prefix: str = "rllfpr",
        max_entries: int = 1_000_000,
        retention: timedelta = timedelta(days=90),
    ) -> None:
        self.client = client
        self.key = f"{prefix}:audit"
        self.max_entries = max_entries
        self.retention = retention

    def record(self, action: str, actor: str, **fields: Any) -> None:
        self.record_many([(action, actor, fields)])

    def record_many(self, entries: list[tuple[str, str, dict[str, Any]]]) -> None:
        if not entries:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for action, actor, fields in entries:
                entry = {"action": action, "actor": actor}
                entry |= {name: str(value) for name, value in fields.items() if value is not None}
                pipe.xadd(self.key, entry, maxlen=self.max_entries, approximate=True)  # type: ignore[arg-type]
            pipe.execute()

    def trim(self, now: datetime | None = None) -> int:
        """Drop entries older than the retention; returns how many."""
        now = now or datetime.now(timezone.utc)
        oldest_kept_ms = int((now - self.retention).timestamp() * 1000)
        return int(self.client.xtrim(self.key, minid=f"{oldest_kept_ms}-0", approximate=False))

    def recent(self, count: int = 100) -> list[dict[str, str]]:
        """The newest entries first, each with its stream id and time."""
        entries = []
        replies: list[Any] = self.client.xrevrange(self.key, count=count) or []
        for entry_id, fields in replies:
            text_id = _text(entry_id)
            millis = int(text_id.split("-", 1)[0])
            at = datetime.fromtimestamp(millis / 1000, timezone.utc).isoformat()
            decoded = {_text(k): _text(v) for k, v in fields.items()}
            entries.append({"id": text_id, "at": at, **decoded})
        return entries


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def now_ms() -> int:
    return int(time.time() * 1000)
