"""A valid face header to build wire messages from, with any field changed."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rllfpr.wire.messages import CropBox, FaceHeader, PixelFormat


def make_header(**changes: Any) -> FaceHeader:
    fields: dict[str, Any] = {
        "agent": "agent-1",
        "site": "lobby",
        "camera": "cam-0",
        "captured_at": datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc),
        "key_epoch": 3,
        "track_id": 7,
        "detection_score": 0.99,
        "quality": 120.5,
        "crop": CropBox(x=10, y=20, width=80, height=90, frame_width=640, frame_height=480),
        "height": 112,
        "width": 112,
        "pixel_format": PixelFormat.UINT8,
    }
    fields.update(changes)
    return FaceHeader(**fields)
