"""Pydantic models of every payload on the wire, with their schema versions.

Versioning policy (also in docs/protocol.md):
- Each payload type carries an integer ``schema_version``. Any change to a payload's fields,
  their meaning or the binary layout bumps it; there are no "compatible" silent changes,
  because models reject unknown fields (an agent must not be able to smuggle extra data
  next to a scrambled face, and a consumer must never guess).
- Producers emit only ``CURRENT``; consumers accept every version in ``SUPPORTED`` (the current
  one and, during a fleet rollout, the previous one), and reject others with a clear error.
- The topic layout has its own version (``rllfpr/v1/...``), bumped only if topics change.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from rllfpr.wire.topics import TopicLevel

FACE_SCHEMA_VERSION: Final = 1
EVENT_SCHEMA_VERSION: Final = 1
KEY_SCHEMA_VERSION: Final = 1
STATUS_SCHEMA_VERSION: Final = 2

Epoch = Annotated[int, Field(ge=0, description="Key epoch: increases by one at each rotation.")]
MAX_FACE_SIDE = 512


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class WireModel(BaseModel):
    """Base of wire payloads: strict about unknown fields, immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PixelFormat(str, Enum):
    """The one-channel encodings of a scrambled face (see ``rllfpr.wire.codec``)."""

    UINT8 = "uint8"
    FLOAT16 = "float16"

    @property
    def itemsize(self) -> int:
        return 1 if self is PixelFormat.UINT8 else 2


class CropBox(WireModel):
    """Where the face was in the frame, rounded to whole pixels. Never landmarks."""

    x: int = Field(ge=0, description="Left edge in frame pixels.")
    y: int = Field(ge=0, description="Top edge in frame pixels.")
    width: int = Field(gt=0, description="Box width in frame pixels.")
    height: int = Field(gt=0, description="Box height in frame pixels.")
    frame_width: int = Field(gt=0, description="Width of the frame the box refers to.")
    frame_height: int = Field(gt=0, description="Height of the frame the box refers to.")

    @model_validator(mode="after")
    def _inside_frame(self) -> CropBox:
        if self.x + self.width > self.frame_width or self.y + self.height > self.frame_height:
            raise ValueError("crop box extends outside the frame")
        return self


class FaceHeader(WireModel):
    """Metadata of one scrambled face; the pixels follow it in the binary face message."""

    schema_version: Literal[1] = Field(
        FACE_SCHEMA_VERSION, description="Version of the face message layout."
    )
    message_id: uuid.UUID = Field(default_factory=new_id, description="Unique per message.")
    purpose: Literal["recognize", "enroll"] = Field(
        "recognize", description="Recognize this face, or enroll it as a template of `subject`."
    )
    subject: TopicLevel | None = Field(
        None, description="Subject id being enrolled; only with purpose `enroll`."
    )
    agent: TopicLevel = Field(description="Id of the edge agent that produced the face.")
    site: TopicLevel = Field(description="Site of the camera.")
    camera: TopicLevel = Field(description="Camera within the site.")
    captured_at: AwareDatetime = Field(description="Capture time of the frame (UTC).")
    key_epoch: Epoch
    key_scope: TopicLevel = Field("fleet", description="Scope of the key: `fleet` or a site.")
    track_id: int = Field(ge=0, description="Tracker id; faces of one person share it.")
    detection_score: float = Field(ge=0.0, le=1.0, description="Face detector confidence.")
    quality: float = Field(ge=0.0, description="Sharpness score used to pick the best faces.")
    crop: CropBox
    height: int = Field(gt=0, le=MAX_FACE_SIDE, description="Scrambled image height, pixels.")
    width: int = Field(gt=0, le=MAX_FACE_SIDE, description="Scrambled image width, pixels.")
    pixel_format: PixelFormat = Field(description="Encoding of the one-channel pixels.")

    @model_validator(mode="after")
    def _subject_only_for_enrollment(self) -> FaceHeader:
        if (self.purpose == "enroll") != (self.subject is not None):
            raise ValueError("`subject` is required for enrollment and forbidden otherwise")
        return self

    @property
    def pixel_bytes(self) -> int:
        return self.height * self.width * self.pixel_format.itemsize


class Candidate(WireModel):
    subject: str = Field(description="Enrolled subject id.")
    score: float = Field(description="Score of the probe against this subject (`score_kind`).")


