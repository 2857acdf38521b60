"""The end-to-end demo: trainer -> key epochs -> enrollment -> edge agent -> recognizer -> events,
with a fleet-wide key rotation in the middle of the stream.

Every part is the real one (``rllfpr.local_services`` starts Mosquitto and Redis 8 on free
ports); only the camera is LFW photos replayed as frames, so that each event can be scored
against the person who really walked past. The two key epochs are built by the trainer's
rotation code on a small LFW corpus the first time and cached under ``{cache}/demo/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import yaml
from rich.console import Console

from demo.people import Cast, Visit, cast
from rllfpr import mqtt
from rllfpr.config import Settings
from rllfpr.faces.pixels import load_rgb
from rllfpr.keys import bundle, material
from rllfpr.keys.scrambler_key import ScramblerKey, open_scrambler_bundle
from rllfpr.local_services import Endpoint, free_port
from rllfpr.models.store import ModelStore
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import RecognitionEvent, utc_now
from trainer import hardware

log = logging.getLogger(__name__)
SCOPE = "fleet"
SITE, CAMERA = "lobby", "cam-1"

# The trainer's recipe for the demo's two epochs, shared with trainer.studies.rotation_linkage.
ROTATION_FILE = Path(__file__).resolve().parents[1] / "configs" / "rotation-demo.yaml"
ROTATION: dict[str, Any] = yaml.safe_load(ROTATION_FILE.read_text())
GRACE_S: int = ROTATION["grace_s"]


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def for_config(cls, cache: Path) -> Workspace:
        # Bundles of another format are not reused: agents refuse format 1 (issue 21).
        identity = {"rotation": ROTATION, "bundle_format": bundle.FORMAT_VERSION}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
        return cls(cache / "demo" / digest)

    @property
    def trainer_keys(self) -> Path:  # the trainer's signing key and the fleet key (demo only)
        return self.root / "trainer-keys"

    @property
    def models(self) -> Path:  # the trainer's model store: epochs 1 and 2, built once
        return self.root / "models"

    @property
    def trainer(self) -> Path:  # built epochs: sealed bundles, gate reports, training runs
        return self.root / "trainer"

    @property
    def run(self) -> Path:  # this run's agent state, spool and station vault (wiped each run)
        return self.root / "run"

    @property
    def run_models(self) -> Path:  # this run's copy of the store, which the revocation changes
        return self.run / "models"


# ----------------------------------------------------------------------------- the camera


@dataclass(frozen=True)
class Shown:
    visit: Visit
    round_: int


class ReplayCamera:
    """Photos as frames: one scene per visit (tracks reset between people), in rounds; round
    i > 0 starts only once ``release(i)`` is called. Remembers what it showed when."""

    live = False
    description = "photos replayed as camera frames"

    def __init__(self, rounds: Sequence[Sequence[Visit]], fps: float) -> None:
        self.rounds, self.fps = rounds, fps
        self.shown: dict[str, Shown] = {}  # captured_at (ISO) -> what was in front of the camera
        self.finished = [threading.Event() for _ in rounds]  # every frame of the round yielded
        self._gates = [threading.Event() for _ in rounds]
        self._gates[0].set()

    def release(self, round_: int) -> None:
        self._gates[round_].set()

    def frames(self, stop: threading.Event) -> Iterator[Any]:
        from edge_agent.sources import Frame

        index = scene = 0
        for round_, visits in enumerate(self.rounds):
            while not self._gates[round_].wait(0.1):
                if stop.is_set():
                    return
            for visit in visits:
                scene += 1
                for photo in visit.photos:
                    if stop.wait(1 / self.fps):
                        return
                    captured = utc_now()
                    self.shown[captured.isoformat()] = Shown(visit, round_)
                    yield Frame(load_rgb(photo), index, scene, captured, photo.name)
                    index += 1
            self.finished[round_].set()


# ----------------------------------------------------------------------------- observing


@dataclass
class Tally:
    """Running score of the events, per round."""

    correct: list[int] = field(default_factory=lambda: [0, 0])
    decided: list[int] = field(default_factory=lambda: [0, 0])
    latencies_ms: list[float] = field(default_factory=list)
    epochs_seen: set[int] = field(default_factory=set)
    events: list[dict[str, Any]] = field(default_factory=list)


class Observer:
    """Subscribes to events (as a user would) and to face messages (as an auditor would)."""

    def __init__(self, settings: Settings, camera: ReplayCamera, console: Console) -> None:
        self.camera, self.console, self.tally = camera, console, Tally()
        self.face_captures: dict[str, str] = {}  # message id -> captured_at (ISO)
        self.face_centres: dict[str, bool] = {}  # message id -> the frame's central face?
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
        crop = header.crop
        centre_x, centre_y = crop.x + crop.width / 2, crop.y + crop.height / 2
        central = (
            abs(centre_x - crop.frame_width / 2) < crop.frame_width * 0.15
            and abs(centre_y - crop.frame_height / 2) < crop.frame_height * 0.15
        )
        with self.lock:
            key = str(header.message_id)
            self.face_captures[key] = header.captured_at.isoformat()
            self.face_centres[key] = central
            if len([e for e, _ in self.wire_pixels if e == header.key_epoch]) < 6 and central:
                self.wire_pixels.append((header.key_epoch, message.pixels))
            if header.key_epoch == 1 and self.replayable is None:
                self.replayable = payload

    def _event(self, event: RecognitionEvent) -> None:
        with self.lock:
            ids = [str(m) for m in event.message_ids]
            if not any(self.face_centres.get(i, False) for i in ids):
                return  # a face in the background of an LFW photo: not the labelled person
            captures = [self.face_captures[i] for i in ids if i in self.face_captures]
            shown = next((self.camera.shown[c] for c in captures if c in self.camera.shown), None)
        if shown is None:
            return
        truth = shown.visit.person if shown.visit.enrolled else None
        right = event.subject == truth
        tally, round_ = self.tally, shown.round_
        tally.decided[round_] += 1
        tally.correct[round_] += int(right)
        tally.latencies_ms.append(event.decision_latency_ms)
        tally.epochs_seen.add(event.key_epoch)
        tally.events.append(
            {
                "round": round_ + 1,
                "person": shown.visit.person,
                "enrolled": shown.visit.enrolled,
                "decision": event.decision,
                "subject": event.subject,
                "score": round(event.score, 3),
                "margin": round(event.margin, 3),
                "key_epoch": event.key_epoch,
                "latency_ms": round(event.decision_latency_ms, 1),
                "correct": right,
            }
        )
        said = event.subject or "unknown"
        mark = "[green]✓[/green]" if right else "[red]✗[/red]"
        accuracy = sum(tally.correct) / max(1, sum(tally.decided))
        self.console.print(
            f"  epoch {event.key_epoch} · track {event.track_id}: {mark} {said:<24} "
            f"(truth {truth or 'stranger'}; score {event.score:.2f}, margin {event.margin:.2f}, "
            f"{event.decision_latency_ms:.0f} ms) · running accuracy {accuracy:.0%}"
        )

    def events_for(self, round_: int) -> int:
        return self.tally.decided[round_]


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def demo_settings(
    workspace: Workspace, cache: Path, data: Path, broker: Endpoint, store: Endpoint
) -> Settings:
    keys = workspace.trainer_keys
    return Settings.model_validate(
        {
            "data": str(data),
            "cache": str(cache),
            "mqtt": {"host": broker.host, "port": broker.port},
            "redis": {"url": f"redis://{store.host}:{store.port}/0"},
            "keys": {
                "directory": str(workspace.run / "agent-keys"),
                "trusted_signers": [str(keys / "signing.pub.pem")],
                "fleet_key_file": str(keys / "fleet.key"),
                "scope": SCOPE,
            },
            "agent": {
                "id": "demo-agent",
                "site": SITE,
                "camera": CAMERA,
                "detect_every": 1,
                "min_detection_score": 0.9,
                "min_sharpness": 0.0,
                "max_messages_per_track": 3,
                "spool_dir": str(workspace.run / "spool"),
                "metrics_port": free_port(),
                "key_settle_s": 0.2,
            },
            "recognizer": {
                "scopes": [SCOPE],
                "model_store": str(workspace.run_models),
                "device": "cpu",
                "consensus_faces": 3,
                "consensus_timeout_ms": 1500,
                "maintenance_interval_s": 1.0,
            },
            "trainer": {
                "signing_key_file": str(keys / "signing.pem"),
                "work_directory": str(workspace.trainer),
            },
        }
    )


def ensure_trainer_keys(folder: Path) -> None:
    if (folder / "signing.pem").exists():
        return
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    signing = Ed25519PrivateKey.generate()
    material.save_signing_key(signing, folder / "signing.pem")
    material.save_public_key(signing.public_key(), folder / "signing.pub.pem")
    material.save_fleet_key(material.FleetKey.generate(), folder / "fleet.key")


def ensure_epochs(settings: Settings, workspace: Workspace, console: Console) -> None:
    """Epochs 1 and 2, built by the trainer's rotation code once, then cached; this run gets
    its own copy of the model store."""
    store = ModelStore(workspace.models)
    if store.epochs(SCOPE) != [1, 2]:
        _build_epochs(settings, workspace, store, console)
    else:
        console.print(f"key epochs 1 and 2: cached in {workspace.root}")
    shutil.copytree(workspace.models, workspace.run_models)


def _build_epochs(
    settings: Settings, workspace: Workspace, store: ModelStore, console: Console
) -> None:
    from trainer.experiment import load_dataset
    from trainer.rotation import EpochBuilder, RotationConfig

    for partial in (workspace.models, workspace.trainer):  # an interrupted or failed earlier build
        shutil.rmtree(partial, ignore_errors=True)
    config = RotationConfig.model_validate(ROTATION)
    console.print(
        "[bold]training[/bold] the recognizers of key epochs 1 and 2 on "
        f"{config.experiment.data.max_identities} LFW people (first run only, a few minutes)"
    )
    keys = settings.keys
    builder = EpochBuilder(
        config,
        load_dataset(config.experiment, settings.data, settings.cache),
        store,
        material.load_signing_key(settings.trainer.signing_key_file),  # type: ignore[arg-type]
        material.load_fleet_key(keys.fleet_key_file),  # type: ignore[arg-type]
        workspace.trainer,
    )
    first = builder.build(SCOPE, 1, previous_key=None)
    report = first.report["gates"]
    console.print(
        f"  epoch 1: held-out accuracy {report['closed_set_accuracy']:.0%}, "
        f"cross-key {report['cross_key_accuracy']:.0%}"
    )
    previous = open_scrambler_bundle(first.bundle, keys).network
    second = builder.build(SCOPE, 2, previous_key=previous)
    report = second.report["gates"]
    console.print(
        f"  epoch 2: held-out accuracy {report['closed_set_accuracy']:.0%}, "
        f"cross-key with epoch 1's key {report['cross_key_accuracy']:.0%}, "
        f"epoch 1's templates matched by epoch 2 {report['template_linkage_accuracy']:.0%}"
    )


def bundle_of(workspace: Workspace, epoch: int) -> bytes:
    return (workspace.trainer / SCOPE / f"epoch-{epoch:08d}.rlkb").read_bytes()


# ----------------------------------------------------------------------------- the station


class Station:
    """The enrollment station: photos -> vault (encrypted) -> scrambled enrollment messages."""

    def __init__(self, settings: Settings, workspace: Workspace, client: paho.Client) -> None:
        from enrollment_station.vault import PhotoVault, create_vault_key, load_vault_key
        from rllfpr.faces.detect import FaceDetector

        key_file = workspace.run / "vault.key"
        create_vault_key(key_file)
        self.vault = PhotoVault(workspace.run / "vault", load_vault_key(key_file))
        self.detector = FaceDetector(min_face_size=40)
        self.settings, self.client = settings, client

    def keep(self, people: dict[str, list[Path]]) -> int:
        """Detect each photo's central face and keep its region, encrypted."""
        from enrollment_station.vault import face_region
        from rllfpr.faces.detect import central_face

        kept = 0
        for person, photos in people.items():
            faces = []
            for photo in photos:
                image = load_rgb(photo)
                found = central_face(self.detector.detect([image])[0], image.shape)
                if found is not None:
                    faces.append(face_region(image, found, photo.name))
            kept += self.vault.add(person, faces) if faces else 0
        return kept

    def enroll(self, key: ScramblerKey) -> int:
        """Scramble every kept face with ``key`` and send it; returns the number sent."""
        from enrollment_station.enrollment import enrollment_messages
        from enrollment_station.vault import scramble

        sent = 0
        for person in self.vault.subjects():
            faces = scramble(self.vault.faces(person), key)
            for topic, payload in enrollment_messages(faces, key, person, SITE, "demo-station"):
                self.client.publish(topic, payload, qos=1).wait_for_publish(10)
                sent += 1
        return sent


