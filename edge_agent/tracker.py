"""A light IoU tracker that bounds how many faces each person in view yields.

Detections of successive detection passes are linked greedily by box overlap (IoU). A track
ends when its face is missing from ``max_missed`` passes in a row, or at a new scene. Each
track publishes its first usable face at once (low latency) and afterwards only a face
sharper than every face it published before by ``improvement_ratio``, at most
``max_messages`` faces in all: a person standing in view for minutes costs a handful of
messages, not one per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class Verdict(str, Enum):
    PUBLISH = "publish"
    BUDGET_SPENT = "track_budget"
    NOT_SHARPER = "not_sharper"


@dataclass
class Track:
    id: int
    box: np.ndarray  # x1, y1, x2, y2
    missed: int = 0
    published: int = 0
    best_quality: float = 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    intersection = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1e-9), 0.0)


class IouTracker:
    def __init__(
        self,
        iou_threshold: float,
        max_missed: int,
        max_messages: int,
        improvement_ratio: float,
        first_id: int = 0,
    ) -> None:
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.max_messages = max_messages
        self.improvement_ratio = improvement_ratio
        self._next_id = first_id
        self.tracks: dict[int, Track] = {}

    def new_scene(self) -> int:
        """End every track (a new image or a reconnected stream); returns how many ended."""
        ended = len(self.tracks)
        self.tracks.clear()
        return ended

    def update(self, boxes: list[np.ndarray]) -> tuple[list[int], int]:
        """Link one detection pass; returns the track id of each box and how many tracks
        ended."""
        ids: list[int | None] = [None] * len(boxes)
        unmatched = set(self.tracks)
        if boxes and self.tracks:
            track_ids = list(self.tracks)
            overlaps = iou_matrix(
                np.stack([self.tracks[i].box for i in track_ids]), np.stack(boxes)
            )
            rows, columns = np.unravel_index(np.argsort(-overlaps, axis=None), overlaps.shape)
            for row, column in zip(rows, columns, strict=True):
                if overlaps[row, column] < self.iou_threshold:
                    break
                track_id = track_ids[row]
                if track_id in unmatched and ids[column] is None:
                    ids[column] = track_id
                    unmatched.discard(track_id)
        for column, box in enumerate(boxes):
            track_id = ids[column]
            if track_id is None:
                track_id = ids[column] = self._start(box)
            track = self.tracks[track_id]
            track.box, track.missed = box, 0
        ended = 0
        for track_id in unmatched:
            track = self.tracks[track_id]
            track.missed += 1
            if track.missed > self.max_missed:
                del self.tracks[track_id]
                ended += 1
        return [i for i in ids if i is not None], ended

    def _start(self, box: np.ndarray) -> int:
        track_id = self._next_id
        self._next_id += 1
        self.tracks[track_id] = Track(track_id, box)
        return track_id

    def judge(self, track_id: int, quality: float) -> Verdict:
        """Whether a usable face of ``track_id`` is worth a message; records it if so."""
        track = self.tracks[track_id]
        if track.published >= self.max_messages:
            return Verdict.BUDGET_SPENT
        if track.published and quality < track.best_quality * self.improvement_ratio:
            return Verdict.NOT_SHARPER
        track.published += 1
        track.best_quality = max(track.best_quality, quality)
        return Verdict.PUBLISH
