"""Fuzz every parser a stranger can reach, long: ``tests/test_fuzz.py`` at 100,000 examples.

Runs the suite's Hypothesis properties (``tests/test_fuzz.py``) with a fixed seed and many
examples, then writes what each parser was fed and how it answered: calls, outcomes (accepted,
or the parser's own error type), the slowest call in CPU and wall time, the peak RSS of the
process, and the verdict of every property. The end-to-end wire property (poison through a real
Mosquitto to a running recognizer) runs a tenth of the examples: each is a broker round trip.

Usage:
    python benchmarks/fuzz.py --long --output docs/results/fuzz.json
    python benchmarks/fuzz.py --examples 2000 --output /tmp/fuzz.json   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LONG_EXAMPLES = 100_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long", action="store_true", help=f"{LONG_EXAMPLES} examples each")
    parser.add_argument("--examples", type=int, default=1000, help="examples per property")
    parser.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: new)")
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression")
    parser.add_argument("--output", type=Path, required=True)
    arguments = parser.parse_args()
    examples = LONG_EXAMPLES if arguments.long else arguments.examples
    seed = arguments.seed if arguments.seed is not None else secrets.randbelow(2**32)
    with tempfile.TemporaryDirectory(prefix="rllfpr-fuzz-") as workdir:
        stats_file = Path(workdir) / "stats.json"
        report_file = Path(workdir) / "report.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_fuzz.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "timeout=0",  # the properties bound each call themselves
            f"--hypothesis-seed={seed}",
            f"--junitxml={report_file}",
        ]
        if arguments.select:
            command += ["-k", arguments.select]
        environment = os.environ | {
            "FUZZ_EXAMPLES": str(examples),
            "FUZZ_STATS": str(stats_file),
            "OMP_NUM_THREADS": "1",
        }
        load_before = os.getloadavg()
        started = time.monotonic()
        result = subprocess.run(command, cwd=REPO, env=environment, check=False)
        elapsed = time.monotonic() - started
        parsers = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        verdicts = _verdicts(report_file)
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    document: dict[str, Any] = {
        "command": "python benchmarks/fuzz.py "
        + ("--long" if arguments.long else f"--examples {examples}")
        + f" --seed {seed}"
        + (f" -k '{arguments.select}'" if arguments.select else ""),
        "examples_per_property": examples,
        "wire_property_examples": max(1, examples // 10),
        "seed": seed,
        "exit_status": result.returncode,
        "elapsed_s": round(elapsed, 1),
        "peak_rss_mb": round(child.ru_maxrss / 1024, 1),
        "hardware": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "properties": verdicts,
        "parsers": parsers,
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    print(f"{'parser':<18} {'calls':>9} {'max cpu ms':>11} {'max wall ms':>12}  outcomes")
    for name, values in sorted(parsers.items()):
        print(
            f"{name:<18} {values['examples']:>9} {values['max_cpu_ms']:>11.1f} "
            f"{values['max_wall_ms']:>12.1f}  {values['outcomes']}"
        )
    print(f"seed {seed}; exit status {result.returncode}; {elapsed:.0f} s; -> {arguments.output}")
    return result.returncode


def _verdicts(report: Path) -> dict[str, str]:
    """Pass or fail of each property, from pytest's JUnit XML."""
    if not report.exists():
        return {}
    import xml.etree.ElementTree as ElementTree

    verdicts = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        verdicts[case.get("name", "?")] = "failed" if failed else "skipped" if skipped else "passed"
    return verdicts


if __name__ == "__main__":
    sys.exit(main())
