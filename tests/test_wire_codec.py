from __future__ import annotations

import json
import struct
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from rllfpr.wire import codec, topics
from rllfpr.wire.messages import CropBox, FaceHeader, PixelFormat, RecognitionEvent
from tests.support.wire import make_header


def test_uint8_round_trip_is_exact() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (112, 112), dtype=np.uint8)
    header = make_header()
    message = codec.decode(codec.encode(header, pixels))
    assert message.header == header
    assert np.array_equal(message.pixels, pixels)


def test_float16_round_trip_is_exact() -> None:
    pixels = np.random.default_rng(1).standard_normal((64, 48)).astype(np.float16)
    header = make_header(height=64, width=48, pixel_format=PixelFormat.FLOAT16)
    message = codec.decode(codec.encode(header, pixels))
    assert message.pixels.dtype == np.float16
    assert np.array_equal(message.pixels, pixels)


def test_payload_is_compact() -> None:
    payload = codec.encode(make_header(), np.zeros((112, 112), np.uint8))
    assert len(payload) < 112 * 112 + 1024


def _payload(pixels: np.ndarray | None = None, header: FaceHeader | None = None) -> bytes:
    header = header or make_header()
    if pixels is None:
        pixels = np.zeros((header.height, header.width), np.uint8)
    return codec.encode(header, pixels)


def _with_header(payload: bytes, mutate: Any) -> bytes:
    """Rewrite the JSON header of a valid payload, bypassing the encoder's checks."""
    _, version, length = struct.unpack_from(">4sHI", payload)
    header = json.loads(payload[10 : 10 + length])
    mutate(header)
    raw = json.dumps(header).encode()
    return struct.pack(">4sHI", b"RLFM", version, len(raw)) + raw + payload[10 + length :]


def _set(key: str, value: Any) -> Any:
    return lambda header: header.__setitem__(key, value)


MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "truncated"),
    "wrong magic": (b"XXXX" + _payload()[4:], "magic"),
    "wrong schema_version in prefix": (
        _payload()[:4] + struct.pack(">H", 2) + _payload()[6:],
        "schema_version 2",
    ),
    "wrong schema_version in header": (
        _with_header(_payload(), _set("schema_version", 2)),
        "schema_version",
    ),
    "truncated header": (_payload()[:40], "truncated"),
    "truncated pixels": (_payload()[:-1], "pixel data"),
    "extra pixels": (_payload() + b"\0", "pixel data"),
    "three channels of data": (
        _payload() + bytes(2 * 112 * 112),
        "pixel data",
    ),
    "oversized image": (
        _with_header(_payload(), lambda h: h.update(height=4096, width=4096)),
        "less than or equal to 512",
    ),
    "unknown pixel format": (
        _with_header(_payload(), _set("pixel_format", "rgb24")),
        "pixel_format",
    ),
    "missing field": (_with_header(_payload(), lambda h: h.pop("key_epoch")), "key_epoch"),
    "smuggled extra field": (
        _with_header(_payload(), _set("landmarks", [[1, 2], [3, 4]])),
        "landmarks",
    ),
    "naive timestamp": (
        _with_header(_payload(), _set("captured_at", "2026-11-26T12:00:00")),
        "timezone",
    ),
    "header is not JSON": (
        struct.pack(">4sHI", b"RLFM", 1, 5) + b"{oops" + bytes(112 * 112),
        "invalid face header",
    ),
    "absurd header length": (struct.pack(">4sHI", b"RLFM", 1, 10**9), "exceeds"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_payloads_are_rejected_with_a_reason(case: str) -> None:
    payload, reason = MALFORMED[case]
    with pytest.raises(codec.CodecError, match=reason):
        codec.decode(payload)


def test_non_finite_float16_is_rejected() -> None:
    header = make_header(height=4, width=4, pixel_format=PixelFormat.FLOAT16)
    pixels = np.zeros((4, 4), np.float16)
    good = codec.encode(header, pixels)
    bad = good[:-2] + np.array([np.inf], "<f2").tobytes()
    with pytest.raises(codec.CodecError, match="NaN or infinity"):
        codec.decode(bad)
    pixels[0, 0] = np.nan
    with pytest.raises(codec.CodecError, match="NaN or infinity"):
        codec.encode(header, pixels)


@pytest.mark.parametrize(
    ("pixels", "reason"),
    [
        (np.zeros((112, 112, 3), np.uint8), "shape"),
        (np.zeros((112, 111), np.uint8), "shape"),
        (np.zeros((112, 112), np.float32), "dtype"),
    ],
)
def test_encoder_refuses_pixels_that_disagree_with_header(pixels: np.ndarray, reason: str) -> None:
    with pytest.raises(codec.CodecError, match=reason):
        codec.encode(make_header(), pixels)


def test_enrollment_needs_subject_and_recognition_forbids_it() -> None:
    with pytest.raises(ValidationError, match="subject"):
        make_header(purpose="enroll")
    with pytest.raises(ValidationError, match="subject"):
        make_header(subject="alice")
    assert make_header(purpose="enroll", subject="alice").subject == "alice"


def test_crop_box_must_lie_inside_frame() -> None:
    with pytest.raises(ValidationError, match="outside the frame"):
        CropBox(x=600, y=0, width=80, height=80, frame_width=640, frame_height=480)


def test_events_have_unique_ids_and_consistent_decisions() -> None:
    common: dict[str, Any] = {
        "score": 0.2,
        "margin": 0.0,
        "site": "lobby",
        "camera": "cam-0",
        "agent": "agent-1",
        "track_id": 1,
        "message_ids": [make_header().message_id],
        "captured_at": datetime.now(timezone.utc),
        "decision_latency_ms": 12.0,
        "key_epoch": 3,
    }
    first = RecognitionEvent(decision="unknown", subject=None, **common)
    second = RecognitionEvent(decision="unknown", subject=None, **common)
    assert first.event_id != second.event_id
    with pytest.raises(ValidationError, match="subject"):
        RecognitionEvent(decision="match", subject=None, **common)


def test_topic_levels_reject_wildcards_and_separators() -> None:
    assert topics.faces("lobby", "cam-0") == "rllfpr/v1/faces/lobby/cam-0"
    for bad in ["a/b", "+", "#", "", "$SYS", "x" * 65]:
        with pytest.raises(topics.TopicError):
            topics.faces(bad, "cam")
    face_topic = topics.parse("rllfpr/v1/faces/lobby/cam-0")
    assert (face_topic.kind, face_topic.site, face_topic.camera) == ("faces", "lobby", "cam-0")
    assert topics.shared(topics.ALL_FACES) == "$share/recognizers/rllfpr/v1/faces/#"


def test_parse_reads_back_every_topic_the_contract_builds() -> None:
    assert topics.parse(topics.faces("lobby", "cam-0")) == topics.Topic(
        "faces", site="lobby", camera="cam-0"
    )
    assert topics.parse(topics.enroll("lobby", "alice")) == topics.Topic(
        "enroll", site="lobby", subject="alice"
    )
    assert topics.parse(topics.events("lobby", "cam-0")) == topics.Topic(
        "events", site="lobby", camera="cam-0"
    )
    assert topics.parse(topics.key_bundle("fleet", 3)) == topics.Topic(
        "key_bundle", scope="fleet", epoch=3
    )
    assert topics.parse(topics.key_announcements("fleet", 3)) == topics.Topic(
        "key_announcement", scope="fleet", epoch=3
    )
    assert topics.parse(topics.key_revocation("site-2", 0)) == topics.Topic(
        "key_revocation", scope="site-2", epoch=0
    )
    assert topics.parse(topics.agent_status("agent-7")) == topics.Topic(
        "agent_status", agent="agent-7"
    )


@pytest.mark.parametrize(
    "topic",
    [
        "rllfpr/v2/faces/lobby/cam-0",  # another layout version
        "rllfpr/v1/faces/lobby",  # a level short
        "rllfpr/v1/faces/lobby/cam-0/extra",
        "rllfpr/v1/faces/lobby/+",  # a wildcard is no level
        "rllfpr/v1/keys/fleet/announcements",  # the epoch is part of the topic
        "rllfpr/v1/keys/fleet/bundles/x",
        "rllfpr/v1/keys/fleet/bundles/-1",
        "rllfpr/v1/keys/fleet/bundles/01",  # not how the contract writes epoch 1
        "rllfpr/v1/keys/fleet/other/1",
        "rllfpr/v1/agents/agent-7",
        "$share/recognizers/rllfpr/v1/faces/lobby/cam-0",
        "",
    ],
)
def test_parse_refuses_what_the_contract_does_not_build(topic: str) -> None:
    with pytest.raises(topics.TopicError):
        topics.parse(topic)
