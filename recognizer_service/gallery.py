"""The gallery: enrolled templates in Redis >= 8 vector sets, one gallery per key scope and epoch.

Redis keys (``p`` is ``redis.key_prefix``; ``{...}`` is a Redis Cluster hash tag)::

    p:gallery:{scope:epoch:shard}           vector set; element "{subject}/{template id}",
                                            attributes {"subject", "site", "enrolled_at"}, and
                                            "cohort_mean", "cohort_std" where the epoch's model
                                            normalizes scores (``rllfpr.scorenorm``)
    p:templates:{scope:epoch}:{subject}     sorted set of "{shard}/{element}" by enrolment time
    p:subjects:{scope:epoch}                set of enrolled subjects
    p:galleries                             set of "{scope}:{epoch}" that hold templates

The subject is part of the element name, so a search needs no attribute look-up. A template's
shard is a hash of its id, so shards fill evenly; the per-subject index finds every template of
a subject across shards for erasure and retention. A search asks every shard for its best
``count`` templates (one pipelined round trip for a whole micro-batch) and merges them; where
the epoch's scores are normalized, a second round trip reads the hits' cohort statistics.
Enrolling the same template id twice stores it once (QoS 1 redelivery is harmless).

One code path serves a single Redis and a Redis Cluster (``redis.cluster``): in a cluster each
shard set hashes to its own slot, so shards spread over the primaries; an epoch's per-subject
indexes and subject set share one slot, so they change together atomically. Nothing needs a
transaction across slots; instead writes are ordered so that erasure stays exact: a template
enters its subject's index before its vector set and leaves its vector set before the index,
and an enrollment that raced with an erasure of its subject removes what it added. So no
template is ever in a vector set without being in its subject's index.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Literal, TypeAlias

import numpy as np
import redis
from redis.commands.vectorset.commands import QuantizationOptions

from rllfpr.config import RedisSettings
from rllfpr.wire.topics import level

Quantization = Literal["Q8", "NOQUANT", "BIN"]
RedisClient: TypeAlias = "redis.Redis | redis.RedisCluster"

# Remove index members and, when the subject has none left, the subject (one slot, atomic).
_UNINDEX = """
redis.call('ZREM', KEYS[1], unpack(ARGV, 2))
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
"""


CohortStatistics: TypeAlias = tuple[float, float]  # a face's mean and std of cohort cosines


@dataclass(frozen=True)
class Hit:
    subject: str
    template_id: str
    score: float  # cosine similarity, -1..1 (its S-norm once decision.normalize re-scored it)
    statistics: CohortStatistics | None = None  # the template's, when the search asked for them


@dataclass(frozen=True)
class Template:
    subject: str
    template_id: str
    vector: np.ndarray
    site: str
    enrolled_at: datetime
    statistics: CohortStatistics | None = None  # with a normalizing epoch model


@dataclass(frozen=True)
class Enrollment:
    template_id: str
    subject: str
    evicted: int  # older templates of the subject removed by the per-subject limit


def connect_redis(settings: RedisSettings) -> RedisClient:
    """A client for the configured server or cluster: ACL credentials, TLS with ``rediss://``."""
    options: dict[str, Any] = {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 15,
    }
    if settings.username:
        options["username"] = settings.username
    if settings.password:
        options["password"] = settings.password.get_secret_value()
    if settings.url.startswith("rediss://"):
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        if settings.ca_file:
            options["ssl_ca_certs"] = str(settings.ca_file)
        if settings.cert_file:
            options["ssl_certfile"] = str(settings.cert_file)
        if settings.key_file:
            options["ssl_keyfile"] = str(settings.key_file)
    if settings.cluster:
        return redis.RedisCluster.from_url(settings.url, **options)
    return redis.Redis.from_url(settings.url, **options)


