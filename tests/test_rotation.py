"""Key rotation on the trainer: gated epoch builds and signed key-state messages on the broker."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rllfpr import mqtt
from rllfpr.config import MqttSettings
from rllfpr.keys import bundle, envelope, material
from rllfpr.local_services import Endpoint
from rllfpr.models.store import ModelStore
from rllfpr.wire import topics
from rllfpr.wire.messages import KeyAnnouncement, KeyState, Revocation
from tests.support.mqtt import Capture
from trainer import rotation
from trainer.data import Aligner, list_identities
from trainer.experiment import identity_screen, make_key, output_correlation
from trainer.rotation import EpochBuilder, GateError, KeyPublisher, RotationConfig, split_corpus

SIDE = 32


def _config(**changes: object) -> RotationConfig:
    document = {
        "experiment": {
            "name": "rotation-test",
            "data": {"dataset": "att_orl", "alignment": "resize", "size": SIDE},
            "scrambler": {"levels": 2, "widths": [4, 8]},
            "recognizer": {"backbone": "compact", "input_size": SIDE, "embedding_dim": 16},
            "augment": {"shift": 1},
            "optim": {"epochs": 2, "batch_size": 32, "warmup_epochs": 0},
            "loss": {"distill_weight": 1.0},
            "device": "cpu",
        },
        "fine_tune_epochs": 1,
        "calibration_people": 0.5,
        "accuracy_floor": 0.0,
        "cross_key_margin": 1.0,
        "max_abs_correlation": 1.0,  # a 2-level SN's output keeps some correlation
    }
    return RotationConfig.model_validate(document | changes)


@pytest.fixture(scope="module")
def corpus(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> object:
    orl = data_root / "att_orl"
    return Aligner(orl, tmp_path_factory.mktemp("cache"), SIDE, "resize").load(
        list_identities(orl, max_identities=12, max_images=6), progress=False
    )


def _builder(corpus: object, tmp_path: Path, config: RotationConfig) -> EpochBuilder:
    return EpochBuilder(
        config,
        corpus,  # type: ignore[arg-type]
        ModelStore(tmp_path / "models"),
        Ed25519PrivateKey.generate(),
        material.FleetKey.generate(),
        tmp_path / "trainer",
    )


def test_corpus_split_keeps_calibration_people_out_of_training(corpus: object) -> None:
    split = split_corpus(corpus, _config())  # type: ignore[arg-type]
    calibration_people = set(split.calibration.names)
    assert len(calibration_people) == 6
    assert not calibration_people & set(split.fit.names)
    assert split.held_out.names == split.fit.names
    assert sorted(set(split.fit.labels.tolist())) == list(range(6))  # contiguous for CosFace


def test_two_epochs_build_fine_tune_and_seal_opened_bundles(corpus: object, tmp_path: Path) -> None:
    builder = _builder(corpus, tmp_path, _config())
    first = builder.build("fleet", 1, previous_key=None)
    report = first.report.document()
    written = tmp_path / "trainer" / "fleet" / "epoch-00000001.json"
    assert json.loads(written.read_text()) == report
    order = ["scope", "epoch", "fine_tuned", "key_screen", "gates", "open_set", "recognizer_id"]
    assert list(report) == order
    assert not report["fine_tuned"]
    assert report["gates"]["passed"]
    assert report["gates"]["unsupported_onnx_operators"] == []
    assert report["key_screen"]["draws"] == 3  # limit 1.0 passes any key: 3 candidates
    assert len(report["key_screen"]["identity_screen"]) == 3
    trusted = {
        material.signer_id(builder.signing_key.public_key()): builder.signing_key.public_key()
    }
    opened = bundle.open_bundle(
        first.bundle, trusted, {builder.fleet_key.key_id: builder.fleet_key}
    )
    assert opened.header.recognizer_id == first.recognizer_id
    assert builder.store.info("fleet", 1).recognizer_id == first.recognizer_id
    assert builder.bundle_path("fleet", 1).read_bytes() == first.bundle
    assert builder.bundle_path("fleet", 1).stat().st_mode & 0o077 == 0

    from rllfpr.models.scrambler import ScramblerNetwork

    first_key = ScramblerNetwork.from_key_state(opened.architecture, opened.state)
    second = builder.build("fleet", 2, previous_key=first_key)
    second_report = second.report.document()
    assert second_report["fine_tuned"]
    assert "template_linkage_accuracy" not in report["gates"]
    assert "template_linkage" not in report["gates"]["checks"]
    assert 0 <= second_report["gates"]["template_linkage_accuracy"] <= 1
    assert "template_linkage" in second_report["gates"]["checks"]
    # checkpoints (they record the secret seed) and the teacher are gone once an epoch is built
    assert sorted(p.name for p in (tmp_path / "trainer" / "fleet").iterdir()) == [
        "epoch-00000001.json",
        "epoch-00000001.rlkb",
        "epoch-00000002.json",
        "epoch-00000002.rlkb",
    ]
    assert second.recognizer_id != first.recognizer_id
    assert builder.store.epochs("fleet") == [1, 2]
    calibration = builder.store.info("fleet", 2).calibration
    assert -1 <= calibration.threshold <= 1
    assert calibration.target_fpir == pytest.approx(0.01)


def test_an_epoch_with_score_norm_ships_its_own_cohort_and_calibrates_in_s_norm(
    corpus: object, tmp_path: Path
) -> None:
    from rllfpr.models.scrambler import ScramblerNetwork
    from trainer.train import FaceView, embed

    config = _config(score_norm={"cohort_faces": 20, "top_k": 5})
    builder = _builder(corpus, tmp_path, config)
    built = builder.build("fleet", 1, previous_key=None)
    model = builder.store.load("fleet", 1)
    assert model.norm is not None
    assert model.norm.cohort.shape == (20, 16)
    assert model.norm.top_k == 5
    assert model.info.calibration.scores == "s_norm"
    open_set = built.report.open_set
    assert open_set is not None
    assert open_set.calibration == model.info.calibration
    assert open_set.raw_cosine is not None  # what normalizing gained, in the report
    assert open_set.raw_cosine.calibration.scores == "cosine"
    assert open_set.raw_cosine.raw_cosine is None
    # the cohort is 20 of the epoch's training faces through the epoch's own SN and recognizer
    opened = bundle.open_bundle(
        built.bundle,
        {material.signer_id(builder.signing_key.public_key()): builder.signing_key.public_key()},
        {builder.fleet_key.key_id: builder.fleet_key},
    )
    key = ScramblerNetwork.from_key_state(opened.architecture, opened.state)
    faces = builder.split.fit.faces
    embedded = embed(model.recognizer, FaceView("scrambled", key, torch.device("cpu")), faces)
    distances = 1 - model.norm.cohort @ embedded.T
    assert np.allclose(distances.min(axis=1), 0, atol=1e-4)
    assert len(set(distances.argmin(axis=1).tolist())) == 20


def test_score_norm_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="top_k 60 exceeds cohort_faces 50"):
        _config(score_norm={"cohort_faces": 50, "top_k": 60})
    with pytest.raises(ValueError, match="cohort_size"):
        _config(score_norm={"cohort_size": 50})


def test_each_epoch_trains_its_teacher_and_recognizer_from_a_fresh_seed(
    corpus: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeds: list[tuple[str, int, bool]] = []
    real_train = rotation.train

    def recording_train(
        config: Any, data: Any, view: Any, key: Any, run_dir: Any, **options: Any
    ) -> Any:
        seeds.append((view, config.seed, options.get("initial") is not None))
        return real_train(config, data, view, key, run_dir, **options)

    monkeypatch.setattr(rotation, "train", recording_train)
    builder = _builder(corpus, tmp_path, _config(fine_tune_epochs=0))
    first = builder.build("fleet", 1, previous_key=None)
    previous_key = make_key(builder.config.experiment, 5, builder.split.fit.faces)
    second = builder.build("fleet", 2, previous_key=previous_key)
    assert not second.report.fine_tuned
    assert [view for view, _, _ in seeds] == ["original", "scrambled"] * 2
    assert not any(fine_tuned for _, _, fine_tuned in seeds)
    first_seed, second_seed = seeds[0][1], seeds[2][1]
    assert seeds[1][1] == first_seed  # the teacher's seed is its student's
    assert seeds[3][1] == second_seed
    assert first_seed != second_seed
    assert builder.config.experiment.seed not in (first_seed, second_seed)
    assert first.recognizer_id != second.recognizer_id


def test_template_linkage_gate_matches_the_old_gallery_with_new_embeddings(
    corpus: object,
) -> None:
    config = _config()
    split = split_corpus(corpus, config)  # type: ignore[arg-type]
    key = make_key(config.experiment, 3, split.fit.faces)
    other = make_key(config.experiment, 4, split.fit.faces)
    from rllfpr.models.recognizer import Recognizer

    torch.manual_seed(0)
    recognizer = Recognizer(config.experiment.recognizer).eval()
    # an "old epoch" identical to the new one links every template: linkage = accuracy
    gates = rotation._gates(config, recognizer, key, other, split, (recognizer, key))
    assert gates.template_linkage_accuracy == gates.closed_set_accuracy
    assert gates.closed_set_accuracy > gates.majority_class_rate  # raw features carry identity
    strict = _config(cross_key_margin=0.0)
    failed = rotation._gates(strict, recognizer, key, other, split, (recognizer, key))
    assert failed.checks.template_linkage is False
    assert not failed.passed


def test_a_failed_gate_publishes_nothing(
    corpus: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every epoch draws a fresh secret seed, so a real model may score 100 % on the few
    # held-out faces and pass any floor: the scores the gates see are made 0 here (cross-key
    # and linkage then pass; held-out accuracy fails)
    real = rotation.closed_set
    monkeypatch.setattr(rotation, "closed_set", lambda *a: real(*a) | {"accuracy": 0.0})
    builder = _builder(corpus, tmp_path, _config(accuracy_floor=0.5))
    with pytest.raises(GateError, match="accuracy"):
        builder.build("fleet", 1, previous_key=None)
    assert builder.store.epochs("fleet") == []
    assert not builder.bundle_path("fleet", 1).exists()
    assert (tmp_path / "trainer" / "fleet" / "epoch-00000001.json").exists()  # the report stays


def test_keys_whose_output_keeps_correlation_are_redrawn_then_refused(
    corpus: object, tmp_path: Path
) -> None:
    builder = _builder(corpus, tmp_path, _config(max_abs_correlation=1e-6, key_draws=3))
    with pytest.raises(GateError, match="none of 3 keys passed the key screen"):
        builder.build("fleet", 1, previous_key=None)
    assert builder.store.epochs("fleet") == []
    assert not builder.bundle_path("fleet", 1).exists()


def test_a_key_that_fails_the_screen_is_replaced_by_one_that_passes(
    corpus: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config()
    split = split_corpus(corpus, config)  # type: ignore[arg-type]

    def worst(seed: int) -> float:
        key = make_key(config.experiment, seed, split.fit.faces)
        return max(abs(r) for r in output_correlation(key, split.held_out.faces).values())

    by_correlation = sorted(range(1, 6), key=worst)
    good, bad = by_correlation[0], by_correlation[-1]
    limit = (worst(good) + worst(bad)) / 2
    seeds = iter([bad, good])
    monkeypatch.setattr(rotation, "random_key_seed", lambda: next(seeds))
    builder = _builder(corpus, tmp_path, _config(max_abs_correlation=limit, key_candidates=1))
    key, screen = builder.draw_key()
    assert screen.draws == 2
    assert screen.max_abs_correlation[0] > limit >= screen.max_abs_correlation[1]
    assert key.seed == good


def test_of_the_keys_that_pass_the_one_keeping_most_identity_is_kept(
    corpus: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(key_candidates=3)
    split = split_corpus(corpus, config)  # type: ignore[arg-type]
    fit, held_out = split.fit, split.held_out

    def screened(seed: int) -> float:
        key = make_key(config.experiment, seed, fit.faces)
        return identity_screen(key, fit.faces, fit.labels, held_out.faces, held_out.labels)

    scores = {seed: screened(seed) for seed in (11, 12, 13, 14)}
    seeds = iter(scores)
    monkeypatch.setattr(rotation, "random_key_seed", lambda: next(seeds))
    key, screen = _builder(corpus, tmp_path, config).draw_key()
    assert screen.draws == 3  # every key passes (limit 1.0): three candidates, then stop
    assert screen.identity_screen == [round(scores[seed], 4) for seed in (11, 12, 13)]
    assert key.seed == max((11, 12, 13), key=lambda seed: scores[seed])
    assert screen.chosen == [11, 12, 13].index(key.seed)
    assert len(set(scores.values())) > 1  # the screen tells these keys apart


def _retained(endpoint: Endpoint, scope: str) -> dict[str, bytes]:
    """Every retained message under the scope's key topics."""
    with Capture(endpoint, topics.keys_of_scope(scope), name="reader") as reader:
        time.sleep(1.0)  # retained messages arrive right after the subscription
        return {message.topic: message.payload for message in reader.all()}


