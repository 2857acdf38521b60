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
