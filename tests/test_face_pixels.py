"""Face pixels have one definition (``rllfpr.faces.pixels``): the edge agent, the enrollment
station and the trainer turn the same photo into the same wire pixels, to the byte, for RGB and
for one-channel (grey) SN keys."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edge_agent.backends import OnnxRuntimeBackend, TorchBackend, within_tolerance
from edge_agent.prepare import FacePreparer
from edge_agent.sources import ImageFolderSource
from enrollment_station.enrollment import scramble_photos
from rllfpr.faces import pixels
from rllfpr.faces.align import align
from rllfpr.faces.detect import FaceDetector, central_face
from rllfpr.keys.bundle import BundleHeader
from rllfpr.keys.scrambler_key import ScramblerKey
from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.models.scrambler import ScramblerConfig, ScramblerNetwork
from trainer.data import Aligner
from trainer.train import FaceView, embed

SIZE = 64
PEOPLE = 3  # one photo each: every program detects a photo alone, in a batch of one


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(min_face_size=40)


def lfw_photos(data_root: Path, tmp_path: Path) -> Path:
    """A dataset folder of links to the first photo of the first LFW people."""
    root = tmp_path / "photos"
    people = sorted(p for p in (data_root / "lfw").iterdir() if p.is_dir())[:PEOPLE]
    for person in people:
        (root / person.name).mkdir(parents=True)
        photo = sorted(person.glob("*.jpg"))[0]
        (root / person.name / photo.name).symlink_to(photo)
    return root


def key_for(in_channels: int, faces: np.ndarray) -> ScramblerKey:
    config = ScramblerConfig(widths=(8, 16, 16, 16, 16), input_size=SIZE, in_channels=in_channels)
    network = ScramblerNetwork(config, seed=7)
    network.self_learn([pixels.faces_to_sn_input(faces, in_channels)])
    header = BundleHeader(
        epoch=1,
        scope="fleet",
        recognizer_id="r1",
        signer="0" * 16,
        fleet_key_id="0" * 16,
        nonce="0" * 24,
    )
    return ScramblerKey(header, network)


def agent_pixels(root: Path, key: ScramblerKey, detector: FaceDetector) -> np.ndarray:
    """The agent's path: its image source, its detection gates and alignment, torch backend."""
    source = ImageFolderSource(root, fps=0, sequence=False)
    preparer = FacePreparer(
        detector, detect_width=640, min_face_size=40, min_detection_score=0.0, min_sharpness=0.0
    )
    aligned = []
    for frame in source.frames(threading.Event()):
        (detections,), _ = preparer.detect([frame.image])
        found = central_face(detections, frame.image.shape)
        assert found is not None
        face = preparer.align(frame.image, found, SIZE)
        assert not isinstance(face, str), face
        aligned.append(face.face)
    return TorchBackend(key.network).scramble(np.stack(aligned))


def trainer_faces(root: Path, tmp_path: Path) -> np.ndarray:
    names = sorted(p.name for p in root.iterdir())
    aligner = Aligner(root, tmp_path / "cache", SIZE, "mtcnn")
    return aligner.load({name: sorted((root / name).iterdir()) for name in names}).faces


def trainer_pixels(faces: np.ndarray, key: ScramblerKey) -> np.ndarray:
    """The trainer's path: its tensor conversion and the scrambled view it trains on."""
    view = FaceView("scrambled", key.network, torch.device("cpu"))
    grey_levels = view.pixels(pixels.to_unit(faces, torch.device("cpu")))
    return grey_levels.to(torch.uint8).numpy()


@pytest.mark.parametrize("in_channels", [3, 1])
def test_agent_station_and_trainer_send_the_same_wire_pixels(
    data_root: Path, tmp_path: Path, in_channels: int, detector: FaceDetector
) -> None:
    root = lfw_photos(data_root, tmp_path)
    faces = trainer_faces(root, tmp_path)
    assert faces.shape == (PEOPLE, SIZE, SIZE, 3)
    key = key_for(in_channels, faces)

    station, failures = scramble_photos(sorted(root.rglob("*.jpg")), key, detector)
    assert failures == []
    from_station = np.stack([face.pixels for face in station])
    from_agent = agent_pixels(root, key, detector)
    from_trainer = trainer_pixels(faces, key)

    assert from_station.dtype == from_agent.dtype == from_trainer.dtype == np.uint8
    assert from_station.shape == (PEOPLE, SIZE, SIZE)
    np.testing.assert_array_equal(from_agent, from_station)
    np.testing.assert_array_equal(from_trainer, from_station)
    np.testing.assert_array_equal(pixels.scramble(key.network, faces, batch=2), from_station)
    # the decoded photo is the same, too, whoever decodes it
    photo = sorted(root.rglob("*.jpg"))[0]
    frame = next(ImageFolderSource(root, fps=0, sequence=False).frames(threading.Event()))
    np.testing.assert_array_equal(frame.image, pixels.load_rgb(photo))


