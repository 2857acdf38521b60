from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from rllfpr.cli import app
from rllfpr.keys import bundle, material

runner = CliRunner()


def test_keys_init_writes_private_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "init", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "keys" / "signing.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys" / "fleet.key").stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["keys", "init", str(tmp_path / "keys")])
    assert again.exit_code == 2
    assert "refusing to overwrite" in again.output


def test_keys_inspect_verifies_a_bundle(tmp_path: Path) -> None:
    runner.invoke(app, ["keys", "init", str(tmp_path)])
    signer = material.load_signing_key(tmp_path / "signing.pem")
    fleet = material.load_fleet_key(tmp_path / "fleet.key")
    data = bundle.seal(
        epoch=3,
        scope="fleet",
        recognizer_id="r3",
        architecture={"levels": 5},
        state={"w": np.ones(4, np.float32)},
        signing_key=signer,
        fleet_key=fleet,
    )
    (tmp_path / "e3.bundle").write_bytes(data)
    arguments = ["keys", "inspect", str(tmp_path / "e3.bundle")]
    arguments += [
        "--trusted",
        str(tmp_path / "signing.pub.pem"),
        "--fleet-key",
        str(tmp_path / "fleet.key"),
    ]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    (tmp_path / "bad.bundle").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    forged = runner.invoke(app, [*arguments[:2], str(tmp_path / "bad.bundle"), *arguments[3:]])
    assert forged.exit_code == 2
    assert "forged" in forged.output


def test_invalid_config_file_exits_with_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("mqtt:\n  prot: 1\n")
    result = runner.invoke(app, ["config", "show", "--config", str(config)])
    assert result.exit_code == 2
    assert "prot" in result.output


def test_eval_screen_writes_results(data_root: Path, tmp_path: Path) -> None:
    arguments = ["eval", "screen", "--dataset", str(data_root / "att_orl"), "--size", "32"]
    arguments += ["--levels", "2", "--max-identities", "10", "--output", str(tmp_path)]
    result = runner.invoke(app, arguments, env={"RLLFPR_CACHE": str(tmp_path / "cache")})
    assert result.exit_code == 0, result.output
    screen = json.loads((tmp_path / "screen.json").read_text())
    assert screen["identities"] == 10
    assert screen["nearest_neighbour_rank1"]["original_grayscale"] > 0.5
    assert (tmp_path / "samples.png").stat().st_size > 0


def _rendered(table: object) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_accuracy_tables_show_the_plain_photo_attack_and_skip_tta_blocks() -> None:
    from trainer.cli import _accuracy_table

    pairs = {"accuracy": 0.7, "roc_auc": 0.8, "tar_at_far_1e-2": 0.2, "tar_at_far_1e-3": 0.05}
    view1 = {
        "protocol": "View 1",
        "verification_view1": {
            "original": pairs,
            "scrambled": pairs,
            "plain_photo_pairs": {
                "key_a_recognizer_scrambled_first_original_recognizer_plain_second": pairs
                | {"accuracy": 0.61}
            },
            "tta": {"copies": {"views": 18}, "original": pairs, "scrambled": pairs},
        },
    }
    text = _rendered(_accuracy_table(view1))
    assert "original model's plain photo" in text
    assert "61.0%" in text
    assert "10-fold" in text  # runs from before the column existed show "-" there
    scrambled = pairs | {"accuracy_10fold": 0.913}
    folded = {
        "protocol": "View 1",
        "verification_view1": {"original": pairs, "scrambled": scrambled},
    }
    assert "91.3%" in _rendered(_accuracy_table(folded))

    rank1 = {
        "accuracy": 0.5,
        "accuracy_ci95": [0.4, 0.6],
        "misidentification": 0.01,
        "f1": 0.4,
        "chance": 0.006,
    }
    closed = {
        "protocol": "closed set",
        "closed_set": {
            "original": rank1,
            "scrambled": rank1,
            "scrambled_float32_input": rank1,
            "cross_key": {
                "key_a_recognizer_and_gallery_key_b_probes": rank1,
                "key_b_recognizer_stolen_key_a_gallery": rank1,
                "key_a_templates_key_b_recognizer_probes": rank1,
            },
            "plain_photo_gallery": {
                "key_a_recognizer_probes_original_recognizer_gallery": rank1 | {"accuracy": 0.33}
            },
        },
    }
    text = _rendered(_accuracy_table(closed))
    assert "plain-photo gallery" in text
    assert "key-A templates, key-B model's probes" in text
    assert "33.0%" in text


def test_keys_rotate_without_a_rotation_config_says_which_setting(tmp_path: Path) -> None:
    env = {"RLLFPR_KEYS__FLEET_KEY_FILE": str(tmp_path / "fleet.key")}
    result = runner.invoke(app, ["keys", "rotate"], env=env)
    assert result.exit_code == 2
    assert "trainer.rotation_config" in result.output
    assert "deploy/config/rotation.yaml" in result.output


def test_demo_without_the_face_data_names_rllfpr_data(tmp_path: Path) -> None:
    env = {"RLLFPR_DATA": str(tmp_path / "nowhere"), "RLLFPR_CACHE": str(tmp_path / "cache")}
    result = runner.invoke(app, ["demo", "--output", str(tmp_path / "out")], env=env)
    assert result.exit_code == 2
    assert "RLLFPR_DATA" in result.output
    assert str(tmp_path / "nowhere" / "lfw") in result.output.replace("\n", "")
    assert not (tmp_path / "cache").exists()  # nothing started, nothing written