def test_stage_activate_revoke_leave_the_right_retained_messages(mqtt_broker: Endpoint) -> None:
    signing = Ed25519PrivateKey.generate()
    fleet = material.FleetKey.generate()
    scope = f"site{uuid.uuid4().hex[:6]}"
    sealed = bundle.seal(
        epoch=7,
        scope=scope,
        recognizer_id="r7",
        architecture={"scrambler": {}, "seed": 1},
        state={"w": np.zeros(2, np.float32)},
        signing_key=signing,
        fleet_key=fleet,
    )
    settings = MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port)
    client = mqtt.make_client(settings, "trainer", client_id=f"trainer-{uuid.uuid4().hex[:8]}")
    mqtt.connect(client, settings, clean_start=True)
    publisher = KeyPublisher(client, signing)
    trusted = {material.signer_id(signing.public_key()): signing.public_key()}
    try:
        publisher.stage(sealed)
        retained = _retained(mqtt_broker, scope)
        assert retained[topics.key_bundle(scope, 7)] == sealed
        announcement = retained[topics.key_announcements(scope, 7)]
        staged = envelope.open_signed(announcement, KeyAnnouncement, trusted)
        assert staged.state is KeyState.STAGED

        publisher.activate(sealed, grace_s=30)
        announcement = _retained(mqtt_broker, scope)[topics.key_announcements(scope, 7)]
        active = envelope.open_signed(announcement, KeyAnnouncement, trusted)
        assert (active.state, active.grace_s) == (KeyState.ACTIVE, 30)

        publisher.revoke(scope, 7)
        retained = _retained(mqtt_broker, scope)
        assert topics.key_bundle(scope, 7) not in retained
        assert topics.key_announcements(scope, 7) not in retained
        revoked = retained[topics.key_revocation(scope, 7)]
        assert envelope.open_signed(revoked, Revocation, trusted).epoch == 7
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.slow
def test_cli_rotates_activates_and_revokes(
    mqtt_broker: Endpoint, data_root: Path, tmp_path: Path
) -> None:
    import yaml
    from typer.testing import CliRunner

    from rllfpr.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["keys", "init", str(tmp_path / "keys")]).exit_code == 0
    rotation = tmp_path / "rotation.yaml"
    rotation.write_text(yaml.safe_dump(_config().model_dump(mode="json")))
    scope = f"site{uuid.uuid4().hex[:6]}"
    config = tmp_path / "rllfpr.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": str(data_root),
                "cache": str(tmp_path / "cache"),
                "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port},
                "keys": {
                    "scope": scope,
                    "fleet_key_file": str(tmp_path / "keys" / "fleet.key"),
                    "trusted_signers": [str(tmp_path / "keys" / "signing.pub.pem")],
                },
                "recognizer": {"model_store": str(tmp_path / "models")},
                "trainer": {
                    "signing_key_file": str(tmp_path / "keys" / "signing.pem"),
                    "rotation_config": str(rotation),
                    "work_directory": str(tmp_path / "trainer"),
                },
            }
        )
    )

    def invoke(*arguments: str) -> str:
        result = runner.invoke(app, ["keys", *arguments, "--config", str(config)])
        assert result.exit_code == 0, result.output
        return result.output

    assert "staged epoch 1" in invoke("rotate")
    assert "activated epoch 2" in invoke("rotate", "--activate")
    status = invoke("status")
    assert "staged" in status
    assert "active" in status
    invoke("revoke", "1")
    status = invoke("status")
    assert "revoked" in status
    assert ModelStore(tmp_path / "models").epochs(scope) == [2]
    assert not (tmp_path / "trainer" / scope / "epoch-00000001.rlkb").exists()
    refused = runner.invoke(app, ["keys", "activate", "1", "--config", str(config)])
    assert refused.exit_code != 0
    assert "not built here" in refused.output