# ----------------------------------------------------------------------------- the run


def run(base: Settings, output: Path, console: Console) -> dict[str, Any]:
    """Run the whole demo; writes ``output/report.md``, ``report.json`` and ``faces.png``."""
    from edge_agent.agent import Agent
    from recognizer_service.service import RecognizerService
    from rllfpr.local_services import mosquitto, redis_server
    from trainer.rotation import KeyPublisher

    lfw = base.data / "lfw"
    if not lfw.is_dir():
        raise FileNotFoundError(
            f"LFW not found at {lfw.resolve()}: point RLLFPR_DATA (or `data:` in the config "
            "file) at the folder that holds lfw/ (see the README)"
        )
    workspace = Workspace.for_config(base.cache)
    ensure_trainer_keys(workspace.trainer_keys)
    shutil.rmtree(workspace.run, ignore_errors=True)
    workspace.run.mkdir(parents=True)
    people = cast(lfw, corpus_people=80, enrolled_people=8, strangers=4)
    started = time.monotonic()
    with mosquitto() as broker, redis_server() as store:
        console.print(f"Mosquitto on :{broker.port}, Redis 8 on :{store.port} (this run only)")
        settings = demo_settings(workspace, base.cache, base.data, broker, store)
        ensure_epochs(settings, workspace, console)
        trainer = mqtt.make_client(settings.mqtt, "demo-trainer", client_id="demo-trainer")
        mqtt.connect(trainer, settings.mqtt, clean_start=True)
        signing = material.load_signing_key(workspace.trainer_keys / "signing.pem")
        publisher = KeyPublisher(trainer, signing)
        first, second = bundle_of(workspace, 1), bundle_of(workspace, 2)
        publisher.stage(first)
        publisher.activate(first, GRACE_S)
        console.print("trainer: key epoch 1 staged and activated (signed, retained)")

        recognizer = RecognizerService(settings)
        recognizer.start()
        station = Station(settings, workspace, trainer)
        kept = station.keep(people.enrollment)
        key_one = open_scrambler_bundle(first, settings.keys)
        station.enroll(key_one)
        wait_until(lambda: recognizer.gallery.size(SCOPE, 1) >= kept, 120, "enrollment, epoch 1")
        console.print(
            f"station: {len(people.enrollment)} people enrolled from {kept} photos "
            "(kept encrypted on the station; only scrambled faces were sent)"
        )

        camera = ReplayCamera(people.rounds, fps=4)
        observer = Observer(settings, camera, console)
        observer.start()
        agent = Agent(settings, camera)
        agent.start()
        if not agent.wait_for_key(30):
            raise TimeoutError("the agent received no active key")
        runner = threading.Thread(target=agent.run, name="demo-agent", daemon=True)
        console.rule("round 1 · key epoch 1")
        runner.start()
        rounds = [len(r) for r in people.rounds]
        camera.finished[0].wait(600)
        wait_quietly(lambda: observer.events_for(0) >= rounds[0], 20)

        console.rule("key rotation: epoch 1 -> 2")
        publisher.stage(second)
        console.print("trainer: epoch 2 staged")
        key_two = open_scrambler_bundle(second, settings.keys)
        station.enroll(key_two)
        wait_until(lambda: recognizer.gallery.size(SCOPE, 2) >= kept, 120, "re-enrollment")
        console.print(f"station: re-enrolled {kept} faces from its vault under epoch 2")
        sheet = sample_sheet(station, key_one, key_two)
        publisher.activate(second, GRACE_S)
        wait_until(
            lambda: (k := agent.keys.current()) is not None and k.epoch == 2, 30, "agent switch"
        )
        console.print(f"trainer: epoch 2 active; the agent switched; epoch 1 accepted {GRACE_S} s")
        console.rule("round 2 · key epoch 2")
        camera.release(1)
        time.sleep(GRACE_S + 1)
        publisher.revoke(SCOPE, 1)
        wait_until(lambda: recognizer.gallery.size(SCOPE, 1) == 0, 30, "gallery 1 deleted")
        console.print("trainer: epoch 1 revoked -> recognizer deleted gallery 1 and its model")
        replay_rejected = replay_old_face(settings, recognizer, observer)
        console.print(
            "replayed an epoch-1 face after revocation: "
            + ("[green]rejected[/green]" if replay_rejected else "[red]ACCEPTED[/red]")
        )
        runner.join(600)
        wait_quietly(lambda: observer.events_for(1) >= rounds[1], 20)
        agent.close()
        published = agent.metrics.registry.get_sample_value("rllfpr_agent_faces_published_total")
        recognizer.stop()
        observer.close()
        trainer.disconnect()
        trainer.loop_stop()
    summary = {
        "seconds": round(time.monotonic() - started, 1),
        "faces_published": published,
        "replayed_epoch_1_face_rejected": replay_rejected,
        "hardware": hardware.describe(),
    }
    return write_report(output, people, observer, summary, sheet)


