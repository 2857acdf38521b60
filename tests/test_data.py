from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

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
