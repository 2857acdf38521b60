from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data import Aligner, list_identities, split_per_identity


@pytest.fixture
def small_dataset(data_root: Path, tmp_path: Path) -> Path:
    """Three ORL people, one with a broken image."""
    root = tmp_path / "faces"
    for person in ("s1", "s2", "s3"):
        shutil.copytree(data_root / "att_orl" / person, root / person)
    (root / "s3" / "broken.pgm").write_bytes(b"P5 not really an image")
    return root


def test_cache_built_for_a_subset_is_extended_not_trusted(
    small_dataset: Path, tmp_path: Path
) -> None:
    aligner = Aligner(small_dataset, tmp_path / "cache", size=32, method="resize")
    few = aligner.load(list_identities(small_dataset, max_images=3), progress=False)
    assert len(few) == 9
    everything = aligner.load(list_identities(small_dataset), progress=False)
    assert len(everything) == 30  # 10 per person, not the 3 cached first
    assert everything.failures == ["s3/broken.pgm"]  # counted and named, not dropped silently
    again = Aligner(small_dataset, tmp_path / "cache", size=32, method="resize")
    assert np.array_equal(
        again.load(list_identities(small_dataset), progress=False).faces, everything.faces
    )


def test_split_holds_out_a_share_of_every_person() -> None:
    labels = np.repeat(np.arange(4), 10)
    train, test = split_per_identity(labels, 0.3, seed=0)
    assert len(np.intersect1d(train, test)) == 0
    assert all((labels[test] == person).sum() == 3 for person in range(4))
    again_train, _ = split_per_identity(labels, 0.3, seed=0)
    assert np.array_equal(train, again_train)  # fixed seed, same split


def test_worker_processes_detect_what_one_process_detects(data_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "people"
    for name, count in (("Colin_Powell", 3), ("Gloria_Macapagal_Arroyo", 2), ("Aaron_Eckhart", 1)):
        (root / name).mkdir(parents=True)
        for number in range(1, count + 1):
            shutil.copy(data_root / "lfw" / name / f"{name}_{number:04d}.jpg", root / name)
    (root / "Aaron_Eckhart" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "p1" / "frontal").mkdir(parents=True)  # a nested identity (CFP): keys are paths
    shutil.copy(
        data_root / "lfw" / "Colin_Powell" / "Colin_Powell_0004.jpg", root / "p1" / "frontal"
    )
    identities = list_identities(root)
    parallel = Aligner(root, tmp_path / "parallel", 48, "mtcnn")
    assert parallel.uncached(identities) == 8
    assert sum(len(paths) for paths in parallel.undetected(identities).values()) == 8

    assert parallel.detect_in_workers(identities, workers=2, photos_per_worker=1) == 2
    assert parallel.undetected(identities) == {}  # the broken photo is recorded as no face
    assert parallel.uncached(identities) == 8  # detected, not aligned yet
    assert Aligner(root, tmp_path / "parallel", 32, "mtcnn").undetected(identities) == {}
    from_workers = parallel.load(identities, progress=False, workers=2)  # nothing left to detect
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: more threads round MTCNN's floats otherwise
    try:
        in_process = Aligner(root, tmp_path / "serial", 48, "mtcnn").load(
            identities, progress=False, workers=1
        )
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(from_workers.faces, in_process.faces)
    assert from_workers.sources == in_process.sources
    assert len(from_workers) == 7
    assert from_workers.failures == in_process.failures == ["Aaron_Eckhart/broken.jpg"]
    assert parallel.uncached(identities) == 0
    assert parallel.detect_in_workers(identities, workers=2, photos_per_worker=1) == 0
    with pytest.raises(ValueError, match="workers"):
        parallel.detect_in_workers(identities, workers=-1)
