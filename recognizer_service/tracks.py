"""Per-track consensus rounds kept in Redis, shared by every replica, with an event outbox.

Faces of one track may reach different replicas of a shared subscription, so a track's state
lives in Redis, changed only by the two scripts below (atomic on the server):

- ``observe`` records one face's observation (idempotent per message id) in the track's open
  round. The face that completes a round (``consensus_faces``) closes it and *claims* it: its
  replica publishes the event. The round's first face also schedules a deadline.
- ``sweep`` claims rounds whose deadline passed: open rounds that timed out (they are closed
  now), and closed rounds whose claimant did not confirm within the lease (it crashed).
- ``finish`` marks a round published and drops it from the outbox.

Redis keys (``p`` is the key prefix; a track is ``{site}:{camera}:{agent}:{track id}``)::

    p:{tracks}:track:{track}            hash: inc (random incarnation), round (open round
                                        number), m:{message id} -> round, d:{round} -> published
    p:{tracks}:track:{track}:r:{round}  list of the round's observations (JSON)
    p:{tracks}:rounds                   sorted set "{track key}|{round}" -> deadline (ms): the
                                        outbox

``{tracks}`` is a Redis Cluster hash tag: the scripts change a track and the outbox together,
so all track state lives in one slot (one primary of a cluster; it is small and short-lived).

A round's event id is ``uuid5(track key, incarnation, round)``: a republished round (lease
expired, or a crash between PUBACK and ``finish``) carries the same event id, which
subscribers de-duplicate on. A redelivered face of a published round yields no new event.
Faces are acknowledged once their observation is stored, so Redis persistence (AOF) bounds what
a Redis crash can lose. Track state expires ``track_idle_s`` after its last face.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

import redis
from redis.commands.core import Script

from recognizer_service.decision import Observation
from recognizer_service.gallery import RedisClient

EVENT_NAMESPACE = uuid.UUID("5b2f8f0e-3c1d-4f57-9a0e-7a52f1f3c6d1")
TRACKS_TAG = "{tracks}"

# Deadlines use the Redis server's clock, so replicas' clocks do not matter.
_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

_OBSERVE = (
    _NOW_MS
    + """
local track, due = KEYS[1], KEYS[2]
local mid, obs = ARGV[1], ARGV[2]
local need, timeout = tonumber(ARGV[3]), tonumber(ARGV[4])
local idle, lease, incarnation = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
redis.call('HSETNX', track, 'inc', incarnation)
local seen = redis.call('HGET', track, 'm:' .. mid)
local round
local claimed = 0
if seen then
  round = tonumber(seen)
else
  round = tonumber(redis.call('HGET', track, 'round') or '0')
  redis.call('HSET', track, 'm:' .. mid, round)
  local list = track .. ':r:' .. round
  local n = redis.call('RPUSH', list, obs)
  redis.call('EXPIRE', list, idle)
  if n == 1 then redis.call('ZADD', due, now + timeout, track .. '|' .. round) end
  if n >= need then
    redis.call('HSET', track, 'round', round + 1)
    redis.call('ZADD', due, now + lease, track .. '|' .. round)
    claimed = 1
  end
end
redis.call('EXPIRE', track, idle)
local published = redis.call('HEXISTS', track, 'd:' .. round)
local current = tonumber(redis.call('HGET', track, 'round') or '0')
return {round, claimed, published, current}
"""
)

_SWEEP = (
    _NOW_MS
    + """
local due = KEYS[1]
local lease, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local members = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)
local claimed = {}
for _, member in ipairs(members) do
  local sep = string.find(member, '|', 1, true)
  local track = string.sub(member, 1, sep - 1)
  local round = tonumber(string.sub(member, sep + 1))
  if redis.call('EXISTS', track) == 0 or redis.call('HEXISTS', track, 'd:' .. round) == 1 then
    redis.call('ZREM', due, member)
  else
    if tonumber(redis.call('HGET', track, 'round') or '0') == round then
      redis.call('HSET', track, 'round', round + 1)
    end
    redis.call('ZADD', due, now + lease, member)
    table.insert(claimed, member)
  end
end
return claimed
"""
)


class ObserveStatus(IntEnum):
    OPEN = 0  # the round is still collecting faces
    CLAIMED = 1  # this call closed the round: publish its event
    PENDING = 2  # closed by someone else, event not confirmed yet (the sweep covers it)
    PUBLISHED = 3  # redelivered face of a round already published


@dataclass(frozen=True)
class TrackId:
    site: str
    camera: str
    agent: str
    track_id: int

    def key(self, prefix: str) -> str:
        return f"{prefix}:{TRACKS_TAG}:track:{self.site}:{self.camera}:{self.agent}:{self.track_id}"

    @classmethod
    def from_key(cls, key: str) -> TrackId:
        site, camera, agent, track_id = key.rsplit(":", 4)[1:]
        return cls(site, camera, agent, int(track_id))


@dataclass(frozen=True)
class FaceObservation:
    """One face's contribution as stored in its round."""

    message_id: str
    captured_at: datetime
    key_scope: str
    key_epoch: int
    observation: Observation

    def to_json(self) -> str:
        return json.dumps(
            {
                "m": self.message_id,
                "c": self.captured_at.isoformat(),
                "k": self.key_scope,
                "e": self.key_epoch,
                "s": self.observation.scores,
            }
        )

    @classmethod
    def from_json(cls, text: bytes | str) -> FaceObservation:
        data = json.loads(text)
        return cls(
            data["m"],
            datetime.fromisoformat(data["c"]),
            str(data["k"]),
            int(data["e"]),
            Observation({str(k): float(v) for k, v in data["s"].items()}),
        )


