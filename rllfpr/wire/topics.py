"""The MQTT topic contract: every topic RLLFPR publishes or subscribes to, in one place.

| topic                                            | payload                     | retained |
|--------------------------------------------------|-----------------------------|----------|
| ``rllfpr/v1/faces/{site}/{camera}``              | face message (binary codec) | no       |
| ``rllfpr/v1/enroll/{site}/{subject}``            | face message (binary codec) | no       |
| ``rllfpr/v1/events/{site}/{camera}``             | ``RecognitionEvent`` (JSON) | no       |
| ``rllfpr/v1/keys/{scope}/bundles/{epoch}``       | key bundle (binary, signed) | yes      |
| ``rllfpr/v1/keys/{scope}/announcements/{epoch}`` | signed ``KeyAnnouncement``  | yes      |
| ``rllfpr/v1/keys/{scope}/revocations/{epoch}``   | signed ``Revocation``       | yes      |
| ``rllfpr/v1/agents/{agent}/status``              | ``AgentStatus``, last will  | yes      |

Everything is published with QoS 1.
``v1`` is the topic-layout version; it changes only when this table changes incompatibly.
Payload versions are carried inside each payload (``schema_version``, see ``messages``).
Recognizers read faces through the shared subscription ``$share/{group}/rllfpr/v1/faces/#``.

Building a topic validates each level (``level``); reading one goes through ``parse``, the only
topic parser: it returns a ``Topic`` (its kind and levels) or raises ``TopicError``.
``TopicLevel`` and ``ScopeName`` are the pydantic types of a level wherever one is configured
or carried in a payload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import StringConstraints

ROOT = "rllfpr/v1"
SHARED_GROUP = "recognizers"

# One MQTT topic level: no wildcards, no separators, no '$' prefix, no NUL.
LEVEL_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# A key scope is also a directory name (model store, key files): no dots, so never '..'.
SCOPE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_LEVEL = re.compile(LEVEL_PATTERN)
TopicLevel = Annotated[str, StringConstraints(pattern=LEVEL_PATTERN)]
ScopeName = Annotated[str, StringConstraints(pattern=SCOPE_PATTERN)]


class TopicError(ValueError):
    """A topic or one of its levels is malformed."""


def level(value: str | int) -> str:
    """Validate one topic level (site, camera, agent, scope, subject or epoch)."""
    text = str(value)
    if not _LEVEL.match(text):
        raise TopicError(
            f"invalid topic level {text!r}: use 1-64 characters from A-Z a-z 0-9 _ . -"
        )
    return text


def faces(site: str, camera: str) -> str:
    return f"{ROOT}/faces/{level(site)}/{level(camera)}"


def enroll(site: str, subject: str) -> str:
    return f"{ROOT}/enroll/{level(site)}/{level(subject)}"


def events(site: str, camera: str) -> str:
    return f"{ROOT}/events/{level(site)}/{level(camera)}"


def key_bundle(scope: str, epoch: int) -> str:
    return f"{ROOT}/keys/{level(scope)}/bundles/{level(epoch)}"


def key_announcements(scope: str, epoch: int) -> str:
    """One retained announcement per epoch: a late subscriber learns every live epoch's state."""
    return f"{ROOT}/keys/{level(scope)}/announcements/{level(epoch)}"


def key_revocation(scope: str, epoch: int) -> str:
    return f"{ROOT}/keys/{level(scope)}/revocations/{level(epoch)}"


def agent_status(agent: str) -> str:
    return f"{ROOT}/agents/{level(agent)}/status"


# Subscription filters.
ALL_FACES = f"{ROOT}/faces/#"
ALL_ENROLLMENTS = f"{ROOT}/enroll/#"
ALL_EVENTS = f"{ROOT}/events/#"
ALL_AGENT_STATUS = f"{ROOT}/agents/+/status"


def keys_of_scope(scope: str) -> str:
    return f"{ROOT}/keys/{level(scope)}/#"


def shared(topic_filter: str, group: str = SHARED_GROUP) -> str:
    """A shared subscription: the broker hands each message to one member of ``group``."""
    return f"$share/{level(group)}/{topic_filter}"


Kind = Literal[
    "faces", "enroll", "events", "key_bundle", "key_announcement", "key_revocation", "agent_status"
]
_KEY_KINDS: dict[str, Kind] = {
    "bundles": "key_bundle",
    "announcements": "key_announcement",
    "revocations": "key_revocation",
}


@dataclass(frozen=True)
class Topic:
    """A parsed topic: its kind and the levels that kind has (the others are None)."""

    kind: Kind
    site: str | None = None
    camera: str | None = None
    subject: str | None = None
    scope: str | None = None
    epoch: int | None = None
    agent: str | None = None


def _epoch(text: str, topic: str) -> int:
    if not text.isascii() or not text.isdigit() or text != str(int(text)):
        raise TopicError(f"epoch {text!r} of {topic!r} is not a non-negative integer")
    return int(text)


def parse(topic: str) -> Topic:
    """The kind and levels of one of the contract's topics; ``TopicError`` for anything else
    (another root, an unknown layout, an invalid level, a non-numeric epoch)."""
    prefix = ROOT + "/"
    if not topic.startswith(prefix):
        raise TopicError(f"not an {ROOT} topic: {topic!r}")
    parts = topic[len(prefix) :].split("/")
    match parts:
        case ["faces", site, camera]:
            return Topic("faces", site=level(site), camera=level(camera))
        case ["enroll", site, subject]:
            return Topic("enroll", site=level(site), subject=level(subject))
        case ["events", site, camera]:
            return Topic("events", site=level(site), camera=level(camera))
        case ["keys", scope, ("bundles" | "announcements" | "revocations") as what, epoch]:
            return Topic(_KEY_KINDS[what], scope=level(scope), epoch=_epoch(epoch, topic))
        case ["agents", agent, "status"]:
            return Topic("agent_status", agent=level(agent))
    raise TopicError(f"not a topic of the contract: {topic!r}")