class RecognitionEvent(WireModel):
    """Published by the recognizer on ``rllfpr/v1/events/{site}/{camera}``."""

    schema_version: Literal[1] = Field(EVENT_SCHEMA_VERSION)
    event_id: uuid.UUID = Field(
        default_factory=new_id, description="Unique per event: consumers de-duplicate on it."
    )
    decision: Literal["match", "unknown"] = Field(
        description="`match` when the best subject clears the calibrated threshold and margin."
    )
    subject: str | None = Field(description="Matched subject id; null when unknown.")
    score: float = Field(description="Score of the best candidate, in `score_kind` units.")
    margin: float = Field(description="Best score minus runner-up score (subject level).")
    score_kind: Literal["cosine", "s_norm"] = Field(
        "cosine",
        description="Unit of `score`, `margin` and the candidates' scores: `cosine` (-1..1), or "
        "`s_norm` where the epoch's model normalizes scores against its cohort of strangers "
        "(standard deviations: a stranger scores about 0, a mate well above).",
    )
    candidates: list[Candidate] = Field(default_factory=list, description="Top-k, best first.")
    site: TopicLevel
    camera: TopicLevel
    agent: TopicLevel
    track_id: int = Field(ge=0)
    message_ids: list[uuid.UUID] = Field(
        min_length=1, description="Face messages this decision is based on."
    )
    captured_at: AwareDatetime = Field(description="Capture time of the latest face used.")
    decided_at: AwareDatetime = Field(default_factory=utc_now)
    decision_latency_ms: float = Field(ge=0, description="From capture to decision.")
    key_epoch: Epoch

    @model_validator(mode="after")
    def _subject_matches_decision(self) -> RecognitionEvent:
        if (self.decision == "match") != (self.subject is not None):
            raise ValueError("`subject` is set exactly when decision is `match`")
        return self


class KeyState(str, Enum):
    STAGED = "staged"
    ACTIVE = "active"
    REVOKED = "revoked"


class KeyAnnouncement(WireModel):
    """A key epoch changes state. Travels inside a ``SignedEnvelope`` (retained)."""

    schema_version: Literal[1] = Field(KEY_SCHEMA_VERSION)
    announcement_id: uuid.UUID = Field(default_factory=new_id)
    scope: TopicLevel
    epoch: Epoch
    state: KeyState
    bundle_id: uuid.UUID | None = Field(
        None, description="Bundle of this epoch (required when staged or active)."
    )
    bundle_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the bundle bytes."
    )
    issued_at: AwareDatetime = Field(default_factory=utc_now)
    grace_s: int = Field(
        0, ge=0, description="On activation: how long recognizers still accept the previous epoch."
    )

    @model_validator(mode="after")
    def _bundle_reference(self) -> KeyAnnouncement:
        if self.state is not KeyState.REVOKED and (
            self.bundle_id is None or not self.bundle_sha256
        ):
            raise ValueError("staged and active announcements must name their bundle")
        return self


class Revocation(WireModel):
    """An epoch is revoked: agents delete its SN, recognizers its gallery and its traffic."""

    schema_version: Literal[1] = Field(KEY_SCHEMA_VERSION)
    revocation_id: uuid.UUID = Field(default_factory=new_id)
    scope: TopicLevel
    epoch: Epoch
    reason: str = Field("rotation", max_length=200)
    issued_at: AwareDatetime = Field(default_factory=utc_now)


class AgentStatus(WireModel):
    """Retained on ``rllfpr/v1/agents/{agent}/status``, republished every
    ``agent.status_interval_s`` with fresh figures; the last will says ``offline``. Version 2
    added the figures (``fps``, ``faces_published``, ``spool_messages``); version 1 is still
    accepted (the figures are then null)."""

    schema_version: Literal[1, 2] = Field(STATUS_SCHEMA_VERSION)
    event_id: uuid.UUID = Field(default_factory=new_id)
    agent: TopicLevel
    site: TopicLevel
    state: Literal["online", "degraded", "offline"]
    key_epoch: Epoch | None = Field(None, description="Active key epoch; null without a key.")
    cameras: list[TopicLevel] = Field(default_factory=list)
    version: str = Field(description="RLLFPR version of the agent.")
    reason: str | None = Field(None, max_length=200, description="Why degraded or offline.")
    fps: float | None = Field(
        None, ge=0, description="Frames read per second since the previous status."
    )
    faces_published: int | None = Field(
        None, ge=0, description="Face messages the broker acknowledged since the agent started."
    )
    spool_messages: int | None = Field(
        None, ge=0, description="Face messages waiting in the agent's spool."
    )
    at: AwareDatetime = Field(default_factory=utc_now, description="When this status was made.")