def _text(value: object) -> str:
    """A Redis reply item as text (redis-py returns bytes unless told to decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def shard_of(template_id: str, shards: int) -> int:
    return int.from_bytes(hashlib.sha1(template_id.encode()).digest()[:4], "big") % shards


def vsim_cosine(score: float) -> float:
    """VSIM reports (1 + cosine) / 2 for unit vectors; decisions work in cosine."""
    return 2.0 * score - 1.0


class Gallery:
    def __init__(
        self,
        client: RedisClient,
        prefix: str = "rllfpr",
        shards: int = 1,
        quantization: Quantization = "Q8",
        hnsw_m: int = 16,
        search_ef: int = 200,
        search_count: int = 20,
        max_templates_per_subject: int = 20,
        build_ef: int | None = None,
        cas: bool = False,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.shards = shards
        self.quantization = QuantizationOptions(quantization)
        self.hnsw_m = hnsw_m
        self.search_ef = search_ef
        self.search_count = search_count
        self.max_templates_per_subject = max_templates_per_subject
        self.build_ef = build_ef
        self.cas = cas
        self._unindex = client.register_script(_UNINDEX)

    # Key names -------------------------------------------------------------------------------

    def set_key(self, scope: str, epoch: int, shard: int) -> str:
        return f"{self.prefix}:gallery:{{{scope}:{epoch}:{shard}}}"

    def _subjects_key(self, scope: str, epoch: int) -> str:
        return f"{self.prefix}:subjects:{{{scope}:{epoch}}}"

    def _templates_key(self, scope: str, epoch: int, subject: str) -> str:
        return f"{self.prefix}:templates:{{{scope}:{epoch}}}:{subject}"

    @property
    def _galleries_key(self) -> str:
        return f"{self.prefix}:galleries"

    # Writing ---------------------------------------------------------------------------------

    def enroll(
        self,
        scope: str,
        epoch: int,
        subject: str,
        template_id: str,
        vector: np.ndarray,
        site: str,
        enrolled_at: datetime,
    ) -> Enrollment:
        """Add one template (idempotent per template id), then apply the per-subject limit."""
        template = Template(subject, template_id, vector, site, enrolled_at)
        return self.enroll_many(scope, epoch, [template])[0]

    def enroll_many(
        self, scope: str, epoch: int, templates: Sequence[Template]
    ) -> list[Enrollment]:
        """Add templates (idempotent per template id) in a few pipelined round trips, then apply
        the per-subject limit. Raises ``redis.RedisError``; enrolling the same templates again
        completes it.

        ``cas`` (``VADD ... CAS``: each template's neighbours are searched on Redis' threads)
        is for bulk loads into a Redis without an append-only file only: Redis 8.0.2 writes the
        CAS flag into the AOF and then fails an assertion replaying it at start-up
        (``aof.c:1653``), inside MULTI too; a server with such an AOF does not start again."""
        if not templates:
            return []
        placed = []
        for template in templates:
            subject = level(template.subject)
            shard = shard_of(template.template_id, self.shards)
            element = f"{subject}/{template.template_id}"
            placed.append((template, subject, shard, element, f"{shard}/{element}"))
        with self.client.pipeline(transaction=False) as pipe:  # 1. the indexes
            for template, subject, _shard, _element, member in placed:
                pipe.zadd(
                    self._templates_key(scope, epoch, subject),
                    {member: template.enrolled_at.timestamp()},
                )
            pipe.sadd(self._subjects_key(scope, epoch), *{item[1] for item in placed})
            pipe.sadd(self._galleries_key, f"{scope}:{epoch}")
            pipe.execute()
        with self.client.pipeline(transaction=False) as pipe:  # 2. the vector sets
            for template, subject, shard, element, _member in placed:
                pipe.execute_command(*self._vadd(scope, epoch, shard, element, template, subject))
            pipe.execute()
        with self.client.pipeline(transaction=False) as pipe:  # 3. erased meanwhile?
            for _template, subject, _shard, _element, member in placed:
                pipe.zscore(self._templates_key(scope, epoch, subject), member)
            still_indexed = pipe.execute()
        orphans = [item for item, score in zip(placed, still_indexed, strict=True) if score is None]
        if orphans:
            with self.client.pipeline(transaction=False) as pipe:
                for _template, _subject, shard, element, _member in orphans:
                    pipe.vset().vrem(self.set_key(scope, epoch, shard), element)
                pipe.execute()
        evicted = self._evict_beyond(scope, epoch, sorted({item[1] for item in placed}))
        return [
            Enrollment(template.template_id, subject, evicted.pop(subject, 0))
            for template, subject, *_ in placed
        ]

    def _vadd(
        self, scope: str, epoch: int, shard: int, element: str, template: Template, subject: str
    ) -> list[Any]:
        attributes: dict[str, Any] = {
            "subject": subject,
            "site": template.site,
            "enrolled_at": template.enrolled_at.isoformat(),
        }
        if template.statistics is not None:
            attributes["cohort_mean"], attributes["cohort_std"] = template.statistics
        arguments: list[Any] = [
            "VADD",
            self.set_key(scope, epoch, shard),
            "FP32",
            np.ascontiguousarray(template.vector, dtype=np.float32).tobytes(),
            element,
            *(["CAS"] if self.cas else []),
            self.quantization.value,
            "M",
            self.hnsw_m,
            "SETATTR",
            json.dumps(attributes),
        ]
        if self.build_ef is not None:
            arguments += ["EF", self.build_ef]
        return arguments

    def _evict_beyond(self, scope: str, epoch: int, subjects: Sequence[str]) -> dict[str, int]:
        """Apply the per-subject limit; returns how many templates each subject lost."""
        keep = self.max_templates_per_subject
        with self.client.pipeline(transaction=False) as pipe:
            for subject in subjects:
                pipe.zcard(self._templates_key(scope, epoch, subject))
            counts = pipe.execute()
        evicted = {}
        for subject, count in zip(subjects, counts, strict=True):
            if int(count) > keep:
                index = self._templates_key(scope, epoch, subject)
                oldest = self.client.zrange(index, 0, int(count) - keep - 1)
                evicted[subject] = self._remove(scope, epoch, subject, [_text(m) for m in oldest])
        return evicted

    def _remove(self, scope: str, epoch: int, subject: str, members: Sequence[str]) -> int:
        """Remove templates given as index members "{shard}/{element}": from their vector sets
        first, then from the index (and the subject from the subject set if none is left)."""
        if not members:
            return 0
        with self.client.pipeline(transaction=False) as pipe:
            for member in members:
                shard, element = member.split("/", 1)
                pipe.vset().vrem(self.set_key(scope, epoch, int(shard)), element)
            pipe.execute()
        keys = [self._templates_key(scope, epoch, subject), self._subjects_key(scope, epoch)]
        for start in range(0, len(members), 1000):  # Lua's unpack() has a stack limit
            self._unindex(keys=keys, args=[subject, *members[start : start + 1000]])
        return len(members)

    def erase(self, subject: str, scope: str | None = None) -> int:
        """Delete every template of ``subject`` in every epoch (of ``scope``); returns how many."""
        removed = 0
        for gallery_scope, epoch in self.galleries():
            if scope is not None and gallery_scope != scope:
                continue
            index = self._templates_key(gallery_scope, epoch, subject)
            members = [_text(member) for member in self.client.zrange(index, 0, -1)]
            removed += self._remove(gallery_scope, epoch, subject, members)
        return removed

    def drop(self, scope: str, epoch: int) -> int:
        """Delete a whole epoch's gallery (revocation); returns the templates it held."""
        subjects = [_text(s) for s in self.client.smembers(self._subjects_key(scope, epoch))]
        count = self.size(scope, epoch)
        keys = [self.set_key(scope, epoch, shard) for shard in range(self.shards)]
        keys += [self._templates_key(scope, epoch, subject) for subject in subjects]
        keys.append(self._subjects_key(scope, epoch))
        # UNLINK frees large sets in the background instead of stalling the server.
        self.client.unlink(*keys)
        self.client.srem(self._galleries_key, f"{scope}:{epoch}")
        return count

    def expire(self, before: datetime) -> int:
        """Retention: delete templates enrolled before ``before``; returns how many."""
        removed = 0
        for scope, epoch in self.galleries():
            for subject in self.subjects(scope, epoch):
                index = self._templates_key(scope, epoch, subject)
                old = self.client.zrangebyscore(index, "-inf", f"({before.timestamp()}")
                removed += self._remove(scope, epoch, subject, [_text(m) for m in old])
        return removed

    # Reading ---------------------------------------------------------------------------------

    def galleries(self) -> list[tuple[str, int]]:
        pairs = (_text(item).rsplit(":", 1) for item in self.client.smembers(self._galleries_key))
        return sorted((scope, int(epoch)) for scope, epoch in pairs)

    def subjects(self, scope: str, epoch: int) -> dict[str, int]:
        """Enrolled subjects of a gallery with their template counts."""
        names = sorted(_text(s) for s in self.client.smembers(self._subjects_key(scope, epoch)))
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcard(self._templates_key(scope, epoch, name))
            counts = pipe.execute()
        return {name: int(count) for name, count in zip(names, counts, strict=True) if count}

    def subject_count(self, scope: str, epoch: int) -> int:
        return int(self.client.scard(self._subjects_key(scope, epoch)))

    def find_subjects(
        self, scope: str, epoch: int, contains: str = "", limit: int = 200
    ) -> list[str]:
        """Up to ``limit`` subject names containing ``contains``, sorted (SSCAN: a large
        gallery is never read whole). Characters that cannot be in a subject id are ignored,
        so no glob pattern can be smuggled in."""
        pattern = "*" + re.sub(r"[^A-Za-z0-9_.-]", "", contains) + "*"
        found: list[str] = []
        for name in self.client.sscan_iter(
            self._subjects_key(scope, epoch), match=pattern, count=1000
        ):
            found.append(_text(name))
            if len(found) >= limit:
                break
        return sorted(found)

    def enrolment_spans(
        self, scope: str, epoch: int, subjects: Sequence[str]
    ) -> dict[str, tuple[int, datetime | None, datetime | None]]:
        """Per subject: templates, first and latest enrolment time (one round trip)."""
        with self.client.pipeline(transaction=False) as pipe:
            for subject in subjects:
                key = self._templates_key(scope, epoch, subject)
                pipe.zcard(key)
                pipe.zrange(key, 0, 0, withscores=True)
                pipe.zrange(key, -1, -1, withscores=True)
            replies = pipe.execute()
        spans = {}
        for index, subject in enumerate(subjects):
            count, first, last = replies[3 * index : 3 * index + 3]
            spans[subject] = (
                int(count),
                utc_from_timestamp(first[0][1]) if first else None,
                utc_from_timestamp(last[0][1]) if last else None,
            )
        return spans

    def size(self, scope: str, epoch: int) -> int:
        with self.client.pipeline(transaction=False) as pipe:
            for shard in range(self.shards):
                pipe.vset().vcard(self.set_key(scope, epoch, shard))
            return sum(int(count or 0) for count in pipe.execute())

    def search(
        self,
        scope: str,
        epoch: int,
        vectors: Iterable[np.ndarray],
        with_statistics: bool = False,
    ) -> list[list[Hit]]:
        """Top templates of each probe over all shards, best first (one round trip); with
        ``with_statistics``, each hit carries its template's cohort statistics (None where the
        template has none; a second round trip)."""
        probes = [np.ascontiguousarray(v, dtype=np.float32).tobytes() for v in vectors]
        with self.client.pipeline(transaction=False) as pipe:
            for probe in probes:
                for shard in range(self.shards):
                    # Raw VSIM: redis-py's vset().vsim() parser fails on a missing key's [].
                    pipe.execute_command(
                        "VSIM",
                        self.set_key(scope, epoch, shard),
                        "FP32",
                        probe,
                        "WITHSCORES",
                        "COUNT",
                        self.search_count,
                        "EF",
                        self.search_ef,
                    )
            replies = pipe.execute()
        results = []
        for index in range(len(probes)):
            shard_replies = replies[index * self.shards : (index + 1) * self.shards]
            results.append(self._merge(shard_replies))
        return self._with_statistics(scope, epoch, results) if with_statistics else results

    def _with_statistics(self, scope: str, epoch: int, results: list[list[Hit]]) -> list[list[Hit]]:
        elements = sorted({(hit.subject, hit.template_id) for hits in results for hit in hits})
        with self.client.pipeline(transaction=False) as pipe:
            for subject, template_id in elements:
                shard = shard_of(template_id, self.shards)
                pipe.execute_command(
                    "VGETATTR", self.set_key(scope, epoch, shard), f"{subject}/{template_id}"
                )
            found = dict(zip(elements, pipe.execute(), strict=True))
        return [
            [
                replace(hit, statistics=_statistics(found[hit.subject, hit.template_id]))
                for hit in hits
            ]
            for hits in results
        ]

    def _merge(self, shard_replies: Sequence[Any]) -> list[Hit]:
        hits = []
        for reply in shard_replies:
            pairs = reply.items() if isinstance(reply, dict) else []  # [] for a missing shard
            for element, score in pairs:
                subject, template_id = _text(element).split("/", 1)
                hits.append(Hit(subject, template_id, vsim_cosine(float(score))))
        hits.sort(key=lambda hit: -hit.score)
        return hits[: self.search_count]

    def attributes(self, scope: str, epoch: int, subject: str) -> list[dict[str, Any]]:
        """Attributes of every template of a subject (for listings and audits)."""
        index = self._templates_key(scope, epoch, subject)
        members = [_text(member) for member in self.client.zrange(index, 0, -1)]
        with self.client.pipeline(transaction=False) as pipe:
            for member in members:
                shard, element = member.split("/", 1)
                pipe.vset().vgetattr(self.set_key(scope, epoch, int(shard)), element)
            found = pipe.execute()
        return [
            {"template_id": member.split("/", 2)[2], **_as_dict(attributes)}
            for member, attributes in zip(members, found, strict=True)
        ]


def _statistics(attributes: Any) -> CohortStatistics | None:
    """A template's cohort statistics from its attributes; None when it has none (enrolled by
    a raw-cosine model) or they are unusable."""
    try:
        found = _as_dict(attributes)
    except ValueError:  # not JSON
        return None
    mean, std = found.get("cohort_mean"), found.get("cohort_std")
    if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)):
        return None
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        return None
    return float(mean), float(std)


def _as_dict(attributes: Any) -> dict[str, Any]:
    if isinstance(attributes, dict):
        return attributes
    if isinstance(attributes, (bytes, str)):
        parsed = json.loads(attributes)
        return parsed if isinstance(parsed, dict) else {}
    return {}


def utc_from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)
