"""The README holds: its topic table is the code's topics, its demo table is the recorded run's,
its links lead somewhere, and its first screen says what a newcomer needs (the two commands, the
face data, disk and time) before anything else."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rllfpr.wire import topics

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _code_topics() -> set[str]:
    """Every topic the code builds, with its levels as ``{placeholders}``."""
    names = {"SITE": "{site}", "CAMERA": "{camera}", "SUBJECT": "{subject}"}
    names |= {"SCOPE": "{scope}", "AGENT": "{agent}", "4242": "{epoch}"}
    built = [
        topics.faces("SITE", "CAMERA"),
        topics.enroll("SITE", "SUBJECT"),
        topics.events("SITE", "CAMERA"),
        topics.key_bundle("SCOPE", 4242),
        topics.key_announcements("SCOPE", 4242),
        topics.key_revocation("SCOPE", 4242),
        topics.agent_status("AGENT"),
    ]
    result = set()
    for topic in built:
        for sentinel, placeholder in names.items():
            topic = topic.replace(sentinel, placeholder)
        result.add(topic)
    return result


def _table_topics(text: str) -> set[str]:
    return set(re.findall(r"^\| `(rllfpr/v1/[^`]+)` \|", text, re.MULTILINE))


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of each ``## `` section, in order; code blocks do not count."""
    outside_code = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    parts = re.split(r"^## (.+)$", outside_code, flags=re.MULTILINE)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("document", ["README.md", "docs/protocol.md"])
def test_the_topic_tables_are_the_codes_topics(document: str) -> None:
    assert _table_topics((ROOT / document).read_text()) == _code_topics()


def test_no_internal_issue_numbers_or_study_rounds_in_the_readme() -> None:
    assert not re.findall(r"\bissues? #?\d+", README, re.IGNORECASE)
    rounds = r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|GPU|CPU) round"
    assert not re.findall(rounds, README, re.IGNORECASE)


def test_the_first_screen_is_the_commands_the_data_and_the_costs() -> None:
    heading, body = _sections(README)[0]
    assert heading == "Try it"
    assert README.index("## Try it") < len("\n".join(README.splitlines()[:20]))
    for needed in ("scripts/demo", "scripts/test", "RLLFPR_DATA", "lfw/", "GB", " min"):
        assert needed in body, needed


def test_the_demo_table_is_the_recorded_runs() -> None:
    report = json.loads((ROOT / "docs/results/demo/report.json").read_text())
    rows = re.findall(
        r"^\| (before|after) the rotation \| (\d+) \| (\d+) \| (\d+) \| (\d+) of (\d+) \| "
        r"(\d+) of (\d+) \| (\d+) of (\d+) \| (\d+) \|$",
        README,
        re.MULTILINE,
    )
    assert [row[0] for row in rows] == ["before", "after"]
    for row, counts in zip(rows, report["rounds"], strict=True):
        enrolled = counts["enrolled_events"]
        others = counts["strangers_and_bystanders_events"]
        assert [int(cell) for cell in row[1:]] == [
            *counts["key_epochs"],
            counts["visits"],
            counts["events"],
            counts["enrolled_named_correctly"],
            enrolled,
            counts["enrolled_missed"],
            enrolled,
            counts["strangers_and_bystanders_called_unknown"],
            others,
            counts["wrong_names"],
        ]
    received = report["events_received"]
    assert f"({received} events, {received} published by the recognizer)" in README
    assert report["events_published"] == received


def test_every_link_of_the_readme_leads_somewhere() -> None:
    anchors = {_slug(heading) for heading, _ in _sections(README)}
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        if not path:
            assert anchor in anchors, link
            continue
        target = ROOT / path
        assert target.exists(), link
        if anchor and target.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", target.read_text(), re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, link
