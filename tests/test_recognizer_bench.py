"""The benchmark's GPU embedding mode runs (tiny settings, on the CPU) and writes its JSON."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_recognizer.py"


def test_embedding_only_mode_writes_throughput_per_stem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "embedding.json"
    arguments = ["--embedding-only", "--device", "cpu", "--backbone", "compact"]
    arguments += ["--size", "32", "--batch", "4", "--seconds", "0.2", "--output", str(output)]
    monkeypatch.setattr("sys.argv", [str(SCRIPT), *arguments])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    result = json.loads(output.read_text())
    embedding = result["embedding"]
    assert (embedding["backbone"], embedding["batch"], embedding["precision"]) == (
        "compact",
        4,
        "float32",
    )
    assert set(embedding["results"]) == {"imagenet", "full_resolution"}
    assert all(stem["faces_per_s"] > 0 for stem in embedding["results"].values())
    assert result["command"].endswith(f"--output {output}")


@pytest.mark.integration
def test_end_to_end_mode_measures_s_norm_against_raw_cosine_in_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``rllfpr recognizer run`` processes behind a real Mosquitto and Redis: one scoring
    raw cosines, one with a cohort; every face gets its event from both."""
    output = tmp_path / "e2e.json"
    arguments = ["--skip-search", "--e2e-faces", "40", "--e2e-gallery", "100"]
    arguments += ["--e2e-score-norm", "--output", str(output)]
    monkeypatch.setattr("sys.argv", [str(SCRIPT), *arguments])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    result = json.loads(output.read_text())
    raw, normalized = result["end_to_end"], result["end_to_end_score_norm"]
    assert (raw["scores"], normalized["scores"]) == ("raw cosine", "S-norm, cohort 3000, top 50")
    assert (raw["events_score_kind"], normalized["events_score_kind"]) == (["cosine"], ["s_norm"])
    for run in (raw, normalized):
        assert run["saturated"]["events_received"] == run["saturated"]["faces"] == 40
    ratio = normalized["saturated"]["faces_per_s"] / raw["saturated"]["faces_per_s"]
    assert normalized["faces_per_s_ratio_to_raw"] == pytest.approx(ratio, abs=1e-3)
