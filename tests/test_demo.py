"""The demo's report counts every event a plain subscriber sees, and scores each one right.

The end-to-end test runs the real demo (trainer, station, agent, recognizer, rotation) at a
small scale: two enrolled people and one stranger, a recognizer trained for two epochs on
small ORL faces. Its accuracy is meaningless; what it checks is the bookkeeping.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rich.console import Console

from demo.observer import FaceSeen, score, tally
from demo.people import Visit, cast
from demo.run import (
    GATE_ATTEMPTS,
    DemoError,
    DemoPlan,
    Shown,
    Station,
    Workspace,
    _build_gated,
    built_epochs,
    run,
)
from rllfpr import local_services
from rllfpr.config import Settings
from rllfpr.wire import topics
from rllfpr.wire.messages import RecognitionEvent
from tests.support.mqtt import Capture
from trainer.rotation import GateError

SIDE = 32
SMALL = DemoPlan(
    rotation={
        "experiment": {
            "name": "demo-test",
            "data": {"dataset": "att_orl", "alignment": "resize", "size": SIDE,
                     "max_identities": 12, "max_images": 6},
            "scrambler": {"levels": 2, "widths": [4, 8]},
            "recognizer": {"backbone": "compact", "input_size": SIDE, "embedding_dim": 16},
            "optim": {"epochs": 2, "batch_size": 32, "warmup_epochs": 0},
            "device": "cpu",
        },
        "fine_tune_epochs": 0,
        "calibration_people": 0.5,
        "accuracy_floor": 0.0,
        "cross_key_margin": 1.0,
        "max_abs_correlation": 1.0,  # a 2-level SN's output keeps some correlation
        "grace_s": 1,
    },
    enrolled_people=2,
    strangers=1,
    enrollment_photos=2,
    photos_per_visit=2,
    fps=8,
    grace_s=1,
)  # fmt: skip


# ----------------------------------------------------------------------------- scoring


def _event(subject: str | None, ids: list[uuid.UUID]) -> RecognitionEvent:
    now = datetime.now(UTC)
    return RecognitionEvent(
        event_id=uuid.uuid4(),
        decision="match" if subject else "unknown",
        subject=subject,
        score=0.5,
        margin=0.1,
        site="lobby",
        camera="cam-1",
        agent="demo-agent",
        track_id=1,
        message_ids=ids,
        captured_at=now,
        decided_at=now,
        decision_latency_ms=10.0,
        key_epoch=1,
    )


ALICE = Visit("alice", (Path("alice_0005.jpg"),), True)
STRANGER = Visit("sam", (Path("sam_0001.jpg"),), False)


@pytest.mark.parametrize(
    ("visit", "central", "subject", "role", "outcome"),
    [
        (ALICE, True, "alice", "enrolled", "named"),
        (ALICE, True, None, "enrolled", "missed"),
        (ALICE, True, "bob", "enrolled", "wrong_name"),
        (STRANGER, True, None, "stranger", "unknown"),
        (STRANGER, True, "alice", "stranger", "wrong_name"),
        (ALICE, False, None, "bystander", "unknown"),
        (ALICE, False, "alice", "bystander", "wrong_name"),  # a bystander is nobody enrolled
        (STRANGER, False, "bob", "bystander", "wrong_name"),
    ],
)
def test_every_event_is_scored_by_the_face_it_came_from(
    visit: Visit, central: bool, subject: str | None, role: str, outcome: str
) -> None:
    frame = Shown(visit, 1, visit.photos[0].name)
    faces = [FaceSeen("t", central, 1), FaceSeen("t", central, 1)]
    verdict = score(_event(subject, [uuid.uuid4(), uuid.uuid4()]), faces, [frame, frame])
    assert (verdict.role, verdict.outcome, verdict.round_) == (role, outcome, 1)
    assert verdict.photo == visit.photos[0].name


def test_an_event_whose_faces_were_never_seen_is_counted_as_untraced() -> None:
    verdict = score(_event("alice", [uuid.uuid4()]), [], [])
    assert (verdict.role, verdict.outcome, verdict.round_) == ("untraced", "wrong_name", None)
    counts = tally([(_event("alice", [uuid.uuid4()]), verdict)], None)
    assert (counts["events"], counts["wrong_names"]) == (1, 1)


def test_a_track_with_the_central_face_is_the_photos_person() -> None:
    """A track whose faces straddle the centre line counts as the photo's person."""
    frame = Shown(ALICE, 0, "alice_0005.jpg")
    faces = [FaceSeen("t", False, 1), FaceSeen("t", True, 1)]
    verdict = score(_event("alice", [uuid.uuid4(), uuid.uuid4()]), faces, [frame, frame])
    assert (verdict.role, verdict.outcome) == ("enrolled", "named")


# ----------------------------------------------------------------------------- key gates


class RefusingBuilder:
    """Refuses the first ``refusals`` keys it draws, as rotation's gates may (issue 21: the
    demo's first epoch-2 key with the deployed SN failed the cross-key gate)."""

    def __init__(self, refusals: int) -> None:
        self.refusals, self.calls = refusals, 0

    def build(self, scope: str, epoch: int, previous_key: object) -> SimpleNamespace:
        self.calls += 1
        if self.calls <= self.refusals:
            raise GateError(f"epoch {epoch} failed its gates: key {self.calls}")
        return SimpleNamespace(report=SimpleNamespace(gates=f"gates of key {self.calls}"))


