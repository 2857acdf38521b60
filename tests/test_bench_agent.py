"""benchmarks/bench_agent.py's face-side part runs the real agent into a real Mosquitto with
a key of the deployed SN at 64 px and one at 112 px, and every face it publishes arrives."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_agent.py"


@pytest.mark.slow
def test_the_face_side_part_runs_both_sides_on_the_same_frames(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "side.json"
    argv = [str(SCRIPT), "--quick", "--parts", "face_side", "--agent-threads", "1"]
    monkeypatch.setattr("sys.argv", [*argv, "--data", str(data_root), "--output", str(output)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    result = json.loads(output.read_text())
    assert (result["sn"]["input_size"], result["sn"]["input_blur"]) == (64, 1.2)  # deployed
    side = result["face_side"]
    small, large = side["sides"]["64"], side["sides"]["112"]
    # the SN's low-pass scales with the face: the same share of it blurred at both sides
    assert (small["sn"]["input_size"], small["sn"]["input_blur"]) == (64, 1.2)
    assert (large["sn"]["input_size"], large["sn"]["input_blur"]) == (112, 2.1)
    assert side["settings"]["threads"] == 1
    (run_small,), (run_large,) = small["runs"], large["runs"]
    assert run_small["frames"] == run_large["frames"] == 80  # the same video at both sides
    assert run_small["faces_detected"] == run_large["faces_detected"] > 0
    assert run_small["faces_published"] > 0 < run_large["faces_published"]  # all received
    # a face message carries the scrambled face: about (112 / 64)^2 = 3.1 times the bytes
    assert 2.5 < large["median"]["message_bytes"] / small["median"]["message_bytes"] < 3.5
    assert side["large_over_small"]["frames_per_s"] == pytest.approx(
        large["median"]["frames_per_s"] / small["median"]["frames_per_s"], abs=1e-3
    )
    assert "## The face's side: 64 px against 112 px" in output.with_suffix(".md").read_text()
