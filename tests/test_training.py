"""Tiny, real training runs on ORL: the method learns far above chance in seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional

from rllfpr.faces.pixels import to_unit
from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.models.scrambler import ScramblerConfig
from trainer.config import AugmentConfig, ExperimentConfig, TTAConfig, identity
from trainer.data import Aligner, list_identities, load_other_people, split_per_identity
from trainer.evaluate import closed_set
from trainer.experiment import make_key, tta_mean_correlation, tta_mean_pixels
from trainer.losses import FaceReconstruction, copy_consistency
from trainer.metrics import adjacent_correlation
from trainer.train import (
    FaceView,
    augment,
    comparable_config,
    embed,
    moved,
    outputs_of,
    reconstruction_tap,
    train,
    tta_copies,
)

TINY: dict[str, Any] = {
    "name": "tiny",
    "data": {"dataset": "att_orl", "alignment": "resize", "size": 32, "min_images": 10},
    "scrambler": {"levels": 2, "widths": [8, 16]},
    "recognizer": {"backbone": "compact", "input_size": 32, "embedding_dim": 64},
    "augment": {"flip": True, "shift": 0},
    "optim": {"lr": 0.003, "epochs": 8, "batch_size": 32, "warmup_epochs": 1},
    "loss": {"scale": 30, "margin": 0.2},
}


@pytest.fixture(scope="module")
def orl(data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    identities = list_identities(data_root / "att_orl", min_images=10)
    faces = Aligner(data_root / "att_orl", cache, size=32, method="resize").load(
        identities, progress=False
    )
    train_index, test_index = split_per_identity(faces.labels, 0.3, seed=0)
    return faces.subset(train_index), faces.subset(test_index)


@pytest.mark.slow
@pytest.mark.parametrize("view", ["original", "scrambled"])
def test_tiny_training_on_orl_beats_chance_by_a_wide_margin(orl, view, tmp_path: Path) -> None:
    train_data, test_data = orl
    config = ExperimentConfig.model_validate(TINY)
    key = make_key(config, 1, train_data.faces) if view == "scrambled" else None
    result = train(config, train_data, view, key, tmp_path / view, progress=False)
    face_view = FaceView(view, key, torch.device("cpu"))
    metrics = closed_set(
        embed(result.recognizer, face_view, train_data.faces),
        train_data.labels,
        embed(result.recognizer, face_view, test_data.faces),
        test_data.labels,
    )
    assert metrics["chance"] == pytest.approx(1 / 40)
    assert metrics["accuracy"] >= 0.4, metrics  # chance is 2.5 %


def test_training_resumes_from_its_checkpoint(orl, tmp_path: Path) -> None:
    train_data, _ = orl
    config = ExperimentConfig.model_validate({**TINY, "optim": {**TINY["optim"], "epochs": 2}})
    first = train(config, train_data, "original", None, tmp_path, progress=False)
    assert [h["epoch"] for h in first.history] == [1, 2]
    longer = config.model_copy(update={"optim": config.optim.model_copy(update={"epochs": 3})})
    resumed = train(longer, train_data, "original", None, tmp_path, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]  # only epoch 3 was trained
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 3
    evaluated_otherwise = longer.model_copy(update={"tta": TTAConfig(flip=True)})
    again = train(evaluated_otherwise, train_data, "original", None, tmp_path, progress=False)
    assert len(again.history) == 3  # test-time views change evaluation only: nothing retrained
    other = longer.model_copy(update={"seed": 5})
    with pytest.raises(ValueError, match="different experiment"):
        train(other, train_data, "original", None, tmp_path, progress=False)


def test_checkpoints_are_spaced_out_but_the_last_epoch_is_always_kept(
    orl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_data, _ = orl
    monkeypatch.setattr("trainer.train.CHECKPOINT_INTERVAL_S", 1e9)
    config = ExperimentConfig.model_validate({**TINY, "optim": {**TINY["optim"], "epochs": 2}})
    saved: list[int] = []
    real_save = torch.save

    def save(state: dict[str, Any], path: Path) -> None:
        saved.append(state["epoch"])
        real_save(state, path)

    monkeypatch.setattr("trainer.train.torch.save", save)
    train(config, train_data, "original", None, tmp_path, progress=False)
    assert saved == [2]  # epoch 1 was not written, the final epoch was
    # a run cut after epochs that were logged but not checkpointed trains them again, and its
    # log is rewritten to match what the checkpoint kept
    with (tmp_path / "train_log.jsonl").open("a") as log_file:
        log_file.write('{"epoch": 3, "view": "original"}\n')
    longer = config.model_copy(update={"optim": config.optim.model_copy(update={"epochs": 3})})
    resumed = train(longer, train_data, "original", None, tmp_path, progress=False)
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "train_log.jsonl").open()]
    assert logged == [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert saved == [2, 3]


def _agreement(student: Recognizer, teacher: Recognizer, key, faces: np.ndarray) -> float:
    """Mean cosine between the student on scrambled faces and the teacher on the originals."""
    cpu = torch.device("cpu")
    scrambled = embed(student, FaceView("scrambled", key, cpu), faces)
    original = embed(teacher, FaceView("original", None, cpu), faces)
    return float((scrambled * original).sum(1).mean())


@pytest.mark.slow
def test_unlabeled_faces_of_other_people_pull_the_student_toward_the_teacher(
    data_root: Path, tmp_path: Path
) -> None:
    orl = data_root / "att_orl"
    aligner = Aligner(orl, tmp_path / "cache", 32, "resize")
    people = sorted(list_identities(orl, min_images=10))[:5]  # few labels, many other faces
    labeled = aligner.load(list_identities(orl, max_identities=5), progress=False)
    assert labeled.names == people
    unlabeled = load_other_people(orl, aligner, set(people), 300, seed=0)
    assert unlabeled is not None
    assert len(unlabeled) == 300
    assert not set(unlabeled.names) & set(people)
    again = load_other_people(orl, aligner, set(people), 300, seed=0)
    assert again is not None
    assert again.sources == unlabeled.sources
    assert load_other_people(orl, aligner, set(people), 0, seed=0) is None
    base = {**TINY, "loss": {**TINY["loss"], "distill_weight": 5.0}}
    config = ExperimentConfig.model_validate(base)
    with_unlabeled = ExperimentConfig.model_validate(
        {**base, "data": {**TINY["data"], "unlabeled_faces": 300}}
    )
    key = make_key(config, 1, labeled.faces)
    teacher = train(config, labeled, "original", None, tmp_path / "o", progress=False).recognizer
    plain = train(config, labeled, "scrambled", key, tmp_path / "p", False, teacher=teacher)
    helped = train(
        with_unlabeled,
        labeled,
        "scrambled",
        key,
        tmp_path / "u",
        False,
        teacher=teacher,
        unlabeled=unlabeled,
    )
    held_out = unlabeled.faces  # seen without labels by `helped` only
    gained = _agreement(helped.recognizer, teacher, key, held_out)
    baseline = _agreement(plain.recognizer, teacher, key, held_out)
    print(f"agreement with the teacher: {baseline:.3f} -> {gained:.3f}")
    assert gained > baseline + 0.15  # measured: +0.29 and +0.33 with seeds 0 and 1
    with pytest.raises(ValueError, match="must go together"):
        train(with_unlabeled, labeled, "scrambled", key, tmp_path / "x", False, teacher=teacher)


def test_unlabeled_faces_need_distillation_and_the_closed_set() -> None:
    with pytest.raises(ValueError, match=r"set loss\.distill_weight"):
        ExperimentConfig.model_validate({**TINY, "data": {**TINY["data"], "unlabeled_faces": 10}})
    with pytest.raises(ValueError, match="closed-set protocol only"):
        ExperimentConfig.model_validate(
            {
                **TINY,
                "protocol": "verification_view1",
                "data": {**TINY["data"], "unlabeled_faces": 10},
                "loss": {"distill_weight": 1.0},
            }
        )


def test_flip_augmentation_flips_or_keeps_each_face() -> None:
    faces = torch.rand(16, 3, 16, 16)
    generator = torch.Generator().manual_seed(0)
    flipped = augment(faces, AugmentConfig(flip=True, shift=0), generator)
    kept = [torch.equal(out, face) for face, out in zip(faces, flipped, strict=True)]
    mirrored = [torch.equal(out, face.flip(-1)) for face, out in zip(faces, flipped, strict=True)]
    assert all(k or m for k, m in zip(kept, mirrored, strict=True))
    assert any(kept)
    assert any(mirrored)  # an augmentation that does nothing fails here


def test_shift_augmentation_is_an_integer_translation_with_replicated_border() -> None:
    faces = torch.rand(6, 3, 16, 16)
    shifted = augment(faces, AugmentConfig(flip=False, shift=2), torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(faces, (2, 2, 2, 2), mode="replicate")
    offsets = []
    for face, out in zip(padded, shifted, strict=True):
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out, face[:, dy : dy + 16, dx : dx + 16])
        ]
        assert found  # an integer translation of the face, edges replicated
        offsets.append(found[0])
    assert len(set(offsets)) > 1  # the offsets vary: an augmentation that does nothing fails


def test_tta_copies_are_every_offset_then_every_mirrored_offset() -> None:
    faces = torch.rand(2, 3, 16, 16)
    spec = TTAConfig(flip=True, shift=1)
    copies = list(tta_copies(faces, spec))
    assert len(copies) == spec.views == 18
    assert torch.equal(copies[4], faces)
    assert torch.equal(copies[13], faces.flip(-1))
    down_right = moved(faces, 1, 1)  # copies[8]: offset (+1, +1)
    assert torch.equal(copies[8], down_right)
    assert torch.equal(down_right[..., 1:, 1:], faces[..., :-1, :-1])
    assert torch.equal(down_right[..., 0, 1:], faces[..., 0, :-1])  # replicated top edge


def test_tta_embedding_of_a_mirrored_face_equals_the_face_s(orl) -> None:
    """With the mirrored copy, a face and its mirror image get the same embedding (each copy
    scrambled on its own), and the default spec is the plain embedding."""
    train_data, _ = orl
    config = ExperimentConfig.model_validate(TINY)
    view = FaceView("scrambled", make_key(config, 1, train_data.faces), torch.device("cpu"))
    recognizer = Recognizer(config.recognizer).eval()
    faces = train_data.faces[:8]
    mirrored = np.ascontiguousarray(faces[:, :, ::-1])
    spec = TTAConfig(flip=True)
    np.testing.assert_allclose(
        embed(recognizer, view, faces, tta=spec),
        embed(recognizer, view, mirrored, tta=spec),
        atol=1e-5,
    )
    plain = embed(recognizer, view, faces)
    assert np.abs(plain - embed(recognizer, view, mirrored)).max() > 0.01
    np.testing.assert_allclose(plain, embed(recognizer, view, faces, tta=TTAConfig()))


def test_rotation_and_scale_keep_shape_and_change_pixels_reproducibly() -> None:
    faces = torch.rand(3, 3, 16, 16)
    spec = AugmentConfig(flip=False, shift=0, rotate=10, scale=0.1)
    first = augment(faces, spec, torch.Generator().manual_seed(2))
    again = augment(faces, spec, torch.Generator().manual_seed(2))
    assert first.shape == faces.shape
    assert torch.equal(first, again)
    assert not torch.allclose(first, faces)
    identity = augment(faces, AugmentConfig(flip=False, shift=0), torch.Generator())
    assert torch.equal(identity, faces)


def test_brightness_and_contrast_are_one_affine_map_of_each_face_within_bounds() -> None:
    faces = torch.rand(8, 3, 16, 16) * 0.5 + 0.25  # no clipping at these settings
    spec = AugmentConfig(flip=False, shift=0, brightness=0.1, contrast=0.2)
    out = augment(faces, spec, torch.Generator().manual_seed(3))
    for face, changed in zip(faces, out, strict=True):
        mean = face.mean()
        factor = (changed - changed.mean()).std() / (face - mean).std()
        assert 0.8 - 1e-4 <= factor <= 1.2 + 1e-4
        offset = changed.mean() - mean
        assert abs(offset) <= 0.1 + 1e-5
        assert torch.allclose(changed, (face - mean) * factor + mean + offset, atol=1e-5)
    assert not torch.allclose(out, faces)
    bright = augment(torch.ones(2, 3, 4, 4), spec, torch.Generator().manual_seed(4))
    assert bright.max() <= 1.0  # stays a valid image


@pytest.mark.parametrize("backbone", ["compact", "compact_residual", "resnet18", "densenet121"])
def test_backbones_give_unit_embeddings(backbone: str) -> None:
    recognizer = Recognizer(
        RecognizerConfig(backbone=backbone, input_size=32, embedding_dim=16)
    ).eval()
    embeddings = recognizer(torch.randn(2, 1, 32, 32))
    assert embeddings.shape == (2, 16)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2), atol=1e-5)


def test_experiment_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="epochz"):
        ExperimentConfig.model_validate({**TINY, "optim": {"epochz": 3}})


def test_closed_set_metrics_follow_their_definitions() -> None:
    gallery = np.eye(3)[[0, 0, 1, 1, 2, 2]]
    labels = np.array([0, 0, 1, 1, 2, 2])
    probes = np.eye(3)[[0, 1, 1, 2]]  # person 0's probe is taken for person 1
    metrics = closed_set(gallery, labels, probes, np.array([0, 0, 1, 2]))
    assert metrics["accuracy"] == pytest.approx(0.75)
    # FP rates: person 0: 0/2, person 1: 1/3 (one of three foreign probes), person 2: 0/3.
    assert metrics["misidentification"] == pytest.approx((0 + 1 / 3 + 0) / 3)


class _GreyKey(torch.nn.Module):
    """Stands in for an SN whose wire pixels are the grey face: moving a face and moving its
    'scramble' back must then give the face again."""

    config = ScramblerConfig(input_size=20)  # an RGB key, as far as its input goes

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def scramble(self, faces: torch.Tensor) -> torch.Tensor:
        return (faces.mean(dim=1) * 255).round().to(torch.uint8)


def test_tta_mean_moves_every_copy_back_before_averaging() -> None:
    faces = (np.random.default_rng(0).random((5, 20, 20, 3)) * 255).astype(np.uint8)
    key = _GreyKey()
    grey = key.scramble(torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255).numpy()
    spec = TTAConfig(flip=True, shift=2)
    mean = tta_mean_pixels(key, faces, spec)  # type: ignore[arg-type]
    np.testing.assert_array_equal(mean[:, 2:-2, 2:-2], grey[:, 2:-2, 2:-2])
    measured = tta_mean_correlation(key, faces, spec)  # type: ignore[arg-type]
    assert measured == adjacent_correlation(grey[:, 2:-2, 2:-2])


def test_copy_consistency_is_zero_for_equal_copies_and_turns_copies_toward_their_mean() -> None:
    face = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # two faces
    assert copy_consistency(torch.cat([face, 3 * face]), copies=2).item() == pytest.approx(0)
    apart = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)  # one face, two copies
    loss = copy_consistency(apart, copies=2)
    assert loss.item() == pytest.approx(1 - 2**-0.5)  # each copy is 45 degrees from the mean
    loss.backward()
    assert apart.grad is not None
    # gradient descent turns each copy toward the mean: (1, 0) gains a second component, ...
    assert apart.grad[0, 1].item() < 0
    assert apart.grad[1, 0].item() < 0  # ... and (0, 1) a first


def test_consistency_needs_copies() -> None:
    with pytest.raises(ValueError, match=r"set augment\.copies >= 2"):
        ExperimentConfig.model_validate({**TINY, "loss": {"consistency_weight": 1.0}})


def _single_to_mean_agreement(recognizer: Recognizer, key, faces: np.ndarray) -> float:
    """Mean cosine between one scramble's embedding and the mean embedding of 18 copies."""
    view = FaceView("scrambled", key, torch.device("cpu"))
    single = embed(recognizer, view, faces)
    mean = embed(recognizer, view, faces, tta=TTAConfig(flip=True, shift=1))
    return float((single * mean).sum(1).mean())


