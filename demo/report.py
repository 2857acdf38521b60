"""The demo's report: ``report.json`` (every event, scored), ``report.md`` and ``faces.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from demo.observer import Observer, event_record, tally
from trainer import sn_picture

# faces.png shows LFW faces: report.md links it without embedding it, and it is not kept in the
# repository (docs/licensing.md, LFW).
LOCAL_FIGURE_NOTE = (
    "[faces.png](faces.png), written beside this report by `rllfpr demo` (`scripts/demo`), shows "
    "aligned faces, which never leave the enrollment station or the camera (top row), what "
    "leaves the camera under key epoch 1 (middle) and the same faces under epoch 2 (bottom). It "
    "is for local inspection only and is not kept in the repository, because it shows LFW faces "
    "(docs/licensing.md)."
)

ROW_LABELS = (
    ("aligned face", "never leaves the device"),
    ("epoch 1 scramble", "what is sent under key 1"),
    ("epoch 2 scramble", "the same faces, key 2"),
)


def labelled_sheet(rows: list[np.ndarray], scale: int = 2) -> np.ndarray:
    """Rows of faces (RGB, same height) enlarged ``scale`` times, each with its label on the left
    (``ROW_LABELS``), on a white background: the layout of the README's SN picture."""
    return sn_picture.labelled_sheet(rows, ROW_LABELS, scale)


def write_report(
    output: Path, observer: Observer, summary: dict[str, Any], sheet: np.ndarray
) -> dict[str, Any]:
    """Writes report.json, report.md and faces.png; returns what report.json holds."""
    import cv2

    scored = observer.scored()
    latencies = np.array([e.decision_latency_ms for e, _ in scored] or [0.0])
    rounds = [tally(scored, index) | {"visits": summary["visits"][index]} for index in (0, 1)]
    untraced = tally(scored, None)
    result = summary | {
        "rounds": rounds,
        "untraced_events": untraced["events"],
        "events_received": len(scored),
        "duplicate_deliveries": observer.duplicates,
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50)),
            "p95": float(np.percentile(latencies, 95)),
        },
        "events": [event_record(event, verdict) for event, verdict in scored],
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    cv2.imwrite(str(output / "faces.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    (output / "report.md").write_text(markdown(result))
    return result


def summary_lines(result: dict[str, Any], output: Path) -> list[str]:
    """The report in a few lines, for the end of the run."""
    lines = []
    for index, row in enumerate(result["rounds"], start=1):
        others = row["strangers_and_bystanders_events"]
        lines.append(
            f"round {index} (key epochs {row['key_epochs']}): {row['events']} events; enrolled "
            f"people named {_of(row['enrolled_named_correctly'], row['enrolled_events'])}, "
            f"missed {_of(row['enrolled_missed'], row['enrolled_events'])}; strangers and "
            f"bystanders called unknown "
            f"{_of(row['strangers_and_bystanders_called_unknown'], others)}; "
            f"wrong names {row['wrong_names']}"
        )
    return [*lines, f"report: {output / 'report.md'} (every event, scored: report.json)"]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _of(part: int, whole: int) -> str:
    return f"{part} of {whole}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def markdown(result: dict[str, Any]) -> str:
    published = result["events_published"]
    lines = [
        "# RLLFPR demo run",
        "",
        f"{result['hardware']}; {_duration(result['seconds'])} in all "
        f"({'; '.join(f'{name} {_duration(s)}' for name, s in result['parts'].items())}). "
        f"Faces published by the agent: {result['faces_published']:.0f}. "
        "An epoch-1 face replayed after the revocation was "
        + ("rejected." if result["replayed_epoch_1_face_rejected"] else "**accepted**."),
        "",
        f"Every event on `rllfpr/v1/events/#` is counted below, once: {result['events_received']} "
        f"received, {published:.0f} published by the recognizer. An event is traced through its "
        "face messages to the photo it came from: the photo's central face is the person it is "
        "of (enrolled or a stranger); any other face is a bystander, never enrolled, so a name "
        "given to one is a wrong name.",
        "",
        "| round | key epochs in events | visits | events | enrolled people named correctly "
        "| enrolled people missed (unknown) | strangers and bystanders called unknown "
        "| wrong names (any face) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, row in enumerate(result["rounds"], start=1):
        others = row["strangers_and_bystanders_events"]
        lines.append(
            f"| {index} | {row['key_epochs']} | {row['visits']} | {row['events']} | "
            f"{_of(row['enrolled_named_correctly'], row['enrolled_events'])} | "
            f"{_of(row['enrolled_missed'], row['enrolled_events'])} | "
            f"{_of(row['strangers_and_bystanders_called_unknown'], others)} "
            f"({_count(row['stranger_events'], 'stranger')}, "
            f"{_count(row['bystander_events'], 'bystander')}) | "
            f"{row['wrong_names']} |"
        )
    if result["untraced_events"]:
        lines += ["", f"**{result['untraced_events']} events could not be traced to a photo.**"]
    wrong = [e for e in result["events"] if e["outcome"] == "wrong_name"]
    if wrong:
        lines += ["", "Wrong names:", ""]
        for event in wrong:
            who = {
                "enrolled": f"{event['person']} (enrolled)",
                "stranger": f"{event['person']} (never enrolled)",
                "bystander": f"a bystander in {event['photo']}",
                "untraced": "an untraced face",
            }[event["role"]]
            lines.append(
                f"- round {event['round']}: {who} named {event['subject']} "
                f"(score {event['score']:.2f}, margin {event['margin']:.2f})"
            )
    latency = result["latency_ms"]
    lines += [
        "",
        f"Decision latency (capture to decision): p50 {latency['p50']:.0f} ms, "
        f"p95 {latency['p95']:.0f} ms. Every event, scored: `report.json`.",
        "",
        LOCAL_FIGURE_NOTE,
        "",
    ]
    return "\n".join(lines)
