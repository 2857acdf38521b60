"""MTCNN on ONNX Runtime (and TensorRT) against facenet-pytorch's eager MTCNN, the reference.

The ONNX path reimplements facenet-pytorch's pipeline in NumPy (``rllfpr.faces.mtcnn``) and
runs the exported networks; it must find the same faces: same count, box IoU >= 0.99 and
landmarks within 0.5 px, on real LFW photos and on the benchmark's 640x480 multi-face frames.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch
from torch.nn.functional import interpolate

from edge_agent.agent import Agent
from rllfpr.faces import mtcnn
from rllfpr.faces.detect import Detection, FaceDetector, resolve_backend
from rllfpr.faces.mtcnn_runtime import (
    NAMES,
    OnnxRuntimeNetworks,
    TorchNetworks,
    onnx_files,
)
from rllfpr.local_services import Endpoint
from rllfpr.models.export import unsupported_operators
from rllfpr.runtimes import onnxruntime_cuda, tensorrt_available
from rllfpr.wire import topics
from tests.support.agent import (
    KeyFactory,
    agent_settings,
    lfw_images,
    moving_face_frames,
    network,
    read_rgb,
    shared_detector,
    started,
)
from tests.support.mqtt import Capture

REPO = Path(__file__).resolve().parents[1]
MIN_IOU, MAX_LANDMARK_PX, MAX_SCORE_DIFFERENCE = 0.99, 0.5, 1e-3


@functools.cache
def bench_agent() -> ModuleType:
    """benchmarks/bench_agent.py, for the frames it measures the agent on."""
    spec = importlib.util.spec_from_file_location("bench_agent", REPO / "benchmarks/bench_agent.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_agent"] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def onnx_detector() -> FaceDetector:
    return FaceDetector(min_face_size=40, min_score=0.0, backend="onnxruntime", threads=1)


def lfw_photos(data_root: Path, count: int) -> list[np.ndarray]:
    people = sorted(p for p in (data_root / "lfw").iterdir() if p.is_dir())
    step = len(people) // count
    photos = []
    for person in people[::step][:count]:
        image = cv2.imread(str(sorted(person.glob("*.jpg"))[0]))
        assert image is not None
        photos.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return photos


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


def assert_same_faces(reference: list[Detection], found: list[Detection], where: str) -> None:
    """Same number of faces, each matched (largest first, as both order them) within the
    stated tolerances."""
    assert len(found) == len(reference), f"{where}: {len(found)} faces, reference {len(reference)}"
    for index, (expected, got) in enumerate(zip(reference, found, strict=True)):
        iou = box_iou(expected.box, got.box)
        shift = float(np.abs(expected.landmarks - got.landmarks).max())
        assert iou >= MIN_IOU, f"{where} face {index}: box IoU {iou:.4f}"
        assert shift <= MAX_LANDMARK_PX, f"{where} face {index}: landmark off by {shift:.3f} px"
        assert abs(expected.score - got.score) <= MAX_SCORE_DIFFERENCE, where


# ----- the pipeline's pieces against the reference's
def test_pyramid_is_facenet_pytorchs() -> None:
    # facenet-pytorch: scales from 12 / min_face_size by 0.709 while the short side >= 12
    assert mtcnn.pyramid(240, 320, 20) == pytest.approx(
        [0.6 * 0.709**k for k in range(8)], rel=1e-12
    )
    assert mtcnn.scaled_size(240, 320, 0.6) == (145, 193)
    assert mtcnn.pyramid(11, 500, 12) == []  # shorter than P-Net's window: nothing to scan


def test_area_resize_is_bit_exact_with_torch() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 61, 83, 3), dtype=np.uint8)
    integral = np.stack([cv2.integral(image) for image in images])
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    for size in [(30, 41), (61, 83), (13, 18), (100, 150)]:
        expected = interpolate(tensor, size=size, mode="area").numpy()
        assert np.array_equal(mtcnn.resize_images(integral, size), expected), size
    windows = np.array([[0, 61, 0, 83], [5, 40, 7, 30], [60, 61, 82, 83], [10, 13, 20, 70]])
    owner = np.array([0, 1, 1, 0])
    for side in (24, 48):
        crops = mtcnn.resize_crops(integral, owner, windows, side)
        for crop, (top, bottom, left, right), image in zip(crops, windows, owner, strict=True):
            window = tensor[image : image + 1, :, top:bottom, left:right]
            expected = interpolate(window, size=(side, side), mode="area")[0].numpy()
            assert np.array_equal(crop, expected)


def test_bad_images_are_refused() -> None:
    networks = TorchNetworks()
    with pytest.raises(ValueError, match="uint8"):
        mtcnn.detect(np.zeros((1, 40, 40, 3), np.float32), 20, networks)
    with pytest.raises(ValueError, match="HxWx3"):
        onnx_detector().detect([np.zeros((40, 40), np.uint8)])
    with pytest.raises(ValueError, match="one width"):
        onnx_detector().detect_downscaled(
            [np.zeros((40, 40, 3), np.uint8), np.zeros((40, 50, 3), np.uint8)], 320, 40
        )


def test_images_too_small_or_empty_give_no_face() -> None:
    detector = onnx_detector()
    assert detector.detect([np.zeros((8, 8, 3), np.uint8)]) == [[]]
    assert detector.detect([np.full((120, 160, 3), 128, np.uint8)]) == [[]]
    assert detector.detect([]) == []


# ----- whole detections against facenet-pytorch
def test_onnxruntime_matches_facenet_pytorch_on_lfw_photos(data_root: Path) -> None:
    photos = lfw_photos(data_root, 16)
    reference = shared_detector().detect(photos)
    found = onnx_detector().detect(photos)
    assert sum(map(len, reference)) >= len(photos)  # every photo has its person
    for index, (expected, got) in enumerate(zip(reference, found, strict=True)):
        assert_same_faces(expected, got, f"LFW photo {index}")


@pytest.mark.slow
def test_onnxruntime_matches_facenet_pytorch_on_benchmark_frames(data_root: Path) -> None:
    bench = bench_agent()
    frames = list(bench.compose_frames(bench.lfw_photos(data_root, 40), 240))[::30]
    for width in (320, 640):  # the agent's default detection width, and full frames
        reference = shared_detector().detect_downscaled(frames, width, 40)
        found = onnx_detector().detect_downscaled(frames, width, 40)
        assert sum(map(len, reference)) >= 2 * len(frames)  # one to three faces per frame
        for index, (expected, got) in enumerate(zip(reference, found, strict=True)):
            assert_same_faces(expected, got, f"frame {index} at width {width}")


class CountingNetworks:
    """Counts the runtime calls and the images of each."""

    def __init__(self, inner: mtcnn.Networks) -> None:
        self.inner = inner
        self.calls: dict[str, list[int]] = {name: [] for name in NAMES}

    def pnet(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls["pnet"].append(len(images))
        return self.inner.pnet(images)

    def rnet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls["rnet"].append(len(crops))
        return self.inner.rnet(crops)

    def onet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.calls["onet"].append(len(crops))
        return self.inner.onet(crops)


def test_a_batch_is_few_runtime_calls_with_each_frames_own_faces(data_root: Path) -> None:
    bench = bench_agent()
    frames = np.stack(
        [
            cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA)
            for frame in list(bench.compose_frames(bench.lfw_photos(data_root, 40), 200))[::40]
        ]
    )
    networks = CountingNetworks(OnnxRuntimeNetworks(threads=1))
    batched = mtcnn.detect(frames, 20, networks)
    scales = len(mtcnn.pyramid(240, 320, 20))
    # one P-Net call per pyramid level for the whole batch; one R-Net and one O-Net call
    assert networks.calls["pnet"] == [len(frames)] * scales
    assert len(networks.calls["rnet"]) == 1
    assert len(networks.calls["onet"]) == 1
    for frame, faces in zip(frames, batched, strict=True):
        (alone,) = mtcnn.detect(frame[None], 20, networks.inner)
        assert np.allclose(alone.boxes, faces.boxes, atol=1e-3)
        assert np.allclose(alone.landmarks, faces.landmarks, atol=1e-3)


# ----- the ONNX files
def test_onnx_files_are_cached_by_weights_and_tensorrt_parsable(tmp_path: Path) -> None:
    paths = onnx_files(tmp_path)
    assert set(paths) == set(NAMES)
    stamps = {name: path.stat().st_mtime_ns for name, path in paths.items()}
    tag = paths["pnet"].stem.split("-")[1]
    assert all(path.name == f"{name}-{tag}.onnx" for name, path in paths.items())
    assert onnx_files(tmp_path) == paths  # the second call exports nothing
    assert {name: path.stat().st_mtime_ns for name, path in paths.items()} == stamps
    assert not [p for p in (tmp_path / "mtcnn").iterdir() if p.suffix != ".onnx"]  # no temp left
    for path in paths.values():
        assert unsupported_operators(path.read_bytes()) == set()


def test_a_damaged_cached_file_is_exported_again(tmp_path: Path) -> None:
    paths = onnx_files(tmp_path)
    paths["onet"].write_bytes(b"half a file")
    networks = OnnxRuntimeNetworks(tmp_path, threads=1)
    crops = np.zeros((2, 3, 48, 48), np.float32)
    assert [output.shape for output in networks.onet(crops)] == [(2, 4), (2, 10), (2,)]
    assert onnx_files(tmp_path)["onet"].stat().st_size > 100_000


def test_onnx_networks_compute_what_torch_computes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    ort_networks, torch_networks = OnnxRuntimeNetworks(tmp_path, threads=1), TorchNetworks()
    inputs = {
        "pnet": rng.uniform(-1, 1, (2, 3, 37, 53)).astype(np.float32),  # any height and width
        "rnet": rng.uniform(-1, 1, (5, 3, 24, 24)).astype(np.float32),
        "onet": rng.uniform(-1, 1, (3, 3, 48, 48)).astype(np.float32),
    }
    for name, images in inputs.items():
        got = getattr(ort_networks, name)(images)
        expected = getattr(torch_networks, name)(images)
        for a, b in zip(got, expected, strict=True):
            assert a.shape == b.shape
            assert np.allclose(a, b, atol=1e-5), name


def test_backend_choice() -> None:
    assert resolve_backend("torch") == "torch"
    assert resolve_backend("onnxruntime") == "onnxruntime"
    assert resolve_backend("auto", "cpu") == "onnxruntime"
    assert resolve_backend("torch", "cuda") == "torch"
    if not onnxruntime_cuda():  # a GPU without onnxruntime-gpu: torch runs MTCNN there
        assert resolve_backend("auto", "cuda") == ("tensorrt" if tensorrt_available() else "torch")
        with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
            resolve_backend("onnxruntime", "cuda")
    if not tensorrt_available():
        with pytest.raises(RuntimeError, match="cannot run"):
            resolve_backend("tensorrt", "cuda")
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        resolve_backend("tensorrt", "cpu")


@pytest.mark.skipif(
    not tensorrt_available(),
    reason="TensorRT is not installed or there is no CUDA GPU (DESIGN.md: no TensorRT here)",
)
def test_tensorrt_matches_facenet_pytorch(data_root: Path, tmp_path: Path) -> None:
    photos = lfw_photos(data_root, 8)
    reference = shared_detector().detect(photos)
    detector = FaceDetector(min_score=0.0, backend="tensorrt", device="cuda", cache=tmp_path)
    for index, (expected, got) in enumerate(zip(reference, detector.detect(photos), strict=True)):
        assert_same_faces(expected, got, f"LFW photo {index}")
    engines = sorted((tmp_path / "mtcnn" / "engines").glob("*.engine"))
    assert len(engines) == 3
    again = FaceDetector(min_score=0.0, backend="tensorrt", device="cuda", cache=tmp_path)
    again.detect(photos[:1])
    assert sorted((tmp_path / "mtcnn" / "engines").glob("*.engine")) == engines  # cached


def test_cache_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rllfpr.faces.mtcnn_runtime import default_cache

    monkeypatch.setenv("RLLFPR_CACHE", str(tmp_path))
    assert default_cache() == tmp_path
    monkeypatch.delenv("RLLFPR_CACHE")
    assert default_cache() == Path(os.path.expanduser("~/.cache/rllfpr"))


@pytest.mark.integration
def test_the_agent_detects_with_onnxruntime_by_default(
    mqtt_broker: Endpoint, data_root: Path, tmp_path: Path
) -> None:
    """The same sequence as the tracker test of test_agent_integration, with the agent's own
    detector: `auto` picks ONNX Runtime here and finds the face on every third frame."""
    image = read_rgb(lfw_images(data_root, 1, start=100)[0])
    folder = moving_face_frames(image, tmp_path / "sequence", 12)
    factory = KeyFactory(tmp_path / "trainer")
    factory.publish(mqtt_broker, network(1), epoch=1)
    settings = agent_settings(
        mqtt_broker, factory.settings(tmp_path / "keys"), tmp_path, sequence=True, detect_every=3
    )
    assert settings.agent.detector_backend == "auto"
    recognizer = Capture(mqtt_broker, topics.shared(topics.ALL_FACES))  # faces need a subscriber
    agent = started(Agent(settings, str(folder)))
    try:
        assert agent.preparer.detector.backend == "onnxruntime"
        agent.run()
        assert agent.drain(20)
    finally:
        agent.close()
        recognizer.close()
    assert agent.metrics.value("faces_detected") == 4  # frames 0, 3, 6 and 9
    assert agent.metrics.value("faces_published") >= 1
