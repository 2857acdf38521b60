"""The face teacher (dlib, trainer only), its cache, the target transform and the student loss."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.config import ExperimentConfig
from trainer.corpus import describe_faces, fill_teacher_cache
from trainer.data import AlignedFaces, Aligner, list_identities, list_unlabeled
from trainer.targets import TargetSpace, orthogonal_map, rotated
from trainer.teacher import DIM, FaceTeacher, TeacherError
from trainer.train import FaceView, embed, train


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _dlib_like(count: int, seed: int = 0) -> np.ndarray:
    """Descriptors like dlib's: one large shared component plus a small personal part."""
    rng = np.random.default_rng(seed)
    shared = _unit(rng.standard_normal(DIM)) * 3.0
    return (shared + rng.standard_normal((count, DIM)) * 0.1).astype(np.float32)


def test_centering_removes_the_shared_component() -> None:
    descriptors = _dlib_like(400)
    raw = _unit(descriptors)
    assert (raw[:200] * raw[200:]).sum(1).mean() > 0.8  # two random faces look alike raw
    space = TargetSpace.fit(descriptors)
    targets = space(descriptors)
    assert np.allclose(np.linalg.norm(targets, axis=1), 1.0, atol=1e-5)
    assert np.linalg.norm(targets.mean(0)) < 0.15  # the shared direction is gone
    assert abs((targets[:200] * targets[200:]).sum(1).mean()) < 0.05


def test_whitening_evens_out_the_target_variance() -> None:
    rng = np.random.default_rng(1)
    scales = np.linspace(0.01, 1.0, DIM)
    descriptors = (np.ones(DIM) + rng.standard_normal((2000, DIM)) * scales).astype(np.float32)

    def spread(whiten: float) -> float:
        targets = TargetSpace.fit(descriptors, whiten)(descriptors)
        values = np.linalg.eigvalsh(np.cov(targets.T))
        return float(values[-1] / values[0])

    assert spread(1.0) < 3 < 30 < spread(0.0)


def test_target_space_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="descriptors"):
        TargetSpace.fit(np.zeros((1, DIM)))
    with pytest.raises(ValueError, match="zero"):
        TargetSpace.fit(np.zeros((3, DIM)))
    space = TargetSpace.fit(_dlib_like(50), 0.5)
    space.save(tmp_path / "space.npz")
    again = TargetSpace.load(tmp_path / "space.npz")
    assert np.array_equal(again(_dlib_like(5, 2)), space(_dlib_like(5, 2)))


def test_q_e_is_orthogonal_deterministic_and_secret_per_seed() -> None:
    q = orthogonal_map(7, DIM)
    assert np.allclose(q @ q.T, np.eye(DIM), atol=1e-10)
    assert np.array_equal(q, orthogonal_map(7, DIM))
    other = orthogonal_map(8, DIM)
    assert np.abs(q - other).max() > 0.1
    assert abs(np.trace(q.T @ other)) / DIM < 0.2  # unrelated maps, not near each other
    targets = TargetSpace.fit(_dlib_like(100))(_dlib_like(100))
    turned = rotated(targets, 7)
    assert np.allclose(turned @ turned.T, targets @ targets.T, atol=1e-5)  # cosines kept
    assert np.abs((turned * targets).sum(1)).mean() < 0.3  # yet each target moved
    assert rotated(targets, None) is targets
    with pytest.raises(ValueError, match="non-negative"):
        orthogonal_map(-1, DIM)


TINY_STUDENT: dict[str, Any] = {
    "name": "tiny-student",
    "protocol": "verification_view1",
    "data": {"dataset": "att_orl", "alignment": "resize", "size": 32},
    "scrambler": {"levels": 2, "widths": [8, 16]},
    "recognizer": {"backbone": "compact", "embedding_dim": 128},
    "augment": {"flip": False, "shift": 0},
    "optim": {"lr": 0.003, "epochs": 6, "batch_size": 20, "warmup_epochs": 1},
    "loss": {"cosface_weight": 0.0},
    "teacher": {"weight": 1.0, "rotation_seeds": [5, 6]},
}