def wait_quietly(condition: Any, timeout_s: float) -> None:
    """Like ``wait_until`` but a timeout is fine: some tracks end as no event at all."""
    with contextlib.suppress(TimeoutError):
        wait_until(condition, timeout_s, "events")


def replay_old_face(settings: Settings, recognizer: Any, observer: Observer) -> bool:
    """Send a captured epoch-1 face again after the revocation: it must be rejected."""
    if observer.replayable is None:
        return False
    registry = recognizer.metrics.registry
    sample = ("rllfpr_faces_rejected_total", {"reason": "revoked_epoch"})

    def rejected() -> float:
        return registry.get_sample_value(*sample) or 0.0

    before = rejected()
    client = mqtt.make_client(settings.mqtt, "demo-replayer", client_id="demo-replayer")
    mqtt.connect(client, settings.mqtt, clean_start=True)
    client.publish(topics.faces(SITE, CAMERA), observer.replayable, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    try:
        wait_until(lambda: rejected() > before, 15, "the replay to be rejected")
    except TimeoutError:
        return False
    return True


def sample_sheet(station: Station, key_one: ScramblerKey, key_two: ScramblerKey) -> np.ndarray:
    """Rows: aligned faces (never sent) / what leaves the camera under epoch 1 / under epoch 2."""
    from enrollment_station.vault import scramble

    faces = [station.vault.faces(person)[0] for person in station.vault.subjects()[:6]]
    size = key_one.network.config.input_size
    top = np.concatenate([face.aligned(size) for face in faces], axis=1)
    rows = [top]
    for key in (key_one, key_two):
        pixels = np.concatenate([f.pixels for f in scramble(faces, key)], axis=1)
        rows.append(np.repeat(pixels[..., None], 3, axis=2))
    return np.concatenate(rows, axis=0)


def write_report(
    output: Path, people: Cast, observer: Observer, summary: dict[str, Any], sheet: np.ndarray
) -> dict[str, Any]:
    import cv2

    tally = observer.tally
    latencies = np.array(tally.latencies_ms) if tally.latencies_ms else np.zeros(1)
    rounds = []
    for index in range(2):
        events = [e for e in tally.events if e["round"] == index + 1]
        members = [e for e in events if e["enrolled"]]
        strangers = [e for e in events if not e["enrolled"]]
        rounds.append(
            {
                "key_epochs": sorted({e["key_epoch"] for e in events}),
                "visits": len(people.rounds[index]),
                "events": len(events),
                "accuracy": _share(sum(e["correct"] for e in events), len(events)),
                "enrolled_named_correctly": _share(
                    sum(e["correct"] for e in members), len(members)
                ),
                "strangers_called_unknown": _share(
                    sum(e["correct"] for e in strangers), len(strangers)
                ),
            }
        )
    result = summary | {
        "rounds": rounds,
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50)),
            "p95": float(np.percentile(latencies, 95)),
        },
        "events": tally.events,
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    cv2.imwrite(str(output / "faces.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    (output / "report.md").write_text(_markdown(result))
    return result


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "# RLLFPR demo run",
        "",
        f"{result['hardware']}; {result['seconds']} s. Faces published by the agent: "
        f"{result['faces_published']:.0f}. An epoch-1 face replayed after the revocation was "
        + ("rejected." if result["replayed_epoch_1_face_rejected"] else "**accepted**."),
        "",
        "| round | key epochs in events | visits | events | accuracy | enrolled named "
        "correctly | strangers called unknown |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, row in enumerate(result["rounds"], start=1):
        lines.append(
            f"| {index} | {row['key_epochs']} | {row['visits']} | {row['events']} | "
            f"{_percent(row['accuracy'])} | {_percent(row['enrolled_named_correctly'])} | "
            f"{_percent(row['strangers_called_unknown'])} |"
        )
    latency = result["latency_ms"]
    lines += [
        "",
        f"Decision latency (capture to decision): p50 {latency['p50']:.0f} ms, "
        f"p95 {latency['p95']:.0f} ms.",
        "",
        "![aligned faces (never sent), epoch 1 and epoch 2 scrambles](faces.png)",
        "",
        "Top row: aligned faces, which never leave the enrollment station or the camera. "
        "Middle: what leaves the camera under key epoch 1. Bottom: the same faces under epoch 2.",
        "",
    ]
    return "\n".join(lines)