def test_a_refused_key_is_redrawn_and_the_first_that_passes_is_kept(tmp_path: Path) -> None:
    builder, console = RefusingBuilder(GATE_ATTEMPTS - 1), Console(file=io.StringIO())
    gates = _build_gated(builder, 2, None, Workspace(tmp_path), console)  # type: ignore[arg-type]
    assert (gates, builder.calls) == (f"gates of key {GATE_ATTEMPTS}", GATE_ATTEMPTS)
    said = console.file.getvalue()  # type: ignore[attr-defined]
    assert said.count("drawing another key") == GATE_ATTEMPTS - 1


def test_the_demo_stops_after_refused_keys_and_says_where_the_gate_report_is(
    tmp_path: Path,
) -> None:
    builder = RefusingBuilder(GATE_ATTEMPTS)
    with pytest.raises(DemoError, match=f"key {GATE_ATTEMPTS}.*gate report in"):
        _build_gated(builder, 2, None, Workspace(tmp_path), Console(file=io.StringIO()))  # type: ignore[arg-type]
    assert builder.calls == GATE_ATTEMPTS


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.integration
def test_a_plain_subscriber_and_the_report_agree_on_every_event(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.model_validate({"data": str(data_root), "cache": str(tmp_path / "cache")})
    console = Console(file=io.StringIO(), width=200)
    caplog.set_level(logging.INFO)
    with (
        local_services.mosquitto() as broker,
        local_services.redis_server() as store,
        # what a user's `mosquitto_sub -t 'rllfpr/v1/events/#'` would collect
        Capture(broker, topics.ALL_EVENTS, name="plain") as subscriber,
    ):
        result = run(settings, tmp_path / "out", console, SMALL, (broker, store))
    log = console.file.getvalue()  # type: ignore[attr-defined]
    seen: dict[str, dict[str, object]] = {}
    for message in subscriber.all():
        event = json.loads(message.payload)
        seen.setdefault(event["event_id"], event)
    assert seen, log  # events flowed
    reported = {e["event_id"]: e for e in result["events"]}
    assert reported.keys() == seen.keys()
    for event_id, event in seen.items():
        assert (reported[event_id]["decision"], reported[event_id]["subject"]) == (
            event["decision"],
            event["subject"],
        )
    assert result["events_received"] == len(seen) == result["events_published"]
    assert all(result["rounds_settled"])
    assert result["untraced_events"] == 0
    for number, row in enumerate(result["rounds"], start=1):
        events = [e for e in result["events"] if e["round"] == number]
        assert row["events"] == len(events)
        enrolled = [e for e in events if e["role"] == "enrolled"]
        assert row["enrolled_events"] == len(enrolled)
        assert row["enrolled_named_correctly"] + row["enrolled_missed"] + row[
            "enrolled_wrong_name"
        ] == len(enrolled)
        others = [e for e in events if e["role"] != "enrolled"]
        assert row["strangers_and_bystanders_events"] == len(others)
        assert row["strangers_and_bystanders_called_unknown"] == sum(
            e["subject"] is None for e in others
        )
        assert row["wrong_names"] == sum(e["outcome"] == "wrong_name" for e in events)
        for e in events:  # every name given to anyone but the enrolled person is wrong
            right = e["role"] == "enrolled" and e["subject"] == e["person"]
            assert (e["outcome"] == "wrong_name") == (e["subject"] is not None and not right)
    assert [r["key_epochs"] for r in result["rounds"]] == [[1], [2]]
    assert result["replayed_epoch_1_face_rejected"]
    assert set(result["parts"]) == {"key epochs", "enrollment", "round 1", "rotation", "round 2"}
    broker_records = [r for r in caplog.records if "broker" in r.getMessage()]
    goodbyes = [r for r in broker_records if "disconnected" in r.getMessage()]
    assert len(goodbyes) >= 2  # the agent and the recognizer said goodbye ...
    assert all(r.levelno == logging.INFO for r in broker_records)  # ... as a normal shutdown
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert f"{len(seen)} received" in markdown
    sheet = cv2.imread(str(tmp_path / "out" / "faces.png"))
    assert sheet is not None
    assert sheet.shape[0] > 3 * 2 * SIDE  # three rows, enlarged
    assert (sheet[:, :200] < 128).any()  # the label column has text
    assert np.ptp(sheet[:, 260:]) > 0  # and faces beside it
    workspace = Workspace.for_config(settings.cache, SMALL.rotation)
    assert built_epochs(workspace) == [1, 2]  # a later run reuses them ...
    people = cast(
        data_root / "lfw",
        SMALL.corpus_people,
        SMALL.enrolled_people,
        SMALL.strangers,
        SMALL.enrollment_photos,
        SMALL.photos_per_visit,
    )
    kept, reused = Station(settings, workspace, None).keep(people.enrollment)  # type: ignore[arg-type]
    assert reused  # ... and the station's vault: nothing is detected again
    assert 0 < kept <= SMALL.enrolled_people * SMALL.enrollment_photos