@pytest.fixture(scope="module")
def orl_with_targets(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> AlignedFaces:
    """ORL's first 10 people at 32 px, a random target per person, the last 3 unlabeled."""
    identities = dict(list(list_identities(data_root / "att_orl").items())[:10])
    cache = tmp_path_factory.mktemp("cache")
    faces = Aligner(data_root / "att_orl", cache, 32, "resize").load(identities, progress=False)
    people = _unit(np.random.default_rng(0).standard_normal((10, DIM))).astype(np.float32)
    faces.targets = people[faces.labels]
    faces.labels = np.where(faces.labels < 7, faces.labels, -1)
    return faces


def test_the_student_learns_the_teacher_targets_through_the_scrambler(
    orl_with_targets: AlignedFaces, tmp_path: Path
) -> None:
    from trainer.experiment import make_key

    config = ExperimentConfig.model_validate(TINY_STUDENT)
    key = make_key(config, 1, orl_with_targets.faces)
    result = train(config, orl_with_targets, "scrambled", key, tmp_path, progress=False)
    losses = [entry["loss"] for entry in result.history]
    assert losses[-1] < 0.3 * losses[0], losses
    view = FaceView("scrambled", key, torch.device("cpu"))
    embeddings = embed(result.recognizer, view, orl_with_targets.faces)
    assert orl_with_targets.targets is not None
    wanted = rotated(orl_with_targets.targets, 5)  # Q_e of key A's rotation seed
    cosine = (embeddings * wanted).sum(1)
    assert cosine[orl_with_targets.labels < 0].mean() > 0.6  # unlabeled faces: teacher alone
    assert abs((embeddings * orl_with_targets.targets).sum(1).mean()) < 0.2  # not unturned


def test_cosface_skips_unlabeled_faces(orl_with_targets: AlignedFaces, tmp_path: Path) -> None:
    config = ExperimentConfig.model_validate(
        TINY_STUDENT | {"loss": {"cosface_weight": 0.5}, "optim": {"epochs": 1, "batch_size": 20}}
    )
    result = train(config, orl_with_targets, "original", None, tmp_path, progress=False)
    assert np.isfinite(result.history[0]["loss"])
    labeled_faces = int((orl_with_targets.labels >= 0).sum())
    assert result.history[0]["train_accuracy"] * labeled_faces == round(
        result.history[0]["train_accuracy"] * labeled_faces
    )  # a share of the labeled faces only


def test_teacher_config_is_checked() -> None:
    with pytest.raises(ValueError, match="embedding_dim"):
        ExperimentConfig.model_validate(
            TINY_STUDENT | {"recognizer": {"backbone": "compact", "embedding_dim": 64}}
        )
    unlabeled = {**TINY_STUDENT["data"], "extra_folders": [{"dataset": "utkface", "pad": 0.25}]}
    with pytest.raises(ValueError, match=r"teacher\.weight"):
        ExperimentConfig.model_validate(TINY_STUDENT | {"data": unlabeled, "teacher": {}})
    with pytest.raises(ValueError, match="extra"):
        ExperimentConfig.model_validate({"name": "x", "data": {"extra_folder": []}})


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("teacher-cache")


@pytest.fixture(scope="module")
def teacher(teacher_cache: Path) -> FaceTeacher:
    return FaceTeacher(teacher_cache)


def _lfw(data_root: Path, name: str, number: int = 1) -> Path:
    return data_root / "lfw" / name / f"{name}_{number:04d}.jpg"


def test_a_cached_descriptor_is_returned_identical_without_recomputing(
    data_root: Path, teacher: FaceTeacher, teacher_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = _lfw(data_root, "Aaron_Eckhart")
    first = teacher.describe(photo)
    assert first is not None
    assert first.shape == (DIM,)
    assert first.dtype == np.float32
    assert len(list(teacher_cache.rglob("*.npy"))) == 1

    def fail(_image: np.ndarray) -> None:
        raise AssertionError("recomputed a cached descriptor")

    fresh = FaceTeacher(teacher_cache)
    monkeypatch.setattr(fresh, "describe_image", fail)
    again = fresh.describe(photo)
    assert again is not None
    assert np.array_equal(again, first)


def test_same_person_is_closer_than_another_person(data_root: Path, teacher: FaceTeacher) -> None:
    a1, a2, b = (
        teacher.describe(_lfw(data_root, "Colin_Powell", 1)),
        teacher.describe(_lfw(data_root, "Colin_Powell", 2)),
        teacher.describe(_lfw(data_root, "Gloria_Macapagal_Arroyo", 1)),
    )
    assert a1 is not None
    assert a2 is not None
    assert b is not None
    assert np.linalg.norm(a1 - a2) < 0.6 < np.linalg.norm(a1 - b)  # dlib's own threshold


def test_the_teacher_describes_the_central_face_not_a_bystander(
    data_root: Path, teacher: FaceTeacher
) -> None:
    target = np.asarray(Image.open(_lfw(data_root, "Colin_Powell")).convert("RGB"))
    bystander = np.asarray(Image.open(_lfw(data_root, "Gloria_Macapagal_Arroyo")).convert("RGB"))
    small = np.asarray(Image.fromarray(bystander).resize((125, 125)))
    scene = np.zeros((250, 500, 3), np.uint8)
    scene[:, 125:375] = target  # the central face
    scene[:125, :125] = small  # a bystander in the corner
    in_scene = teacher.describe_image(scene)
    alone = teacher.describe_image(target)
    other = teacher.describe_image(bystander)
    assert in_scene is not None
    assert alone is not None
    assert other is not None
    assert np.linalg.norm(in_scene - alone) < 0.3 < 0.6 < np.linalg.norm(in_scene - other)


def test_a_broken_image_gives_a_clear_error(tmp_path: Path, teacher: FaceTeacher) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(TeacherError, match=r"broken\.jpg: not a readable image"):
        teacher.describe(broken)
    with pytest.raises(TeacherError, match="no such file"):
        teacher.describe(tmp_path / "missing.jpg")
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((120, 120, 3), np.uint8)).save(blank)
    assert teacher.describe(blank) is None  # no face: no target, and that is cached too
    assert teacher.describe(blank) is None
    found, failures = teacher.describe_all([broken, blank], progress=False)
    assert not found
    assert len(failures) == 2
    assert "no face found" in failures[1]


def test_worker_processes_fill_the_cache_with_what_one_process_computes(
    data_root: Path, tmp_path: Path
) -> None:
    people = {"Colin_Powell": (1, 2, 3), "Gloria_Macapagal_Arroyo": (1, 2), "Aaron_Eckhart": (1,)}
    root = tmp_path / "people"
    for name, numbers in people.items():
        (root / name).mkdir(parents=True)
        for number in numbers:
            shutil.copy(_lfw(data_root, name, number), root / name)
    (root / "Aaron_Eckhart" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    identities = list_identities(root)
    sources = [f"{name}/{path.name}" for name, paths in identities.items() for path in paths]
    parallel, serial = tmp_path / "parallel", tmp_path / "serial"

    filled = fill_teacher_cache(root, identities, parallel, workers=2, photos_per_worker=1)
    assert filled == {"photos_not_cached": 7, "workers": 2}
    entries = [np.load(path) for path in parallel.rglob("*.npy")]
    assert sorted(len(entry) for entry in entries) == [0] + [DIM] * 6  # broken.jpg: no face
    again = fill_teacher_cache(root, identities, parallel, workers=2, photos_per_worker=1)
    assert again == {"photos_not_cached": 0, "workers": 0}

    from_workers = describe_faces(sources, root, identities, parallel, workers=1)
    in_process = describe_faces(sources, root, identities, serial, workers=1)
    assert np.isnan(from_workers[sources.index("Aaron_Eckhart/broken.jpg")]).all()
    np.testing.assert_array_equal(from_workers, in_process)  # NaN rows compare equal too
    assert (~np.isnan(from_workers).any(axis=1)).sum() == 6
    with pytest.raises(ValueError, match="workers"):
        fill_teacher_cache(root, identities, parallel, workers=-1)


@pytest.mark.parametrize("stage", ["teacher", "alignment"])
def test_the_cache_fill_benchmark_compares_both_runs_on_the_same_photos(
    stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_cache_fill.py"
    output = tmp_path / "fill.json"
    argv = [str(script), "--stage", stage, "--photos", "3", "--workers", "2"]
    monkeypatch.setattr("sys.argv", [*argv, "--size", "32", "--output", str(output)])
    runpy.run_path(str(script), run_name="__main__")
    result = json.loads(output.read_text())
    assert (result["photos"], result["without_face"], result["agreement"]["differing"]) == (3, 0, 0)
    assert result["stage"] == stage
    assert result["workers"]["processes"] == 0  # 3 photos: not worth a worker's start-up
    assert result["speedup"] > 0
    assert result["one_process"]["photos_per_s"] > 0 < result["workers"]["photos_per_s"]
    assert "| one process (baseline) | 1 |" in output.with_suffix(".md").read_text()


def test_one_detection_serves_every_size_and_nested_or_flat_folders(
    data_root: Path, tmp_path: Path
) -> None:
    nested = tmp_path / "people"
    for view, number in (("frontal", 1), ("profile", 2)):
        (nested / "p1" / view).mkdir(parents=True)
        shutil.copy(_lfw(data_root, "Colin_Powell", number), nested / "p1" / view / "01.jpg")
    identities = list_identities(nested)
    faces = Aligner(nested, tmp_path / "cache", 48, "mtcnn").load(identities, progress=False)
    assert faces.sources == ["p1/frontal/01.jpg", "p1/profile/01.jpg"]
    other_size = Aligner(nested, tmp_path / "cache", 64, "mtcnn")
    other_size._detector = "never used"  # type: ignore[assignment]  # the cached detection is
    assert other_size.load(identities, progress=False).faces.shape == (2, 64, 64, 3)
    flat = list_unlabeled(data_root / "utkface", group=4000)
    assert list(flat) == ["part-0000", "part-0001", "part-0002"]
    assert sum(len(v) for v in flat.values()) == len(list((data_root / "utkface").iterdir()))


def test_mirrored_scrambles_give_what_augment_then_the_scrambler_give(
    orl_with_targets: AlignedFaces,
) -> None:
    from trainer.config import AugmentConfig
    from trainer.experiment import make_key
    from trainer.train import MirroredScrambles, augment, mirrors_suffice, to_unit

    config = ExperimentConfig.model_validate(TINY_STUDENT | {"augment": {"flip": True, "shift": 0}})
    assert mirrors_suffice(config)
    assert not mirrors_suffice(config.model_copy(update={"augment": AugmentConfig(shift=1)}))
    key = make_key(config, 1, orl_with_targets.faces)
    view = FaceView("scrambled", key, torch.device("cpu"))
    index = np.arange(0, 100, 7)
    mirrors = MirroredScrambles(orl_with_targets, view, batch=32)
    cached = mirrors.inputs(index, True, torch.Generator().manual_seed(3))
    faces = to_unit(orl_with_targets.faces[index], torch.device("cpu"))
    direct = view(augment(faces, config.augment, torch.Generator().manual_seed(3)))
    assert torch.equal(cached, direct)
