"""The README's SN picture (trainer/sn_picture.py): three rows of the expected size, its scramble
rows are what the deployed SN of each key seed gives for the synthetic faces, the two keys give
different pixels, and drawing it reads no dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rllfpr.faces.pixels import faces_to_sn_input, scramble
from rllfpr.models.scrambler import DEPLOYED_FACE_SIZE, ScramblerNetwork, deployed_sn
from trainer import sn_picture

REPO = Path(__file__).resolve().parents[1]
TRAINING = 24  # self-learning faces in these tests (the README's picture: 384)
SIDE = DEPLOYED_FACE_SIZE * sn_picture.SCALE  # a face's side in the picture

# Runs the command in a fresh interpreter and lists every path it opens or lists through Python
# (audit events; a read inside a C library, such as cv2.imread, raises none, but finding a
# dataset's files means listing its folders first).
PROBE = """
import json, runpy, sys
opened = []
EVENTS = {"open", "os.listdir", "os.scandir"}
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event in EVENTS else None)
sys.argv = ["trainer.sn_picture", "--output", sys.argv[1], "--training-faces", sys.argv[2]]
runpy.run_module("trainer.sn_picture", run_name="__main__")
print("OPENED " + json.dumps(opened))
"""


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, list[str], Path]:
    """The picture written by the command (RGB), the files it opened, the empty data root."""
    folder = tmp_path_factory.mktemp("sn-picture")
    empty = folder / "data"
    empty.mkdir()
    output = folder / "out" / "sn-picture.png"
    environment = os.environ | {
        "RLLFPR_DATA": str(empty),
        "PYTHONPATH": str(REPO),
        # one thread here and in the recompute below: float sums in another order (two
        # threads) may move a self-learned statistic and with it a few wire pixels
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(output), str(TRAINING)],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    opened = json.loads(done.stdout.split("OPENED ", 1)[1])
    image = cv2.imread(str(output))
    assert image is not None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), opened, empty


def _rows(image: np.ndarray) -> list[np.ndarray]:
    """The three face rows of the picture, at face resolution, label column left out."""
    step = SIDE + sn_picture.ROW_GAP
    scale = sn_picture.SCALE
    return [
        image[r * step : r * step + SIDE : scale, sn_picture.LABEL_WIDTH :: scale] for r in range(3)
    ]


def test_the_picture_has_three_rows_of_six_faces(drawn: tuple[np.ndarray, list[str], Path]):
    image, _, _ = drawn
    gap = sn_picture.ROW_GAP
    width = sn_picture.LABEL_WIDTH + sn_picture.FACES * SIDE
    assert image.shape == (3 * SIDE + 2 * gap, width, 3)
    for r in (1, 2):  # white gaps between the rows
        assert (image[r * (SIDE + gap) - gap : r * (SIDE + gap)] == 255).all()
    assert (image[:, : sn_picture.LABEL_WIDTH] < 128).any()  # the labels are written
    faces, first, second = _rows(image)
    assert (faces == np.concatenate(list(sn_picture.shown_faces()), axis=1)).all()
    for row in (first, second):  # grey wire pixels
        assert (row == row[..., :1]).all()
    assert np.mean(first != second) > 0.5  # the two keys scramble differently


@pytest.mark.parametrize("row", [1, 2])
def test_a_scramble_row_is_what_the_sn_of_its_seed_gives(
    drawn: tuple[np.ndarray, list[str], Path], row: int
):
    image, _, _ = drawn
    assert TRAINING <= sn_picture.TRAINING_BATCH  # one self-learning batch, here as there
    faces = sn_picture.shown_faces()
    training = sn_picture.synthetic_faces(TRAINING, sn_picture.TRAINING_SEED)
    config = deployed_sn()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command ran (OMP_NUM_THREADS=1)
    try:
        network = ScramblerNetwork(config, sn_picture.KEY_SEEDS[row - 1])
        network.self_learn([faces_to_sn_input(training, config.in_channels)])
        expected = np.concatenate(list(scramble(network, faces)), axis=1)
    finally:
        torch.set_num_threads(threads)
    assert (_rows(image)[row][..., 0] == expected).all()


def test_drawing_it_reads_no_dataset(drawn: tuple[np.ndarray, list[str], Path]):
    _, opened, empty = drawn
    roots = [empty, REPO.parent / "shared" / "data"]
    if "RLLFPR_DATA" in os.environ:
        roots.append(Path(os.environ["RLLFPR_DATA"]))
    resolved = [Path(path).resolve() for path in opened]
    for root in roots:
        assert not [p for p in resolved if p.is_relative_to(root.resolve())], root
    images = {".jpg", ".jpeg", ".png", ".pgm", ".gif", ".bmp"}
    read = [p for p in resolved if p.suffix.lower() in images and p.name != "sn-picture.png"]
    assert read == []
    assert not any(empty.iterdir())
