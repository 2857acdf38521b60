"""The README's picture of the scrambler network, drawn from synthetic faces only.

``python -m trainer.sn_picture --output docs/results/sn-picture.png`` writes it. Contract:

- No photograph is read: no dataset (``RLLFPR_DATA`` is not consulted), no key, no cache. The
  faces are cartoons drawn with OpenCV, never a real person: face shape, skin tone, eyes,
  eyebrows, nose, mouth, hair and background vary. Each is drawn as an aligned face: its eye
  centres, nose tip and mouth corners sit on the project's 5-point template
  (``rllfpr.faces.align.template``) at the deployed face side, ``DEPLOYED_FACE_SIZE`` px.
- The SN is the deployed one (``DEPLOYED_SN`` at ``DEPLOYED_FACE_SIZE``), drawn with key seed
  ``KEY_SEEDS[0]`` (shown as key epoch 1) and ``KEY_SEEDS[1]`` (key epoch 2). Its BatchNorm is
  self-learned (``ScramblerNetwork.self_learn``), as a key build does, but on
  ``TRAINING_FACES`` further random synthetic faces instead of a training corpus
  (``--training-faces`` takes fewer, for tests); the faces shown are not among them.
- Faces go through the project's one pixel path: ``rllfpr.faces.pixels.faces_to_sn_input``
  for self-learning and ``rllfpr.faces.pixels.scramble`` (``ScramblerNetwork.to_pixels``)
  for the wire pixels shown.
- The picture: three labelled rows of ``FACES`` faces each, enlarged ``SCALE`` times: the
  synthetic aligned faces; their wire pixels under key 1; the same faces under key 2
  (``labelled_sheet``, the layout the demo's ``faces.png`` uses too).
- Deterministic: fixed seeds throughout and one torch thread (sums in another order can move a
  self-learned statistic and with it a few wire pixels); the same versions of torch and OpenCV
  write the same file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import cv2
import numpy as np
import torch

from rllfpr.faces.align import template
from rllfpr.faces.pixels import faces_to_sn_input, scramble
from rllfpr.models.scrambler import (
    DEPLOYED_FACE_SIZE,
    ScramblerConfig,
    ScramblerNetwork,
    deployed_sn,
)

FACES: Final = 6  # faces shown in each row
SHOWN_SEED: Final = 7  # the random details of the faces shown
TRAINING_FACES: Final = 384  # synthetic faces the SN's BatchNorm self-learns on
TRAINING_SEED: Final = 11
TRAINING_BATCH: Final = 64
KEY_SEEDS: Final = (1, 2)  # key epoch 1, key epoch 2
SCALE: Final = 2  # each face pixel drawn SCALE x SCALE in the picture
LABEL_WIDTH: Final = 230  # the label column of ``labelled_sheet``
ROW_GAP: Final = 4  # white rows between the picture's rows
SUPERSAMPLE: Final = 4  # faces are drawn this many times larger, then reduced (anti-aliasing)

ROW_LABELS: Final = (
    ("synthetic face", "drawn, not a real person"),
    ("epoch 1 scramble", "what is sent under key 1"),
    ("epoch 2 scramble", "the same faces, key 2"),
)

# RGB colours
SKIN_TONES: Final = (
    (255, 224, 196),
    (241, 194, 160),
    (224, 172, 129),
    (198, 134, 93),
    (141, 85, 54),
    (93, 58, 38),
)
HAIR_COLOURS: Final = (
    (28, 24, 24),
    (72, 46, 30),
    (124, 82, 46),
    (222, 190, 122),
    (168, 72, 36),
    (176, 176, 176),
)
IRIS_COLOURS: Final = ((92, 58, 32), (48, 32, 20), (70, 120, 170), (80, 130, 80), (140, 110, 60))
HAIR_STYLES: Final = ("short", "long", "bald", "fringe", "curly")
MOUTHS: Final = ("smile", "neutral", "open")


@dataclass(frozen=True)
class Face:
    """What varies between synthetic faces. Lengths are fractions of the face side."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    iris: tuple[int, int, int]
    background: tuple[int, int, int]
    hair_style: str
    mouth: str
    width: float  # half-width of the face outline
    height: float  # half-height of the face outline
    squareness: float  # exponent of the outline: 2 an ellipse, higher a squarer jaw
    eye_width: float
    eye_height: float
    brow_lift: float  # eyebrows above the eye centres
    brow_slant: float  # outer end lower (> 0) or higher (< 0) than the inner end
    smile: float  # sag of the mouth's middle below its corners (< 0: a frown)