def _teacher_config(**changes: object) -> RotationConfig:
    """The tiny recipe regressing a face teacher (128-d, no CosFace, no distillation)."""
    config = _config(fine_tune_epochs=0, **changes)
    experiment = config.experiment.model_dump(mode="json")
    experiment["recognizer"]["embedding_dim"] = 128
    experiment["loss"] = {"distill_weight": 0.0, "cosface_weight": 0.0}
    experiment["teacher"] = {"weight": 1.0, "rotation_seeds": [5, 6]}  # public: never used
    return config.model_copy(update={"experiment": type(config.experiment)(**experiment)})


def _descriptors(corpus: Any, missing: int = 0) -> np.ndarray:
    """dlib-like descriptors (a large shared component, a part per person, a little per
    photo), NaN for the first ``missing`` faces (photos without a teacher face)."""
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(128) * 3.0 / np.sqrt(128)
    people = rng.standard_normal((len(corpus.names), 128)) * 0.1
    rows = shared + people[corpus.labels] + 0.02 * rng.standard_normal((len(corpus), 128))
    rows[:missing] = np.nan
    return rows.astype(np.float32)


def test_teacher_targets_are_fitted_on_the_training_faces_only(corpus: Any) -> None:
    config = _teacher_config()
    plain = split_corpus(corpus, config)
    split = split_corpus(corpus, config, _descriptors(corpus))
    assert split.fit.sources == plain.fit.sources  # the same split, now with targets
    assert split.held_out.sources == plain.held_out.sources
    assert split.calibration.targets is None
    assert split.held_out.targets is None
    targets = split.fit.targets
    assert targets is not None
    assert np.allclose(np.linalg.norm(targets, axis=1), 1.0, atol=1e-5)
    assert np.linalg.norm(targets.mean(axis=0)) < 0.2  # centred: the shared part is gone
    # a photo the teacher found no face in is left out of training, nowhere else
    first_fit = np.flatnonzero(np.isin(corpus.sources, plain.fit.sources))[0]
    described = _descriptors(corpus, missing=first_fit + 1)
    fewer = split_corpus(corpus, config, described)
    assert plain.fit.sources[0] not in fewer.fit.sources
    assert len(fewer.fit) == len(plain.fit) - 1
    with pytest.raises(ValueError, match="teacher descriptors for"):
        split_corpus(corpus, config, _descriptors(corpus)[:-1])


