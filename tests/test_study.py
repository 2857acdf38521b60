"""The design study's pack survives the trip, and a tiny study runs end to end on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from trainer.config import DataConfig
from trainer.data import Aligner, list_identities
from trainer.report import merge
from trainer.studies.design import (
    Pack,
    StudyConfig,
    StudyRun,
    Variant,
    accuracy_run,
    encode_face,
    key_spread,
    report,
)


@pytest.fixture(scope="module")
def orl_pack(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Pack:
    orl = data_root / "att_orl"
    faces = Aligner(orl, tmp_path_factory.mktemp("cache"), 32, "resize").load(
        list_identities(orl, max_identities=8, max_images=6), progress=False
    )
    encoded = {s: encode_face(f) for s, f in zip(faces.sources, faces.faces, strict=True)}
    people = sorted({s.split("/")[0] for s in faces.sources})
    train_people, pair_people = people[:4], people[4:]
    pair_faces = [s for s in faces.sources if s.split("/")[0] in pair_people]
    by_person = {p: [s for s in pair_faces if s.startswith(p + "/")] for p in pair_people}
    same = [[by_person[p][0], by_person[p][1], True] for p in pair_people]
    different = [[by_person[a][0], by_person[b][0], False] for a, b in pairwise(pair_people)]
    parts = {
        "closed_set_size": 32,
        "view1_size": 32,
        "closed_set": faces.sources,
        "view1": {
            "train": [s for s in faces.sources if s.split("/")[0] in train_people],
            "pair_faces": pair_faces,
            "train_pairs": same[:2] + different[:2],
            "test_pairs": same[2:] + different[2:],
            "missing_pairs": 0,
        },
    }
    return Pack(encoded, parts)


def test_pack_round_trip_keeps_every_face_within_jpeg_error(orl_pack: Pack, tmp_path: Path) -> None:
    path = tmp_path / "pack.npz"
    orl_pack.save(path)
    loaded = Pack.load(path)
    assert loaded.parts == orl_pack.parts
    assert loaded.faces == orl_pack.faces
    closed = loaded.closed_set(32)
    assert closed.faces.shape == (48, 32, 32, 3)
    assert len(closed.names) == 8
    view1 = loaded.view1(32)
    assert len(view1.train.names) == 4
    assert len(view1.test_pairs) == 3  # two same, one different
    assert loaded.closed_set(16).faces.shape[1:] == (16, 16, 3)
    with pytest.raises(ValueError, match="packed at 32 px"):
        loaded.closed_set(64)


@pytest.mark.slow
def test_tiny_study_screens_chooses_and_confirms(orl_pack: Pack, tmp_path: Path) -> None:
    study = StudyConfig.model_validate(
        {
            "base": {
                "data": {"dataset": "att_orl", "min_images": 2, "test_fraction": 0.34},
                "scrambler": {"levels": 2, "widths": [4, 8]},
                "recognizer": {"backbone": "compact", "embedding_dim": 16},
                "optim": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0},
                "tta": {"flip": True},
                "device": "cpu",
            },
            "variants": [
                {"name": "baseline", "change": "none"},
                {
                    "name": "distill",
                    "change": "distillation",
                    "overrides": {"loss": {"distill_weight": 1.0}},
                },
            ],
            "screen_size": 32,
            "full_size": 32,
            "max_abs_correlation": 1.0,
        }
    )
    StudyRun(study, orl_pack, tmp_path).run()
    recorded = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    # with test-time augmentation each evaluation is first recorded without it, so a time
    # limit during the long 18-copy evaluation still leaves the plain result
    assert [entry["stage"] for entry in recorded] == [
        "start",
        "screen-plain",
        "screen",
        "screen-plain",
        "screen",
        "chosen",
        "confirm-plain",
        "confirm",
        "confirm-plain",
        "confirm",
    ]
    for plain, full in pairwise(recorded):
        if plain["stage"].endswith("-plain"):
            assert plain["headline"] == full["headline"]  # the same models, evaluated the same
            protocol = "closed_set" if "closed_set" in plain["result"] else "verification_view1"
            assert "tta" not in plain["result"][protocol]
            assert "tta" in full["result"][protocol]
    cut = [e for e in recorded if e["stage"] != "confirm"]  # as if stopped in the last two
    assert report(cut).count("| confirm-plain |") == 1  # the closed set's plain result shows
    assert "| View 1 |" in report(cut)
    entries = [e for e in recorded if not e["stage"].endswith("-plain")]
    stages = [entry["stage"] for entry in entries]
    assert stages == ["start", "screen", "screen", "chosen", "confirm", "confirm"]
    screens = [e for e in entries if e["stage"] == "screen"]
    chosen = entries[3]["variant"]
    assert chosen == max(screens, key=lambda e: e["headline"]["scrambled"])["variant"]
    closed = entries[4]["headline"]
    assert set(closed["cross_key"]) == {
        "key_a_recognizer_and_gallery_key_b_probes",
        "key_b_recognizer_stolen_key_a_gallery",
        "key_a_templates_key_b_recognizer_probes",
    }
    assert 0 <= closed["scrambled"] <= 1
    attack = entries[4]["result"]["closed_set"]["plain_photo_gallery"]
    assert 0 <= attack["key_a_recognizer_probes_original_recognizer_gallery"]["accuracy"] <= 1
    pairs = entries[5]["result"]["verification_view1"]["plain_photo_pairs"]
    assert (
        0
        <= pairs["key_a_recognizer_scrambled_first_original_recognizer_plain_second"]["accuracy"]
        <= 1
    )
    assert 0 <= entries[5]["headline"]["original"] <= 1
    # one original-face model per recipe: the distillation variant reused the baseline's
    assert len(list((tmp_path / "originals").iterdir())) == 2  # screen recipe + View 1 recipe
    assert np.isfinite(list(screens[0]["adjacent_correlation"].values())).all()
    table, with_tta = report(entries).split("With test-time augmentation")
    assert table.count("| screen |") == 2
    assert table.count("| confirm |") == 1
    assert "| View 1 |" in table
    # test-time views: a second evaluation of the same models, beside the plain one
    assert entries[4]["result"]["closed_set"]["tta"]["copies"]["views"] == 2
    assert set(entries[5]["result"]["verification_view1"]["tta"]) == {
        "copies",
        "original",
        "scrambled",
    }
    assert with_tta.count("| 2 |") == 4  # 2 screens, 2 confirms
    assert set(screens[0]["tta_mean_adjacent_correlation"]) == {
        "horizontal",
        "vertical",
        "diagonal",
    }


def test_pack_closed_set_narrows_like_list_identities(orl_pack: Pack) -> None:
    spec = DataConfig(min_images=2, max_images=3, max_identities=5)
    narrowed = orl_pack.closed_set(32, spec)
    assert len(narrowed.names) == 5
    assert narrowed.faces.shape == (15, 32, 32, 3)
    whole = orl_pack.closed_set(32)
    for name in narrowed.names:  # each person's first images in file order
        assert [s for s in narrowed.sources if s.startswith(name + "/")] == sorted(
            s for s in whole.sources if s.startswith(name + "/")
        )[:3]
    with pytest.raises(ValueError, match="no one in the pack has 7"):  # six each
        orl_pack.closed_set(32, DataConfig(min_images=7))


def test_pack_gives_unlabeled_faces_of_view1_people_outside_the_experiment(
    orl_pack: Pack,
) -> None:
    people = sorted({s.split("/")[0] for s in orl_pack.parts["view1"]["train"]})
    unlabeled = orl_pack.unlabeled(32, DataConfig(unlabeled_faces=5), people[:2])
    assert unlabeled is not None
    assert unlabeled.faces.shape == (5, 32, 32, 3)
    assert set(unlabeled.names) <= set(people[2:])
    assert orl_pack.unlabeled(32, DataConfig(), people[:2]) is None
    with pytest.raises(ValueError, match="no unlabeled faces at 64 px"):
        orl_pack.unlabeled(64, DataConfig(unlabeled_faces=5), people[:2])
    # `pack --unlabeled N` faces are at the closed-set size, View 1's here at 16 px only
    packed_extra = [s for s in orl_pack.parts["closed_set"] if s.split("/")[0] not in people][:3]
    extra = Pack(orl_pack.faces, orl_pack.parts | {"view1_size": 16, "unlabeled": packed_extra})
    from_extra = extra.unlabeled(32, DataConfig(unlabeled_faces=5), people)
    assert from_extra is not None
    assert from_extra.sources == packed_extra


def test_key_spread_screens_each_variant_over_several_keys(orl_pack: Pack) -> None:
    study = StudyConfig.model_validate(
        {
            "base": {
                "data": {"min_images": 2},
                "scrambler": {"levels": 2, "widths": [4, 8]},
                "device": "cpu",
            },
            "variants": [{"name": "baseline", "change": "none"}],
            "screen_size": 32,
        }
    )
    table = key_spread(study, orl_pack, seeds=3)
    row = table.splitlines()[2].split(" | ")
    assert row[0] == "| baseline"
    assert row[1].endswith(" of 3")
    values = [float(v) for v in row[2].split(", ")]
    assert len(values) == 3
    assert all(0 <= v <= 1 for v in values)
    identity = [float(v.removesuffix(" %")) for v in row[3].rstrip(" |").split(", ")]
    assert len(identity) == 3
    assert all(100 / 40 < v <= 100 for v in identity)  # identity survives: above ORL's chance


def test_variants_have_unique_names_and_can_share_trained_models() -> None:
    base = {"data": {"dataset": "att_orl"}}
    with pytest.raises(ValidationError, match="unique"):
        StudyConfig.model_validate(
            {"base": base, "variants": [{"name": "a", "change": "x"}, {"name": "a", "change": "y"}]}
        )
    study = StudyConfig.model_validate(
        {
            "base": base,
            "variants": [
                {"name": "a", "change": "none"},
                {
                    "name": "a-mirrored",
                    "change": "mirrored copies at test time",
                    "overrides": {"tta": {"flip": True}},
                    "models_of": "a",
                },
            ],
        }
    )
    plain, mirrored = (study.experiment(v, 32, "closed_set") for v in study.variants)
    assert plain.name == mirrored.name == "a-closed_set-32"  # one run folder, one set of models
    assert mirrored.tta.views == 2


def test_view1_runs_leave_unlabeled_faces_out() -> None:
    study = StudyConfig.model_validate(
        {
            "base": {"loss": {"distill_weight": 1.0}, "data": {"unlabeled_faces": 100}},
            "variants": [{"name": "baseline", "change": "none"}],
        }
    )
    variant = study.variants[0]
    assert study.experiment(variant, 64, "closed_set").data.unlabeled_faces == 100
    assert study.experiment(variant, 64, "verification_view1").data.unlabeled_faces == 0


def test_screen_only_study_stops_after_choosing(orl_pack: Pack, tmp_path: Path) -> None:
    study = StudyConfig.model_validate(
        {
            "base": {
                "data": {"min_images": 2, "max_identities": 4, "test_fraction": 0.34},
                "scrambler": {"levels": 2, "widths": [4, 8]},
                "recognizer": {"backbone": "compact", "embedding_dim": 16},
                "augment": {"brightness": 0.1, "contrast": 0.2},
                "optim": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0},
                "device": "cpu",
            },
            "variants": [
                {
                    "name": "nobody",
                    "change": "no one qualifies",
                    "overrides": {"data": {"min_images": 99}},
                },
                {"name": "baseline", "change": "none"},
            ],
            "screen_size": 32,
            "confirm": False,
        }
    )
    StudyRun(study, orl_pack, tmp_path).run()
    entries = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [entry["stage"] for entry in entries] == ["start", "failed", "screen", "chosen"]
    assert "no one in the pack has 99" in entries[1]["error"]  # recorded; the study went on
    assert entries[2]["headline"]["chance"] == pytest.approx(1 / 4)
    assert entries[3]["variant"] == "baseline"
    assert "Failed: nobody (no one in the pack has 99" in report(entries)


def test_unscreened_study_confirms_its_first_variant_on_the_named_protocols(
    orl_pack: Pack, tmp_path: Path
) -> None:
    study = StudyConfig.model_validate(
        {
            "base": {
                "data": {"min_images": 2, "max_identities": 4, "test_fraction": 0.34},
                "scrambler": {"levels": 2, "widths": [4, 8]},
                "recognizer": {"backbone": "compact", "embedding_dim": 16},
                "optim": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0},
                "device": "cpu",
            },
            "variants": [
                {"name": "deployed", "change": "none"},
                {"name": "never-run", "change": "not screened"},
            ],
            "full_size": 32,
            "view1_size": 32,
            "screen": False,
            "confirm_protocols": ["verification_view1"],
        }
    )
    StudyRun(study, orl_pack, tmp_path).run()
    entries = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(entry["stage"], entry.get("variant")) for entry in entries] == [
        ("start", None),
        ("confirm", "deployed"),
    ]
    assert "verification_view1" in entries[1]["result"]
    table = report(entries)
    assert "| 10-fold: original |" in table  # View 1 beside its threshold-free measures
    assert "| deployed | 32 |" in table
    # a closed-set confirmation that cannot start within its budget is recorded as skipped
    late = study.model_copy(
        update={"confirm_protocols": ["closed_set"], "confirm_closed_set_budget_s": 0.0}
    )
    StudyRun(late, orl_pack, tmp_path / "late").run()
    lines = (tmp_path / "late" / "results.jsonl").read_text().splitlines()
    skipped = [json.loads(line) for line in lines]
    assert [entry["stage"] for entry in skipped] == ["start", "skipped"]
    assert "deployed (closed-set confirmation)" in report(skipped)
    # exported as an accuracy file that trainer.report merges like `rllfpr eval accuracy`'s
    run = accuracy_run(study, entries, "deployed", "scripts/study-parallel ...")
    assert run["config"]["name"] == "deployed-verification_view1-32"
    assert run["config"]["optim"]["epochs"] == 1
    assert run["verification_view1"] == entries[1]["result"]["verification_view1"]
    exported = tmp_path / "exported.json"
    exported.write_text(json.dumps(run))
    assert merge([exported])["command"] == ["scripts/study-parallel ..."]
    with pytest.raises(ValueError, match="never-run"):
        accuracy_run(study, entries, "never-run", "")
    with pytest.raises(ValueError, match="confirm_protocols"):
        StudyConfig.model_validate({**study.model_dump(), "confirm_protocols": ["view1"]})


@pytest.mark.slow
def test_study_parallel_runs_studies_side_by_side_and_stops_them_at_the_limit(
    orl_pack: Pack, tmp_path: Path
) -> None:
    pack = tmp_path / "pack.npz"
    orl_pack.save(pack)
    configs = []
    for name, epochs in (("quick", 1), ("slow", 10_000)):
        base = {
            "data": {"min_images": 2, "max_identities": 4, "test_fraction": 0.34},
            "scrambler": {"levels": 2, "widths": [4, 8]},
            "recognizer": {"backbone": "compact", "embedding_dim": 16},
            "optim": {"epochs": epochs, "batch_size": 8, "warmup_epochs": 0},
            "device": "cpu",
        }
        study = {
            "base": base,
            "variants": [{"name": name, "change": "none"}],
            "screen_size": 32,
            "confirm": False,
        }
        configs.append(tmp_path / f"{name}.yaml")
        configs[-1].write_text(yaml.safe_dump(study))
    root = Path(__file__).resolve().parents[1]
    env = os.environ | {"TMPDIR": str(tmp_path), "PYTHONPATH": str(root)}
    done = subprocess.run(
        ["bash", str(root / "scripts" / "study-parallel"), str(pack), str(tmp_path / "out"), "45"]
        + [str(config) for config in configs],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=240,
    )
    assert done.returncode == 1, done.stderr  # the slow study was stopped at its limit
    assert "slow: exit 124" in done.stdout
    quick = (tmp_path / "out" / "quick" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["stage"] for line in quick] == ["start", "screen", "chosen"]
    with tarfile.open(tmp_path / "out" / "logs.tgz") as logs:
        names = logs.getnames()
    assert "./logs/slow.log" in names  # the stopped study's log comes back
    assert any(name.startswith("./slow/") and name.endswith("train_log.jsonl") for name in names)


def _screened(name: str, scrambled: float, correlation: float, overrides: dict[str, Any]) -> Any:
    entry = {"headline": {"scrambled": scrambled}, "adjacent_correlation": {"h": correlation}}
    return Variant(name=name, change=name, overrides=overrides), entry


def test_combined_variant_merges_the_private_gains_larger_gain_winning(tmp_path: Path) -> None:
    study = StudyConfig.model_validate({"base": {}, "variants": [], "max_abs_correlation": 0.1})
    run = StudyRun(study, Pack({}, {}), tmp_path)
    screened = [
        _screened("baseline", 0.50, 0.0, {}),
        _screened("small", 0.505, 0.0, {"optim": {"epochs": 99}}),
        _screened("a", 0.60, 0.05, {"loss": {"distill_weight": 1.0}, "augment": {"shift": 2}}),
        _screened("b", 0.70, -0.08, {"loss": {"distill_weight": 10.0}}),
        _screened("leaky", 0.90, 0.3, {"scrambler": {"levels": 2}}),
    ]
    combined = run.combine(screened)
    assert combined is not None
    assert combined.change == "b + a"
    assert combined.overrides == {"loss": {"distill_weight": 10.0}, "augment": {"shift": 2}}
    assert run.choose(screened).name == "b"  # "leaky" fails the privacy screen
    assert run.combine(screened[:3]) is None  # one helpful change: nothing to combine


def test_key_b_model_can_start_from_its_own_seed_and_teacher(
    orl_pack: Pack, tmp_path: Path
) -> None:
    import torch

    from trainer.config import ExperimentConfig
    from trainer.experiment import closed_set_protocol

    config = ExperimentConfig.model_validate(
        {
            "name": "own-init",
            "data": {"dataset": "att_orl", "size": 32, "min_images": 2, "test_fraction": 0.34},
            "scrambler": {"levels": 2, "widths": [4, 8], "input_size": 32},
            "recognizer": {"backbone": "compact", "embedding_dim": 16, "input_size": 32},
            "optim": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0},
            "loss": {"distill_weight": 1.0},
            "key_b_init": "own",
            "device": "cpu",
        }
    )
    result = closed_set_protocol(config, orl_pack.closed_set(32), tmp_path)
    assert set(result["training"]) == {"original", "scrambled", "original_key_b", "scrambled_key_b"}
    for folder in ("original-key-b", "scrambled-key-b-own"):
        saved = torch.load(tmp_path / folder / "checkpoint.pt", weights_only=False)["config"]
        assert saved["seed"] == config.seed + 1
    closed = result["closed_set"]
    assert "key_a_templates_key_b_recognizer_probes" in closed["cross_key"]
    assert set(closed["plain_photo_gallery"]) == {
        "key_a_recognizer_probes_original_recognizer_gallery",
        "key_b_recognizer_probes_original_recognizer_gallery",
    }
