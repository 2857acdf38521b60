"""What a plain subscriber sees during the demo, scored against who was really in front of the
camera.

The observer subscribes to every event (as a user would) and to every face message (as an
auditor would). Each event is traced through its face messages (``message_ids``) to the frames
they came from, hence to the photo and the person it shows:

- ``enrolled``: the photo's central face, of an enrolled person;
- ``stranger``: the photo's central face, of someone never enrolled;
- ``bystander``: a face that is not the photo's central one (LFW photos show other people
  too; none of them is enrolled, so any name given to one is a wrong name);
- ``untraced``: no face of the event was seen on the wire (should never happen; counted).

Every event counts, once (subscribers de-duplicate on ``event_id``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import paho.mqtt.client as paho
from rich.console import Console

from rllfpr import mqtt
from rllfpr.config import Settings
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import FaceHeader, RecognitionEvent

if TYPE_CHECKING:
    from demo.run import ReplayCamera, Shown

log = logging.getLogger(__name__)

ROLES = ("enrolled", "stranger", "bystander", "untraced")
OUTCOMES = ("named", "missed", "unknown", "wrong_name")


def is_central(header: FaceHeader) -> bool:
    """The face a photo is of: its crop's centre near the frame's centre (LFW's convention)."""
    crop = header.crop
    centre_x, centre_y = crop.x + crop.width / 2, crop.y + crop.height / 2
    return (
        abs(centre_x - crop.frame_width / 2) < crop.frame_width * 0.15
        and abs(centre_y - crop.frame_height / 2) < crop.frame_height * 0.15
    )


@dataclass(frozen=True)
class FaceSeen:
    captured_at: str  # ISO, the key of ReplayCamera.shown
    central: bool
    key_epoch: int


@dataclass(frozen=True)
class Verdict:
    """One event, scored."""

    round_: int | None  # 0 or 1; None when untraced
    role: str  # one of ROLES
    person: str | None  # who the traced photo is of
    photo: str | None
    outcome: str  # one of OUTCOMES

    @property
    def wrong(self) -> bool:
        return self.outcome == "wrong_name"


def score(event: RecognitionEvent, faces: list[FaceSeen], shown: list[Shown | None]) -> Verdict:
    """Score one event given its faces (those seen on the wire) and the frames they came from."""
    traced = [(face, frame) for face, frame in zip(faces, shown, strict=True) if frame is not None]
    if not traced:
        outcome = "unknown" if event.subject is None else "wrong_name"
        return Verdict(None, "untraced", None, None, outcome)
    central = [frame for face, frame in traced if face.central]
    frame = (central or [traced[0][1]])[0]
    visit = frame.visit
    role = ("enrolled" if visit.enrolled else "stranger") if central else "bystander"
    if role == "enrolled":
        if event.subject == visit.person:
            outcome = "named"
        else:
            outcome = "missed" if event.subject is None else "wrong_name"
    else:
        outcome = "unknown" if event.subject is None else "wrong_name"
    return Verdict(frame.round_, role, visit.person, frame.photo, outcome)


class Observer:
    """Subscribes to events and face messages; scores every event against the camera's truth."""

    def __init__(self, settings: Settings, camera: ReplayCamera, console: Console) -> None:
        self.camera, self.console = camera, console
        self.faces: dict[str, FaceSeen] = {}  # message id -> the face message's header, in short
        self.events: dict[str, RecognitionEvent] = {}  # event id -> first delivery
        self.duplicates = 0  # deliveries of an event id already seen (at-least-once)
        self.wire_pixels: list[tuple[int, np.ndarray]] = []  # (epoch, pixels), a few samples
        self.replayable: bytes | None = None  # one epoch-1 face message, for the replay check
        self.lock = threading.Lock()
        self.settings = settings.mqtt
        self.client = mqtt.make_client(settings.mqtt, "demo-observer", client_id="demo-observer")
        self.client.on_message = self._on_message

    def start(self) -> None:
        mqtt.connect(self.client, self.settings, clean_start=True)
        self.client.subscribe([(topics.ALL_EVENTS, 1), (topics.ALL_FACES, 1)])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def event_count(self) -> int:
        with self.lock:
            return len(self.events)

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        try:
            if msg.topic.startswith(f"{topics.ROOT}/faces/"):
                self._face(bytes(msg.payload))
            else:
                self._event(RecognitionEvent.model_validate_json(msg.payload))
        except Exception:  # never let a display problem kill paho's thread
            log.exception("observer cannot read %s", msg.topic)

    def _face(self, payload: bytes) -> None:
        message = codec.decode(payload)
        header = message.header
        central = is_central(header)
        with self.lock:
            seen = FaceSeen(header.captured_at.isoformat(), central, header.key_epoch)
            self.faces[str(header.message_id)] = seen
            if len([e for e, _ in self.wire_pixels if e == header.key_epoch]) < 6 and central:
                self.wire_pixels.append((header.key_epoch, message.pixels))
            if header.key_epoch == 1 and self.replayable is None:
                self.replayable = payload

    def _event(self, event: RecognitionEvent) -> None:
        with self.lock:
            if str(event.event_id) in self.events:
                self.duplicates += 1
                return
            self.events[str(event.event_id)] = event
        verdict = self.verdict(event)
        self.console.print(_line(event, verdict, self.running()))

    def verdict(self, event: RecognitionEvent) -> Verdict:
        with self.lock:
            faces = [self.faces[str(i)] for i in event.message_ids if str(i) in self.faces]
        shown = [self.camera.shown.get(face.captured_at) for face in faces]
        return score(event, faces, shown)

    def running(self) -> str:
        """Named / enrolled events and wrong names so far (for the live lines)."""
        with self.lock:
            events = list(self.events.values())
        verdicts = [self.verdict(e) for e in events]
        enrolled = [v for v in verdicts if v.role == "enrolled"]
        named = sum(v.outcome == "named" for v in enrolled)
        wrong = sum(v.wrong for v in verdicts)
        return f"named {named} of {len(enrolled)} enrolled, {wrong} wrong names"

    def scored(self) -> list[tuple[RecognitionEvent, Verdict]]:
        """Every event received, in arrival order, scored now (every face has arrived)."""
        with self.lock:
            events = list(self.events.values())
        return [(event, self.verdict(event)) for event in events]


def _line(event: RecognitionEvent, verdict: Verdict, running: str) -> str:
    said = event.subject or "unknown"
    where = f"{verdict.photo}" if verdict.photo else "an untraced face"
    truth = {
        "enrolled": f"{verdict.person}, enrolled",
        "stranger": f"{verdict.person}, never enrolled",
        "bystander": f"a bystander in {where}",
        "untraced": "not traced to a photo",
    }[verdict.role]
    mark = {
        "named": "[green]✓[/green]",
        "unknown": "[green]✓[/green]",
        "missed": "[yellow]·[/yellow]",
        "wrong_name": "[red]✗ wrong name[/red]",
    }[verdict.outcome]
    return (
        f"  epoch {event.key_epoch} · track {event.track_id}: {mark} {said} "
        f"(truth: {truth}; score {event.score:.2f}, margin {event.margin:.2f}, "
        f"{event.decision_latency_ms:.0f} ms) · {running}"
    )


def tally(scored: list[tuple[RecognitionEvent, Verdict]], round_: int | None) -> dict[str, Any]:
    """The report's counts for one round (None: the untraced events)."""
    verdicts = [v for _, v in scored if v.round_ == round_]
    enrolled = [v for v in verdicts if v.role == "enrolled"]
    others = [v for v in verdicts if v.role in ("stranger", "bystander", "untraced")]

    def count(group: list[Verdict], outcome: str) -> int:
        return sum(v.outcome == outcome for v in group)

    return {
        "events": len(verdicts),
        "key_epochs": sorted({e.key_epoch for e, v in scored if v.round_ == round_}),
        "enrolled_events": len(enrolled),
        "enrolled_named_correctly": count(enrolled, "named"),
        "enrolled_missed": count(enrolled, "missed"),
        "enrolled_wrong_name": count(enrolled, "wrong_name"),
        "stranger_events": sum(v.role == "stranger" for v in verdicts),
        "bystander_events": sum(v.role == "bystander" for v in verdicts),
        "strangers_and_bystanders_called_unknown": count(others, "unknown"),
        "strangers_and_bystanders_events": len(others),
        "wrong_names": sum(v.wrong for v in verdicts),
    }


def event_record(event: RecognitionEvent, verdict: Verdict) -> dict[str, Any]:
    """One event as report.json lists it."""
    return {
        "event_id": str(event.event_id),
        "round": None if verdict.round_ is None else verdict.round_ + 1,
        "role": verdict.role,
        "person": verdict.person,
        "photo": verdict.photo,
        "decision": event.decision,
        "subject": event.subject,
        "outcome": verdict.outcome,
        "score": round(event.score, 3),
        "margin": round(event.margin, 3),
        "key_epoch": event.key_epoch,
        "track_id": event.track_id,
        "latency_ms": round(event.decision_latency_ms, 1),
    }