def test_a_teacher_recipe_needs_the_corpus_descriptors(corpus: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="teacher_descriptors"):
        _builder(corpus, tmp_path, _teacher_config())


def test_each_epoch_regresses_targets_turned_by_its_own_secret_map(
    corpus: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[int] = []
    real_seed = rotation.random_key_seed

    def recorded_seed() -> int:
        drawn.append(real_seed())
        return drawn[-1]

    used: list[tuple[int | None, Any, int]] = []
    real_train = rotation.train

    def recording_train(
        config: Any, data: Any, view: Any, key: Any, run_dir: Any, **options: Any
    ) -> Any:
        used.append((options.get("rotation_seed"), config.teacher.rotation_seeds, key.seed))
        assert data.targets is not None
        return real_train(config, data, view, key, run_dir, **options)

    monkeypatch.setattr(rotation, "random_key_seed", recorded_seed)
    monkeypatch.setattr(rotation, "train", recording_train)
    config = _teacher_config()
    builder = EpochBuilder(
        config,
        corpus,
        ModelStore(tmp_path / "models"),
        Ed25519PrivateKey.generate(),
        material.FleetKey.generate(),
        tmp_path / "trainer",
        _descriptors(corpus),
    )
    first = builder.build("fleet", 1, previous_key=None)
    key = rotation.open_own_bundle(
        first.bundle, builder.signing_key.public_key(), builder.fleet_key
    )
    second = builder.build("fleet", 2, previous_key=key)
    (seed_1, public_1, key_1), (seed_2, public_2, key_2) = used
    assert seed_1 is not None
    assert seed_2 is not None
    assert seed_1 != seed_2
    assert {seed_1, seed_2} <= set(drawn)  # drawn from the OS's CSPRNG, fresh each epoch
    assert public_1 is None
    assert public_2 is None
    assert not {seed_1, seed_2} & {key_1, key_2, 5, 6}  # never the SN key's seed
    aligned = second.report.gates.aligned_linkage if second.report.gates else None
    assert aligned is not None
    assert aligned.aligned_people + aligned.linked_people == 6
    # the maps' seeds are written nowhere: bundle, model store, reports, checkpoints
    secrets = [str(s).encode() for s in (seed_1, seed_2)]
    secrets += [s.to_bytes(8, order) for s in (seed_1, seed_2) for order in ("big", "little")]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".rlkb" for p in written)
    assert any(p.suffix == ".json" for p in written)
    for path in written:
        content = path.read_bytes()
        assert not any(secret in content for secret in secrets), path