def random_face(rng: np.random.Generator, variant: int | None = None) -> Face:
    """Random details; ``variant`` fixes skin tone, hair colour and style, iris and mouth to
    its own entries of each list, so consecutive variants differ in each."""

    def pick(options: Sequence[object], offset: int = 0) -> int:
        index = int(rng.integers(len(options)))
        return index if variant is None else (variant + offset) % len(options)

    grey = int(rng.integers(150, 235))
    tint = rng.integers(-25, 26, size=3)
    return Face(
        skin=SKIN_TONES[pick(SKIN_TONES)],
        hair=HAIR_COLOURS[pick(HAIR_COLOURS, 3)],
        iris=IRIS_COLOURS[pick(IRIS_COLOURS, 1)],
        background=(
            int(np.clip(grey + tint[0], 0, 255)),
            int(np.clip(grey + tint[1], 0, 255)),
            int(np.clip(grey + tint[2], 0, 255)),
        ),
        hair_style=HAIR_STYLES[pick(HAIR_STYLES)],
        mouth=MOUTHS[pick(MOUTHS)],
        width=float(rng.uniform(0.34, 0.43)),
        height=float(rng.uniform(0.47, 0.54)),
        squareness=float(rng.uniform(2.0, 3.6)),
        eye_width=float(rng.uniform(0.06, 0.075)),
        eye_height=float(rng.uniform(0.032, 0.046)),
        brow_lift=float(rng.uniform(0.08, 0.11)),
        brow_slant=float(rng.uniform(-0.02, 0.02)),
        smile=float(rng.uniform(-0.01, 0.05)),
    )


def _point(xy: np.ndarray) -> tuple[int, int]:
    return round(float(xy[0])), round(float(xy[1]))


def _outline(centre: np.ndarray, half: np.ndarray, exponent: float) -> np.ndarray:
    """Points of the superellipse |x/a|^n + |y/b|^n = 1 around ``centre``, (a, b) = ``half``,
    for ``cv2.fillPoly``: n = 2 an ellipse, larger n a squarer jaw."""
    angles = np.linspace(0.0, 2 * np.pi, 180, endpoint=False)
    cos, sin = np.cos(angles), np.sin(angles)
    x = centre[0] + half[0] * np.sign(cos) * np.abs(cos) ** (2 / exponent)
    y = centre[1] + half[1] * np.sign(sin) * np.abs(sin) ** (2 / exponent)
    return np.stack([x, y], axis=1).round().astype(np.int32)


def _curve(left: np.ndarray, right: np.ndarray, sag: float) -> np.ndarray:
    """A quadratic curve from ``left`` to ``right`` whose middle lies ``sag`` lower."""
    t = np.linspace(0.0, 1.0, 24)[:, None]
    middle = (left + right) / 2 + np.array([0.0, sag])
    points = (1 - t) ** 2 * left + 2 * (1 - t) * t * middle + t**2 * right
    return points.round().astype(np.int32)