@pytest.mark.slow
def test_copy_consistency_brings_one_scramble_closer_to_the_test_time_mean(
    orl, tmp_path: Path
) -> None:
    train_data, test_data = orl
    copied = {**TINY, "augment": {"flip": True, "shift": 1, "copies": 2}}
    plain = ExperimentConfig.model_validate(copied)
    consistent = ExperimentConfig.model_validate(
        {**copied, "loss": {**TINY["loss"], "consistency_weight": 20.0}}
    )
    key = make_key(plain, 1, train_data.faces)
    runs = {
        name: train(config, train_data, "scrambled", key, tmp_path / name, progress=False)
        for name, config in [("plain", plain), ("consistent", consistent)]
    }
    assert all(0 < run.history[-1]["train_accuracy"] <= 1 for run in runs.values())
    agreement = {
        name: _single_to_mean_agreement(run.recognizer, key, test_data.faces)
        for name, run in runs.items()
    }
    print(f"one scramble vs the mean of 18: {agreement}")
    assert agreement["consistent"] > agreement["plain"] + 0.04  # measured: +0.075, +0.074


def test_later_fields_at_their_default_leave_an_experiment_s_identity_unchanged() -> None:
    config = ExperimentConfig.model_validate(TINY)
    document = config.model_dump(mode="json")
    before_the_fields = {
        **{k: v for k, v in document.items() if k not in ("key_b_init", "teacher", "evaluate")},
        "data": {
            k: v
            for k, v in document["data"].items()
            if k not in ("extra_folders", "exclude_names_from")
        },
        "augment": {k: v for k, v in document["augment"].items() if k != "copies"},
        "loss": {
            k: v
            for k, v in document["loss"].items()
            if k not in ("consistency_weight", "reconstruction_weight", "cosface_weight")
        },
        "scrambler": {
            k: v for k, v in document["scrambler"].items() if k not in ("input_blur", "pool_blur")
        },
    }
    assert identity(document) == before_the_fields  # cache keys of earlier runs still match
    copied = ExperimentConfig.model_validate({**TINY, "augment": {"copies": 2}})
    assert identity(copied.model_dump(mode="json"))["augment"]["copies"] == 2
    assert "copies" in document["augment"]  # the document itself is left as it was
    assert "key_b_init" in document
    own = ExperimentConfig.model_validate({**TINY, "key_b_init": "own"})
    assert identity(own.model_dump(mode="json"))["key_b_init"] == "own"


