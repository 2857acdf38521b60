"""The scrambled faces behind recent decisions, kept briefly in Redis for the console.

The Live page shows each event's faces: the scrambled pixels the recognizer decided on, which
is the only face the server ever has. Any replica may have received a face and any replica's
console may show the event, so the face messages live in Redis, one key per message, for
``console.face_retention_s``::

    p:face:{message id}    the face message as received (binary codec), expiring

Only recognition faces are kept (enrollment faces are templates already); nothing is kept
when the retention is 0. Keeping them is best effort: a Redis error here (a cluster failing
over, memory full) is logged and the batch goes on, so the console can never cost a decision.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis

from recognizer_service.gallery import RedisClient

log = logging.getLogger(__name__)


class RecentFaces:
    def __init__(self, client: RedisClient, prefix: str, retention_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.retention_s = retention_s

    def _key(self, message_id: str) -> str:
        return f"{self.prefix}:face:{message_id}"

    def keep(self, faces: Sequence[tuple[str, bytes]]) -> bool:
        """Store (message id, face message) pairs in one round trip; False when Redis
        refused (logged: the Live page then shows those faces as expired)."""
        if not faces or self.retention_s <= 0:
            return True
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for message_id, payload in faces:
                    pipe.set(self._key(message_id), payload, ex=self.retention_s)
                pipe.execute()
        except redis.RedisError as error:
            log.warning("%d scrambled faces not kept for the console: %s", len(faces), error)
            return False
        return True

    def get(self, message_id: str) -> bytes | None:
        payload = self.client.get(self._key(message_id))
        return bytes(payload) if payload is not None else None  # type: ignore[arg-type]