def _darker(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    r, g, b = (round(c * factor) for c in colour)
    return r, g, b


def _hair(canvas: np.ndarray, face: Face, centre: np.ndarray, half: np.ndarray) -> None:
    """The hair over the top of the head, down to an arched hairline (none when bald)."""
    if face.hair_style == "bald":
        return
    side = canvas.shape[0]
    cap = np.zeros(canvas.shape[:2], np.uint8)
    cv2.ellipse(cap, _point(centre), (int(half[0] * 1.06), int(half[1] * 1.08)), 0, 0, 360, 255, -1)
    hair_line = centre[1] - half[1] * 0.55 + (0.1 * side if face.hair_style == "fringe" else 0.0)
    columns = np.arange(side)[None, :]
    arch = ((columns - centre[0]) / half[0]) ** 2 * 0.12 * side
    cap[np.arange(side)[:, None] > hair_line + arch] = 0
    canvas[cap > 0] = face.hair
    if face.hair_style == "curly":
        for angle in np.linspace(np.pi * 1.05, np.pi * 1.95, 9):
            curl = centre + half * np.array([1.02 * np.cos(angle), 0.98 * np.sin(angle)])
            cv2.circle(canvas, _point(curl), int(0.07 * side), face.hair, -1)


def _eye(canvas: np.ndarray, face: Face, eye: np.ndarray, outer: float, line: int) -> None:
    """An eye at its landmark and the eyebrow above it; ``outer``: -1 left, 1 right."""
    side = canvas.shape[0]
    axes = (int(face.eye_width * side), int(face.eye_height * side))
    cv2.ellipse(canvas, _point(eye), axes, 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
    iris = int(min(axes[1] * 0.95, axes[0] * 0.6))
    cv2.circle(canvas, _point(eye), iris, face.iris, -1, cv2.LINE_AA)
    cv2.circle(canvas, _point(eye), max(1, iris // 2), (15, 15, 15), -1, cv2.LINE_AA)
    glint = eye + np.array([iris * 0.4, -iris * 0.4])
    cv2.circle(canvas, _point(glint), max(1, iris // 4), (255, 255, 255), -1, cv2.LINE_AA)
    cv2.ellipse(canvas, _point(eye), axes, 0, 0, 360, _darker(face.skin, 0.55), line)
    brow_y = eye[1] - face.brow_lift * side
    inner = np.array([eye[0] - outer * face.eye_width * side * 0.9, brow_y])
    outside = np.array(
        [eye[0] + outer * face.eye_width * side * 1.1, brow_y + face.brow_slant * side]
    )
    brow = _curve(inner, outside, -0.02 * side)
    cv2.polylines(canvas, [brow], False, _darker(face.hair, 0.8), line * 3, cv2.LINE_AA)


def _mouth(canvas: np.ndarray, face: Face, left: np.ndarray, right: np.ndarray, line: int) -> None:
    """Lips from one mouth corner to the other: a smile, a neutral line, or open with teeth."""
    side = canvas.shape[0]
    lips = _darker((200, 90, 90), 0.6 + 0.4 * face.skin[0] / 255)
    smile = max(face.smile, 0.0)
    if face.mouth == "open":
        upper = _curve(left, right, smile * 0.5 * side)
        lower = _curve(left, right, (smile + 0.09) * side)
        cv2.fillPoly(canvas, [np.concatenate([upper, lower[::-1]])], (90, 20, 30), cv2.LINE_AA)
        teeth = _curve(left, right, (smile * 0.5 + 0.015) * side)
        cv2.polylines(canvas, [teeth], False, (245, 245, 240), line * 3, cv2.LINE_AA)
        cv2.polylines(canvas, [upper, lower], False, lips, line * 2, cv2.LINE_AA)
        return
    sag = max(face.smile, 0.02) if face.mouth == "smile" else face.smile / 4
    cv2.polylines(canvas, [_curve(left, right, sag * side)], False, lips, line * 3, cv2.LINE_AA)


def draw_face(face: Face, size: int = DEPLOYED_FACE_SIZE) -> np.ndarray:
    """One synthetic aligned face, (size, size, 3) uint8 RGB: eye centres, nose tip and mouth
    corners on the 5-point template. Drawn ``SUPERSAMPLE`` times larger, then reduced."""
    side = size * SUPERSAMPLE
    eye_left, eye_right, nose, mouth_left, mouth_right = template(side).astype(np.float64)
    line = max(1, round(side / 64))  # stroke width
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = face.background
    centre = np.array([(eye_left[0] + eye_right[0]) / 2, nose[1] - 0.07 * side])
    half = np.array([face.width, face.height]) * side
    if face.hair_style == "long":  # behind the head, down to the bottom
        back = (int(half[0] * 1.18), int(half[1] * 1.1))
        cv2.ellipse(canvas, _point(centre), back, 0, 180, 360, face.hair, -1)
        corner = (int(centre[0] - back[0]), int(centre[1]))
        cv2.rectangle(canvas, corner, (int(centre[0] + back[0]), side), face.hair, -1)
    for eye in (eye_left, eye_right):  # ears, at the height between eyes and nose
        ear = np.array(
            [centre[0] + np.sign(eye[0] - centre[0]) * half[0] * 0.97, (eye[1] + nose[1]) / 2]
        )
        cv2.ellipse(
            canvas, _point(ear), (int(0.05 * side), int(0.09 * side)), 0, 0, 360, face.skin, -1
        )
    cv2.fillPoly(canvas, [_outline(centre, half, face.squareness)], face.skin)
    _hair(canvas, face, centre, half)
    _eye(canvas, face, eye_left, -1.0, line)
    _eye(canvas, face, eye_right, 1.0, line)
    shade = _darker(face.skin, 0.7)
    bridge = np.array([nose[0] - 0.01 * side, (eye_left[1] + nose[1]) / 2])
    cv2.polylines(canvas, [_curve(bridge, nose, 0.0)], False, shade, line * 2, cv2.LINE_AA)
    for nostril in (-1.0, 1.0):
        centre_nostril = nose + np.array([nostril * 0.035 * side, 0.005 * side])
        axes = (int(0.025 * side), int(0.015 * side))
        cv2.ellipse(canvas, _point(centre_nostril), axes, 0, 0, 360, shade, line * 2, cv2.LINE_AA)
    _mouth(canvas, face, mouth_left, mouth_right, line)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


def synthetic_faces(count: int, seed: int, varied: bool = False) -> np.ndarray:
    """``count`` synthetic aligned faces, (count, S, S, 3) uint8 RGB, S = DEPLOYED_FACE_SIZE;
    ``varied``: face i takes variant i of each list (``random_face``)."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [draw_face(random_face(rng, index if varied else None)) for index in range(count)]
    )


def shown_faces() -> np.ndarray:
    """The ``FACES`` faces of the picture's top row."""
    return synthetic_faces(FACES, SHOWN_SEED, varied=True)


def training_faces(count: int = TRAINING_FACES) -> np.ndarray:
    """The faces the SN's BatchNorm self-learns on (none of them shown); a smaller ``count``
    gives the first ``count`` of them."""
    return synthetic_faces(count, TRAINING_SEED)


def picture_config() -> ScramblerConfig:
    """The deployed SN at the deployed face side."""
    return deployed_sn()


def self_learned_sn(seed: int, faces: np.ndarray) -> ScramblerNetwork:
    """The deployed SN of key ``seed``, its BatchNorm self-learned on ``faces``."""
    network = ScramblerNetwork(picture_config(), seed)
    network.self_learn(
        faces_to_sn_input(faces[start : start + TRAINING_BATCH], network.config.in_channels)
        for start in range(0, len(faces), TRAINING_BATCH)
    )
    return network


def labelled_sheet(
    rows: Sequence[np.ndarray], labels: Sequence[tuple[str, str]], scale: int = SCALE
) -> np.ndarray:
    """Rows of faces (RGB, same height) enlarged ``scale`` times, each with its (title, note)
    label on the left, ``ROW_GAP`` white rows between them, on a white background."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    out = []
    for row, (title, note) in zip(rows, labels, strict=True):
        big = np.repeat(np.repeat(row, scale, axis=0), scale, axis=1)
        label = np.full((big.shape[0], LABEL_WIDTH, 3), 255, np.uint8)
        middle = big.shape[0] // 2
        cv2.putText(label, title, (8, middle - 4), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(label, note, (8, middle + 18), font, 0.45, (90, 90, 90), 1, cv2.LINE_AA)
        out.append(np.concatenate([label, big], axis=1))
        out.append(np.full((ROW_GAP, LABEL_WIDTH + big.shape[1], 3), 255, np.uint8))
    return np.concatenate(out[:-1], axis=0)


def picture(training: int = TRAINING_FACES) -> np.ndarray:
    """The whole picture, (H, W, 3) uint8 RGB; each SN self-learns on ``training`` faces."""
    faces, training_set = shown_faces(), training_faces(training)
    rows = [np.concatenate(list(faces), axis=1)]
    for seed in KEY_SEEDS:
        pixels = scramble(self_learned_sn(seed, training_set), faces)
        rows.append(np.repeat(np.concatenate(list(pixels), axis=1)[..., None], 3, axis=2))
    return labelled_sheet(rows, ROW_LABELS)


def write(output: Path, training: int = TRAINING_FACES) -> Path:
    """Draws the picture into ``output`` (PNG)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(output), cv2.cvtColor(picture(training), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {output}")
    return output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Draw the README's SN picture from synthetic faces (no dataset is read)."
    )
    parser.add_argument(
        "--output", type=Path, default=Path("docs/results/sn-picture.png"), help="PNG to write."
    )
    parser.add_argument(
        "--training-faces",
        type=int,
        default=TRAINING_FACES,
        help="Synthetic faces the SN's BatchNorm self-learns on (fewer: faster, for tests).",
    )
    arguments = parser.parse_args(argv)
    if arguments.training_faces < 1:
        parser.error("--training-faces must be at least 1")
    torch.set_num_threads(1)
    print(f"written: {write(arguments.output, arguments.training_faces)}")


if __name__ == "__main__":
    main()
