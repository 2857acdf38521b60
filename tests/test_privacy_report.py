"""The whole privacy report, end to end, on a tiny ORL configuration (seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from rllfpr.cli import app
from trainer.studies.privacy.config import PrivacyConfig
from trainer.studies.privacy.report import render

TINY: dict[str, Any] = {
    "name": "tiny-privacy",
    "experiment": {
        "name": "tiny-privacy",
        "data": {
            "dataset": "att_orl",
            "alignment": "resize",
            "size": 32,
            "min_images": 10,
            "max_identities": 8,
        },
        "scrambler": {"levels": 2, "widths": [8, 16]},
        "recognizer": {"backbone": "compact", "input_size": 32, "embedding_dim": 32},
        "augment": {"flip": True, "shift": 0},
        "optim": {"lr": 0.003, "epochs": 1, "batch_size": 32, "warmup_epochs": 0},
        "loss": {"scale": 30, "margin": 0.2},
    },
    "baselines": {"eigen_components": 10, "dp_epsilon_sweep": [10.0, 1000.0]},
    "inversion": {
        "attacker_images": 40,
        "attacker_people_file": None,
        "widths": [4, 8],
        "epochs": 1,
    },
    "metrics": {"correlation_pairs": 100},
    "linkage": {"max_non_mated": 500, "bins": 20},
}


def test_privacy_config_rejects_what_cannot_be_measured() -> None:
    PrivacyConfig.model_validate(TINY)
    with pytest.raises(ValidationError, match="must include"):
        PrivacyConfig.model_validate(TINY | {"recognition": ["original"]})
    with pytest.raises(ValidationError, match="projections"):
        PrivacyConfig.model_validate(TINY | {"recognition": ["original", "rllfpr", "eigenfaces"]})
    with pytest.raises(ValidationError, match="extra"):
        PrivacyConfig.model_validate(TINY | {"unknown": 1})


@pytest.mark.slow
def test_eval_privacy_writes_the_whole_report(data_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"data": str(data_root), "cache": str(tmp_path / "cache")}))
    output = tmp_path / "results"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "privacy",
            str(config),
            "--runs",
            str(tmp_path / "runs"),
            "--output",
            str(output),
            "--config",
            str(settings),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads((output / "privacy.json").read_text())
    methods = {
        "original",
        "rllfpr",
        "aes_ecb",
        "aes_ctr",
        "arnold",
        "eigenfaces",
        "dp_eigenfaces",
        "noise",
        "partialface",
    }
    assert set(document["image_metrics"]) == methods
    assert document["image_metrics"]["original"]["fuzziness2_s4"] == 0.0
    assert document["image_metrics"]["original"]["psnr_db"] is None  # identical: +inf
    aes = document["image_metrics"]["aes_ctr"]["adjacent_correlation"]
    assert max(abs(v) for v in aes.values()) < 0.1
    assert document["image_metrics"]["arnold"]["histogram_entropy_bits"] == pytest.approx(
        document["image_metrics"]["original"]["histogram_entropy_bits"]
    )
    assert document["arnold_key_search"]["key_recovered"] == 1.0
    assert set(document["recognition"]) >= set(PrivacyConfig.model_validate(TINY).recognition)
    assert document["recognition"]["eigenfaces"]["accuracy"] > 0.5  # 8 people, 24 probes
    assert document["questionnaire"]["original"]["match_accuracy"] > 0.5
    assert set(document["inversion"]) >= {"a_victim_key", "b_own_key", "mean_attacker_face"}
    assert 0.0 <= document["unlinkability"]["keys_a_b"]["d_sys"] <= 1.0
    goals = {goal["goal"] for goal in document["goals"]}
    assert goals >= {"Fuzziness3", "D<->sys across keys (worst comparator)"}
    assert document["command"].startswith("rllfpr eval privacy")
    for name in document["figures"].values():
        assert (output / "privacy" / name).stat().st_size > 1000
    markdown = (output / "privacy.md").read_text()
    assert markdown == render(document) + "\n"
    assert "## Table 5" in markdown
    assert "D<->sys" in markdown


def test_eval_privacy_reports_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"name": "x"}))
    result = CliRunner().invoke(app, ["eval", "privacy", str(config)])
    assert result.exit_code == 2
    assert "invalid privacy config" in result.output


def test_sn_variants_are_measured_against_the_same_questions(
    data_root: Path, tmp_path: Path
) -> None:
    from trainer.studies.privacy.evaluation import victims
    from trainer.studies.privacy.sn_variants import measure_variants
    from trainer.studies.privacy.sn_variants import render as render_variants

    config = PrivacyConfig.model_validate(
        TINY
        | {
            "sn_variants": {"1 level": {"levels": 1, "widths": [8]}},
            "copy_means": [{"flip": True, "shift": 1}],
        }
    )
    split = victims(config, data_root, tmp_path / "cache")
    variants = measure_variants(config, split, tmp_path / "runs")
    mean_row = "experiment's SN, mean of 18 copies moved back"
    assert list(variants) == ["experiment's SN", mean_row, "1 level"]
    assert variants[mean_row]["overrides"] == {"flip": True, "shift": 1}
    for row in variants.values():
        assert row["questionnaire"]["questions"] == len(split.test)
        assert 0.0 <= row["questionnaire"]["match_accuracy"] <= 1.0
        assert row["fuzziness3"] > 0.5  # scrambled, not the original
    document = {
        "variants": variants,
        "config_file": "tiny.yaml",
        "hardware": "test",
        "seconds": 1.0,
        "config": config.model_dump(mode="json"),
    }
    table = render_variants(document)
    assert "| 1 level" in table
    assert f"| {mean_row} `" in table
