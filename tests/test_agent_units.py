"""Edge-agent parts without a broker: tracker, spool, sources, crop boxes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.sources import (
    Backoff,
    FrameReader,
    ImageFolderSource,
    SourceError,
    open_source,
)
from edge_agent.spool import Spool
from edge_agent.tracker import IouTracker, Verdict, iou_matrix
from rllfpr.faces.detect import crop_box
from rllfpr.faces.pixels import sharpness


def box(x: float, y: float, side: float = 100.0) -> np.ndarray:
    return np.array([x, y, x + side, y + side], dtype=np.float32)


# ----- tracker
def test_iou_of_identical_disjoint_and_half_overlapping_boxes() -> None:
    overlaps = iou_matrix(np.stack([box(0, 0)]), np.stack([box(0, 0), box(500, 0), box(50, 0)]))
    assert overlaps[0] == pytest.approx([1.0, 0.0, 50 / 150])


def test_a_person_in_view_for_long_yields_a_bounded_number_of_messages() -> None:
    tracker = IouTracker(0.3, max_missed=2, max_messages=3, improvement_ratio=1.25)
    published = []
    for step in range(200):  # walks slowly and gets sharper all the time
        (track_id,), _ = tracker.update([box(step * 2.0, 50)])
        if tracker.judge(track_id, quality=10.0 + step) is Verdict.PUBLISH:
            published.append(track_id)
    assert len(published) == 3
    assert len(set(published)) == 1  # one track all along


def test_only_clearly_sharper_faces_follow_the_first_one() -> None:
    tracker = IouTracker(0.3, max_missed=2, max_messages=5, improvement_ratio=1.5)
    (track_id,), _ = tracker.update([box(0, 0)])
    verdicts = [tracker.judge(track_id, quality) for quality in (10.0, 14.0, 15.0, 30.0, 20.0)]
    assert verdicts == [
        Verdict.PUBLISH,
        Verdict.NOT_SHARPER,
        Verdict.PUBLISH,
        Verdict.PUBLISH,
        Verdict.NOT_SHARPER,
    ]


def test_tracks_end_after_missed_passes_and_at_a_new_scene() -> None:
    tracker = IouTracker(0.3, max_missed=1, max_messages=3, improvement_ratio=1.25)
    (first,), _ = tracker.update([box(0, 0)])
    _, ended = tracker.update([])
    assert ended == 0  # one miss is tolerated
    (again,), _ = tracker.update([box(5, 0)])
    assert again == first
    tracker.update([])
    _, ended = tracker.update([])
    assert ended == 1
    (new,), _ = tracker.update([box(5, 0)])
    assert new != first
    assert tracker.new_scene() == 1
    (after_scene,), _ = tracker.update([box(5, 0)])
    assert after_scene not in {first, new}


def test_two_people_keep_their_own_tracks() -> None:
    tracker = IouTracker(0.3, max_missed=2, max_messages=3, improvement_ratio=1.25)
    ids, _ = tracker.update([box(0, 0), box(300, 0)])
    swapped, _ = tracker.update([box(305, 0), box(4, 0)])
    assert swapped == [ids[1], ids[0]]


# ----- spool
def test_spool_drops_the_oldest_when_full_and_counts_it(tmp_path: Path) -> None:
    drops: list[tuple[str, int]] = []
    spool = Spool(
        tmp_path / "s.sqlite3",
        max_messages=3,
        max_bytes=10_000,
        on_drop=lambda r, n: drops.append((r, n)),
    )
    for index in range(5):
        spool.put("t", bytes([index]) * 10, time.time() + 60, key_epoch=1)
    assert spool.depth == 3
    assert [m.payload[0] for m in spool.take(0, 10)] == [2, 3, 4]
    assert drops == [("spool_full", 1), ("spool_full", 1)]
    assert spool.dropped() == {"spool_full": 2}
    spool.close()
    reopened = Spool(tmp_path / "s.sqlite3", max_messages=3, max_bytes=10_000)
    assert reopened.depth == 3  # survives a restart, and so does the counter
    assert reopened.dropped() == {"spool_full": 2}
    assert (tmp_path / "s.sqlite3").stat().st_mode & 0o777 == 0o600


def test_spool_byte_bound_expiry_and_revoked_epochs(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_messages=100, max_bytes=250)
    now = time.time()
    for index in range(3):
        spool.put("t", b"x" * 100, now + 60, key_epoch=index)
    assert (spool.depth, spool.size_bytes) == (2, 200)
    spool.put("t", b"y" * 10, now - 1, key_epoch=2)
    assert spool.expire(now) == 1
    assert spool.drop_epoch(2) == 1
    assert [m.payload[:1] for m in spool.take(0, 10)] == [b"x"]
    assert spool.dropped() == {"spool_full": 1, "expired": 1, "revoked": 1}
    first = spool.take(0, 1)[0]
    assert spool.remove(first.id)
    assert not spool.remove(first.id)
    assert spool.depth == 0


# ----- sources
def write_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = np.full((60, 80, 3), index * 20, np.uint8)
        cv2.imwrite(str(folder / f"{index:03d}.png"), image)


def test_image_folder_skips_corrupt_files_and_makes_one_scene_per_image(tmp_path: Path) -> None:
    write_images(tmp_path / "photos", 3)
    (tmp_path / "photos" / "001b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "photos" / "002b.png").write_bytes(b"")
    skipped: list[str] = []
    source = ImageFolderSource(tmp_path / "photos", 0, False, skipped.append)
    frames = list(source.frames(threading.Event()))
    assert [f.origin for f in frames] == ["000.png", "001.png", "002.png"]
    assert len({f.scene for f in frames}) == 3
    assert frames[1].image.shape == (60, 80, 3)
    assert frames[1].image[0, 0, 0] == 20
    assert len(skipped) == 2
    sequence = ImageFolderSource(tmp_path / "photos", 0, True)
    assert {f.scene for f in sequence.frames(threading.Event())} == {0}


def test_image_folder_replays_at_the_set_rate(tmp_path: Path) -> None:
    write_images(tmp_path / "photos", 4)
    start = time.monotonic()
    frames = list(ImageFolderSource(tmp_path / "photos", 20, False).frames(threading.Event()))
    assert len(frames) == 4
    assert time.monotonic() - start >= 3 / 20 * 0.9


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("absent", None, "source not found"),
        ("empty", "dir", "no images"),
        ("clip.mp4", b"not a video at all", "cannot open video file"),
    ],
)
def test_unreadable_sources_are_clear_errors(
    tmp_path: Path, name: str, content: bytes | str | None, message: str
) -> None:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        open_source(str(path), fps=0, sequence=False, backoff=Backoff(1, 1))


def test_video_file_plays_once_as_one_scene(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 48))
    for index in range(5):
        writer.write(np.full((48, 64, 3), index * 40, np.uint8))
    writer.release()
    source = open_source(str(path), fps=0, sequence=False, backoff=Backoff(1, 1))
    frames = list(source.frames(threading.Event()))
    assert len(frames) == 5
    assert not source.live
    assert {f.scene for f in frames} == {0}
    assert frames[0].image.shape == (48, 64, 3)


def test_a_stream_that_cannot_be_opened_is_retried_with_backoff() -> None:
    reconnects: list[float] = []
    source = open_source(
        "rtsp://127.0.0.1:9/none",
        fps=0,
        sequence=False,
        backoff=Backoff(0.05, 0.2),
        on_reconnect=lambda: reconnects.append(time.monotonic()),
    )
    assert source.live
    reader = FrameReader(source, capacity=4)
    deadline = time.monotonic() + 20
    while len(reconnects) < 4 and time.monotonic() < deadline:
        assert reader.take(4, timeout_s=0.1) == []  # no frames, no crash, no end
    reader.close()
    assert len(reconnects) >= 4


def test_backoff_doubles_up_to_its_maximum() -> None:
    delays = Backoff(1, 8).delays()
    assert [next(delays) for _ in range(6)] == [1, 2, 4, 8, 8, 8]


def test_frame_reader_hands_out_batches_and_reports_the_end(tmp_path: Path) -> None:
    write_images(tmp_path / "photos", 5)
    reader = FrameReader(ImageFolderSource(tmp_path / "photos", 0, False), capacity=2)
    taken: list[int] = []
    while (frames := reader.take(3, timeout_s=2)) is not None:
        assert len(frames) <= 3
        taken += [f.index for f in frames]
    assert taken == [0, 1, 2, 3, 4]
    reader.close()


# ----- face preparation helpers
def test_crop_box_is_whole_pixels_inside_the_frame() -> None:
    crop = crop_box(np.array([-3.2, 10.5, 90.1, 300.0]), (240, 320, 3))
    assert (crop.x, crop.y, crop.width, crop.height) == (0, 10, 91, 230)
    assert (crop.frame_width, crop.frame_height) == (320, 240)


def test_sharpness_ranks_a_blurred_face_below_the_original() -> None:
    rng = np.random.default_rng(0)
    face = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(face, (9, 9), 3)
    assert sharpness(blurred) < sharpness(face) / 10
