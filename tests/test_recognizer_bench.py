"""The benchmark's GPU embedding mode runs (tiny settings, on the CPU) and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_embedding_only_mode_writes_throughput_per_stem(tmp_path: Path) -> None:
    output = tmp_path / "embedding.json"
    command = [sys.executable, "benchmarks/bench_recognizer.py", "--embedding-only"]
    command += ["--device", "cpu", "--backbone", "compact", "--size", "32", "--batch", "4"]
    command += ["--seconds", "0.2", "--output", str(output)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=120)
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