@dataclass(frozen=True)
class RoundRef:
    track_key: str
    number: int


@dataclass(frozen=True)
class Round:
    ref: RoundRef
    track: TrackId
    event_id: uuid.UUID
    faces: list[FaceObservation]


def _status(claimed: int, published: int, closed: bool) -> ObserveStatus:
    if claimed:
        return ObserveStatus.CLAIMED
    if published:
        return ObserveStatus.PUBLISHED
    return ObserveStatus.PENDING if closed else ObserveStatus.OPEN


class Tracks:
    def __init__(
        self,
        client: RedisClient,
        prefix: str = "rllfpr",
        consensus_faces: int = 3,
        consensus_timeout_ms: float = 1500.0,
        lease_s: float = 30.0,
        idle_s: int = 600,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.consensus_faces = consensus_faces
        self.timeout_ms = int(consensus_timeout_ms)
        self.lease_ms = int(lease_s * 1000)
        self.idle_s = idle_s
        self._observe = client.register_script(_OBSERVE)
        self._sweep = client.register_script(_SWEEP)

    @property
    def outbox_key(self) -> str:
        return f"{self.prefix}:{TRACKS_TAG}:rounds"

    def observe_many(
        self, faces: list[tuple[TrackId, FaceObservation]]
    ) -> list[tuple[ObserveStatus, RoundRef]]:
        """Record observations (one round trip); returns each face's round and status."""
        calls = [
            (
                [track.key(self.prefix), self.outbox_key],
                [
                    face.message_id,
                    face.to_json(),
                    self.consensus_faces,
                    self.timeout_ms,
                    self.idle_s,
                    self.lease_ms,
                    uuid.uuid4().hex,
                ],
            )
            for track, face in faces
        ]
        replies = self._pipelined(self._observe, calls)
        return [
            (_status(claimed, published, int(number) < int(current)), RoundRef(key, int(number)))
            for key, (number, claimed, published, current) in zip(
                (track.key(self.prefix) for track, _ in faces), replies, strict=True
            )
        ]

    def _pipelined(self, script: Script, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per (keys, args) in one pipeline (``EVALSHA``: redis-py's cluster
        pipeline refuses its script objects). A server that lost its script cache (a restart,
        a promoted replica) gets the script again, and the pipeline runs again: the script is
        idempotent per message id."""
        for attempt in range(2):
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    for keys, args in calls:
                        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                    return list(pipe.execute())
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                self.client.script_load(script.script)
        raise AssertionError("unreachable")

    def sweep(self, limit: int = 100) -> list[RoundRef]:
        """Claim rounds past their deadline (timed out, or an expired claimant's lease)."""
        members: list[Any] = self._sweep(keys=[self.outbox_key], args=[self.lease_ms, limit])
        refs = []
        for member in members:
            text = member.decode() if isinstance(member, bytes) else str(member)
            track_key, number = text.rsplit("|", 1)
            refs.append(RoundRef(track_key, int(number)))
        return refs

    def load(self, refs: list[RoundRef]) -> list[Round]:
        """The observations of claimed rounds, with their deterministic event ids."""
        with self.client.pipeline(transaction=False) as pipe:
            for ref in refs:
                pipe.hget(ref.track_key, "inc")
                pipe.lrange(f"{ref.track_key}:r:{ref.number}", 0, -1)
            replies = pipe.execute()
        rounds = []
        for index, ref in enumerate(refs):
            incarnation, items = replies[2 * index], replies[2 * index + 1]
            if not items:  # expired meanwhile: nothing left to decide on
                continue
            incarnation_text = incarnation.decode() if incarnation else ""
            event_id = uuid.uuid5(
                EVENT_NAMESPACE, f"{ref.track_key}|{incarnation_text}|{ref.number}"
            )
            faces = [FaceObservation.from_json(item) for item in items]
            rounds.append(Round(ref, TrackId.from_key(ref.track_key), event_id, faces))
        return rounds

    def finish(self, refs: list[RoundRef]) -> None:
        """Mark rounds published: redelivered faces of them produce no new event."""
        with self.client.pipeline(transaction=False) as pipe:
            for ref in refs:
                pipe.hset(ref.track_key, f"d:{ref.number}", 1)
                pipe.zrem(self.outbox_key, f"{ref.track_key}|{ref.number}")
                pipe.delete(f"{ref.track_key}:r:{ref.number}")
            pipe.execute()