def test_without_target_rotation_every_epoch_regresses_one_space(
    corpus: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[int | None] = []

    def recording_train(*args: Any, **options: Any) -> Any:
        used.append(options.get("rotation_seed"))
        raise GateError("stop after recording")  # the seed choice is all this test needs

    monkeypatch.setattr(rotation, "train", recording_train)
    builder = EpochBuilder(
        _teacher_config(target_rotation=False),
        corpus,
        ModelStore(tmp_path / "models"),
        Ed25519PrivateKey.generate(),
        material.FleetKey.generate(),
        tmp_path / "trainer",
        _descriptors(corpus),
    )
    with pytest.raises(GateError, match="stop"):
        builder.build("fleet", 1, previous_key=None)
    assert used == [None]


def test_aligned_linkage_finds_a_rotated_epoch_and_not_an_unrelated_one() -> None:
    rng = np.random.default_rng(0)
    people, photos = 40, 3
    centres = rng.standard_normal((people, 16))
    labels = np.repeat(np.arange(people), photos)
    gallery = centres[labels] + 0.05 * rng.standard_normal((people * photos, 16))
    probe_labels = np.arange(people)
    probes = centres + 0.05 * rng.standard_normal((people, 16))
    # 20 aligned people in 16 dimensions: enough to pin the whole rotation down
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    linked = rotation.aligned_linkage(gallery, gallery @ q, labels, probes @ q, probe_labels, 0)
    assert linked is not None
    assert (linked.aligned_people, linked.linked_people) == (20, 20)
    assert linked.pairing_accuracy == 1.0
    assert linked.linkage_accuracy >= 0.9
    assert linked.linkage_chance == pytest.approx(0.05)
    other = rng.standard_normal((people, 16))
    unrelated = rotation.aligned_linkage(
        gallery, other[labels], labels, other + 0.05 * rng.standard_normal((people, 16)),
        probe_labels, 0,
    )  # fmt: skip
    assert unrelated is not None
    assert unrelated.pairing_accuracy <= 0.15
    assert unrelated.linkage_accuracy <= 0.2
    assert (
        rotation.aligned_linkage(gallery[:15], gallery[:15], labels[:15], probes, labels, 0) is None
    )


def test_the_aligned_linkage_limit_is_a_gate_when_set(corpus: Any) -> None:
    config = _config(aligned_linkage_limit=0.0)
    split = split_corpus(corpus, config)
    key = make_key(config.experiment, 3, split.fit.faces)
    other = make_key(config.experiment, 4, split.fit.faces)
    from rllfpr.models.recognizer import Recognizer

    torch.manual_seed(0)
    recognizer = Recognizer(config.experiment.recognizer).eval()
    gates = rotation._gates(config, recognizer, key, other, split, (recognizer, key))
    assert gates.aligned_linkage is not None
    assert gates.checks.aligned_linkage is (gates.aligned_linkage.linkage_accuracy <= 0.0)
    report = rotation._gates(_config(), recognizer, key, other, split, (recognizer, key))
    assert report.checks.aligned_linkage is None  # measured, not a gate, by default
    assert report.aligned_linkage == gates.aligned_linkage
