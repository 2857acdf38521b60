"""The MQTT topic contract: every topic RLLFPR publishes or subscribes to, in one place.

| topic                                          | payload                       | retained |
|------------------------------------------------|-------------------------------|----------|
| ``rllfpr/v1/faces/{site}/{camera}``            | face message (binary codec)   | no       |
| ``rllfpr/v1/enroll/{site}/{subject}``          | face message (binary codec)   | no       |
| ``rllfpr/v1/events/{site}/{camera}``           | ``RecognitionEvent`` (JSON)   | no       |
| ``rllfpr/v1/keys/{scope}/bundles/{epoch}``     | key bundle (binary, signed)   | yes      |
| ``rllfpr/v1/keys/{scope}/announcements``       | signed ``KeyAnnouncement``    | yes      |
| ``rllfpr/v1/keys/{scope}/revocations/{epoch}`` | signed ``Revocation``         | yes      |
| ``rllfpr/v1/agents/{agent}/status``            | ``AgentStatus``, last will    | yes      |

Everything is published with QoS 1.
``v1`` is the topic-layout version; it changes only when this table changes incompatibly.
Payload versions are carried inside each payload (``schema_version``, see ``messages``).
Recognizers read faces through the shared subscription ``$share/{group}/rllfpr/v1/faces/#``.
"""

from __future__ import annotations

import re

ROOT = "rllfpr/v1"
SHARED_GROUP = "recognizers"

# One MQTT topic level: no wildcards, no separators, no '$' prefix, no NUL.
_LEVEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


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


def parse_face_topic(topic: str) -> tuple[str, str]:
    """Return (site, camera) of a faces topic; raise ``TopicError`` otherwise."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{ROOT}/faces":
        raise TopicError(f"not a faces topic: {topic!r}")
    return level(parts[3]), level(parts[4])