def test_a_grey_key_runs_on_onnx_runtime_as_on_torch() -> None:
    faces = np.random.default_rng(0).integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    key = key_for(1, faces)
    torch_pixels = TorchBackend(key.network).scramble(faces)
    onnx_pixels = OnnxRuntimeBackend(key.network).scramble(faces)
    assert torch_pixels.shape == onnx_pixels.shape == (6, SIZE, SIZE)
    assert within_tolerance(torch_pixels, onnx_pixels)


def test_a_grey_key_trains_and_embeds_in_the_trainer() -> None:
    faces = np.random.default_rng(1).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    key = key_for(1, faces)
    recognizer = Recognizer(RecognizerConfig(backbone="compact", input_size=SIZE, embedding_dim=16))
    view = FaceView("scrambled", key.network, torch.device("cpu"))
    embeddings = embed(recognizer, view, faces)
    assert embeddings.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    # the recognizer sees the key's wire pixels, standardized
    wire = torch.from_numpy(pixels.scramble(key.network, faces))
    expected = pixels.recognizer_input(wire)
    torch.testing.assert_close(view(pixels.to_unit(faces, torch.device("cpu"))), expected)


def test_grey_is_the_luma_of_the_three_channels() -> None:
    rgb = torch.tensor([[[[1.0]], [[0.0]], [[0.0]]], [[[0.0]], [[1.0]], [[1.0]]]])
    grey = pixels.sn_input(rgb, 1)
    assert grey.shape == (2, 1, 1, 1)
    torch.testing.assert_close(grey.flatten(), torch.tensor([0.299, 0.587 + 0.114]))
    assert pixels.sn_input(rgb, 3) is rgb
    with pytest.raises(ValueError, match="1 or 3 channels"):
        pixels.sn_input(rgb, 2)
    with pytest.raises(ValueError, match="uint8"):
        pixels.faces_to_sn_input(np.zeros((1, 4, 4, 3), np.float32), 3)


def test_recognizer_input_standardizes_wire_pixels() -> None:
    wire = torch.tensor([[[0, 128, 255]]], dtype=torch.uint8)
    assert pixels.recognizer_input(wire).tolist() == [[[[-4.0, 0.0, 127 / 32]]]]
    with pytest.raises(ValueError, match=r"\(N, S, S\)"):
        pixels.recognizer_input(wire[0])


def test_photos_are_decoded_upright(tmp_path: Path) -> None:
    """A camera photo stored sideways with an EXIF orientation is turned as the camera meant."""
    upright = np.zeros((20, 10, 3), np.uint8)
    upright[:5] = 255  # a white band at the top
    stored = Image.fromarray(np.rot90(upright, k=1).copy())  # stored rotated a quarter turn
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    stored.save(tmp_path / "sideways.jpg", exif=exif, quality=100)
    decoded = pixels.load_rgb(tmp_path / "sideways.jpg")
    assert decoded.shape == (20, 10, 3)
    assert decoded[:5].mean() > 200 > 50 > decoded[6:].mean()


def test_device_choice() -> None:
    assert pixels.pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pixels.pick_device("auto").type == expected


def test_alignment_then_scramble_is_deterministic_across_batches(
    data_root: Path, detector: FaceDetector
) -> None:
    photo = sorted((data_root / "lfw").iterdir())[0]
    image = pixels.load_rgb(sorted(photo.glob("*.jpg"))[0])
    found = central_face(detector.detect([image])[0], image.shape)
    assert found is not None
    face = align(image, found.landmarks, SIZE)
    key = key_for(3, face[None].repeat(4, 0))
    together = pixels.scramble(key.network, face[None].repeat(5, 0))
    assert all(np.array_equal(row, together[0]) for row in together)