@pytest.mark.parametrize("backbone", ["compact", "compact_residual", "resnet18", "densenet121"])
def test_reconstruction_reads_the_trunk_at_a_quarter_of_the_input_side(backbone: str) -> None:
    recognizer = Recognizer(RecognizerConfig(backbone=backbone, input_size=64))
    stage, channels = reconstruction_tap(recognizer)
    with outputs_of(stage) as outputs:
        recognizer(torch.zeros(2, 1, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(2, channels, 16, 16)]  # called once


@pytest.mark.slow
def test_reconstruction_term_teaches_a_scrambled_run_to_undo_the_scramble(
    orl, tmp_path: Path
) -> None:
    train_data, test_data = orl
    config = ExperimentConfig.model_validate(
        {**TINY, "loss": {**TINY["loss"], "reconstruction_weight": 1.0}}
    )
    key = make_key(config, 1, train_data.faces)
    short = config.model_copy(update={"optim": config.optim.model_copy(update={"epochs": 4})})
    train(short, train_data, "scrambled", key, tmp_path, progress=False)
    result = train(config, train_data, "scrambled", key, tmp_path, progress=False)
    assert [h["epoch"] for h in result.history] == list(range(1, 9))  # resumed with its head
    head = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["reconstruction"]
    decoder = FaceReconstruction(reconstruction_tap(result.recognizer)[1])
    decoder.load_state_dict(head)
    cpu = torch.device("cpu")
    faces = to_unit(test_data.faces, cpu)  # people seen, images not
    stage, _ = reconstruction_tap(result.recognizer)
    with torch.no_grad(), outputs_of(stage) as outputs:
        result.recognizer(FaceView("scrambled", key, cpu)(faces))
        predicted = decoder.eval().decode(outputs[0])
    grey = functional.adaptive_avg_pool2d(FaceView("original", None, cpu)(faces), 8)
    scrambled = functional.adaptive_avg_pool2d(FaceView("scrambled", key, cpu)(faces), 8)

    def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.flatten(1) - a.flatten(1).mean(1, True), b.flatten(1) - b.flatten(1).mean(1, True)
        return float((functional.cosine_similarity(a, b, dim=1)).mean())

    print(
        f"held-out face vs prediction {correlation(predicted, grey):.3f}, "
        f"vs its scramble {correlation(scrambled, grey):.3f}"
    )
    assert correlation(predicted, grey) > 0.5  # measured: 0.84
    assert correlation(predicted, grey) > abs(correlation(scrambled, grey)) + 0.4  # -0.18


def test_original_face_models_ignore_the_scrambled_only_losses() -> None:
    plain = ExperimentConfig.model_validate(TINY).model_dump(mode="json")
    helped = ExperimentConfig.model_validate(
        {**TINY, "loss": {**TINY["loss"], "reconstruction_weight": 1.0, "distill_weight": 1.0}}
    ).model_dump(mode="json")
    assert comparable_config(plain, "original") == comparable_config(helped, "original")
    assert comparable_config(plain, "scrambled") != comparable_config(helped, "scrambled")


def test_the_teacher_s_worker_count_is_not_part_of_the_experiment() -> None:
    one, many, whitened = (
        ExperimentConfig.model_validate({**TINY, "teacher": teacher}).model_dump(mode="json")
        for teacher in ({"workers": 1}, {"workers": 8}, {"workers": 1, "whiten": 0.5})
    )
    for view in ("original", "scrambled"):
        assert comparable_config(one, view) == comparable_config(many, view)
        assert comparable_config(one, view) != comparable_config(whitened, view)


def test_an_experiment_says_its_face_side_once() -> None:
    base = {key: value for key, value in TINY.items() if key != "recognizer"}
    config = ExperimentConfig.model_validate(base | {"recognizer": {"backbone": "compact"}})
    assert config.recognizer.input_size == 32  # follows data.size
    assert config.sn_config.input_size == 32
    assert ExperimentConfig.model_validate(config.model_dump(mode="json")) == config
    with pytest.raises(ValueError, match=r"recognizer\.input_size 64 is not data\.size 32"):
        ExperimentConfig.model_validate(base | {"recognizer": {"input_size": 64}})
    with pytest.raises(ValueError, match=r"scrambler\.input_size 48 is not data\.size 32"):
        ExperimentConfig.model_validate(
            base | {"scrambler": {**TINY["scrambler"], "input_size": 48}}
        )
