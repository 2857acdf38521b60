"""Soak and chaos: the whole pipeline on this machine, under load for a fixed time, measured.

Mosquitto (persistence on), Redis 8 (append-only file, fsync always), two recognizer replicas
on one shared subscription (``rllfpr recognizer run``) and edge agents (``rllfpr agent run``)
replaying real LFW photos at a fixed rate, each its own process. The agents reach the broker
through a TCP forwarder owned by this script, so their link can be cut. The key epoch is a
fresh random SN (bundle signed, encrypted and announced on the retained key topics as the
trainer does) with a random compact recognizer: the compute of a real one, and the pipeline
does not care whether names are right. The gallery holds ``--gallery`` synthetic templates so
that every search walks a real HNSW graph.

Every ``--interval`` seconds it records the RSS and open file descriptors of every process,
the broker's stored messages (``$SYS/broker/store/messages/count``), each agent's spool depth,
Redis' used memory, capture-to-event latency percentiles of the events received in that window,
and the counts of faces spooled, events and rejections.

What counts as a face: every face message an agent wrote to its spool, read from a journal
that an SQLite trigger on the spool's ``outbox`` table keeps in the same transaction (the agent
is not changed for this). A face is **lost** if no event names it once the run has drained; a
face is **duplicated** if two different events name it; an event **id** is duplicated when it
arrives more than once (QoS 1 redelivery, which subscribers de-duplicate on, counted apart).

``--chaos``: at random moments (each kind at least ``--faults-per-kind`` times) SIGKILL and
restart a recognizer replica, the broker, Redis or an agent, or cut the agent-broker link (the
forwarder drops every connection and refuses new ones for a while). Per fault kind: faces lost
and duplicated, recovery time (injection to the first event of a face captured after it) and
the worst latency of faces captured within 30 s after it.

Usage:
    python benchmarks/soak.py --minutes 10 --output docs/results/soak.json
    python benchmarks/soak.py --chaos --minutes 10 --output docs/results/chaos.json
Quick check: ``--minutes 1 --gallery 1000``. A plot (RSS and latency over time) is written
next to the JSON (same name, ``.png``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
import redis
import torch
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recognizer_service.gallery import Gallery, Template
from rllfpr import local_services, mqtt
from rllfpr.config import MqttSettings
from rllfpr.keys import bundle, envelope, material
from rllfpr.local_services import free_port, free_ports
from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.models.scrambler import ScramblerConfig, ScramblerNetwork
from rllfpr.models.store import ModelStore, OpenSetCalibration
from rllfpr.wire import topics
from rllfpr.wire.messages import KeyAnnouncement, KeyState, RecognitionEvent

REPO = Path(__file__).resolve().parents[1]
SCOPE, EPOCH, SITE, SIDE, DIM = "fleet", 1, "soak", 64, 512
FAULT_KINDS = ("recognizer", "broker", "redis", "agent", "link")
WARM_UP_S = 120.0  # RSS slopes are fitted after this


# Processes ------------------------------------------------------------------------------------


@dataclass
class Managed:
    """A child process this script starts, kills and restarts; its output goes to a log."""

    name: str
    command: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    expected_exit: bool = False
    http_port: int = 0  # recognizers: their HTTP API
    spool: Path | None = None  # agents: their spool database

    def start(self) -> None:
        self.expected_exit = False
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                self.command,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=os.environ | self.env,
                cwd=REPO,
            )
        self.starts += 1
        deadline = time.monotonic() + 120
        while self.ready is not None and not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.log}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 60.0) -> None:
        self.expected_exit = True
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def pid(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    def alive(self) -> bool:
        return self.pid is not None


def listening(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    return check


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
        return False

    return check


def proc_stats(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open file descriptors) of a process, from /proc."""
    rss = 0.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    fds = 0
    with contextlib.suppress(OSError):
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


# The agent-broker link -------------------------------------------------------------------------


class Forwarder:
    """A TCP forwarder on a local port; ``cut`` drops every connection and refuses new ones
    for a while (a network outage as the agent sees it)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.server = socket.create_server(("127.0.0.1", self.port))
        self.server.settimeout(0.2)
        self.refuse_until = 0.0
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, name="forwarder", daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if time.monotonic() < self.refuse_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets |= {client, upstream}
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            with self.lock:
                self.sockets -= {source, target}

    def cut(self, seconds: float) -> None:
        self.refuse_until = time.monotonic() + seconds
        with self.lock:
            live = list(self.sockets)
        for end in live:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stopped.set()
        self.server.close()
        self.cut(0)


# The observer: events (as a subscriber) and broker statistics ----------------------------------


class Observer:
    def __init__(self, port: int) -> None:
        self.settings = MqttSettings(port=port, session_expiry_s=3600, keepalive_s=5)
        self.lock = threading.Lock()
        self.deliveries: list[tuple[float, RecognitionEvent]] = []  # (received, event)
        self.broker_stored = 0
        self.client = mqtt.make_client(self.settings, "soak", client_id="soak-observer")
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(1, 2)

    def start(self) -> None:
        self.client.connect(
            "127.0.0.1",
            self.settings.port,
            keepalive=5,
            clean_start=False,
            properties=mqtt.connect_properties(self.settings),
        )
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, *_arguments: object) -> None:
        client.subscribe([(topics.ALL_EVENTS, 1), ("$SYS/broker/store/messages/count", 0)])

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        received = time.time()
        if message.topic.startswith("$SYS/"):
            self.broker_stored = int(message.payload)
            return
        event = RecognitionEvent.model_validate_json(message.payload)
        with self.lock:
            self.deliveries.append((received, event))

    def snapshot(self) -> list[tuple[float, RecognitionEvent]]:
        with self.lock:
            return list(self.deliveries)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# Spool journals ----------------------------------------------------------------------------------

JOURNAL = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    expires_at REAL NOT NULL,
    key_epoch INTEGER NOT NULL
);
CREATE TABLE soak_journal (head BLOB NOT NULL, at REAL NOT NULL);
CREATE TRIGGER soak_journal AFTER INSERT ON outbox BEGIN
    INSERT INTO soak_journal (head, at)
    VALUES (substr(NEW.payload, 1, 4106), (julianday('now') - 2440587.5) * 86400.0);
END;
"""


def journaled(spool: Path | None) -> dict[str, tuple[float, float]]:
    """Faces an agent spooled: message id -> (spooled at, captured at), epoch seconds."""
    if spool is None or not spool.exists():
        return {}
    connection = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=30)
    try:
        rows = connection.execute("SELECT head, at FROM soak_journal").fetchall()
    finally:
        connection.close()
    faces = {}
    for head, at in rows:
        length = int.from_bytes(head[6:10], "big")
        header = json.loads(head[10 : 10 + length])
        captured = datetime.fromisoformat(header["captured_at"]).timestamp()
        faces[header["message_id"]] = (float(at), captured)
    return faces


def spool_state(spool: Path | None) -> tuple[int, dict[str, int]]:
    """(messages waiting, messages dropped by reason) of an agent's spool."""
    if spool is None or not spool.exists():
        return 0, {}
    connection = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=30)
    try:
        depth = connection.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        dropped: dict[str, int] = {}
        with contextlib.suppress(sqlite3.OperationalError):  # before the agent made the table
            dropped = dict(connection.execute("SELECT reason, count FROM dropped").fetchall())
    finally:
        connection.close()
    return int(depth), dropped


# Set-up -------------------------------------------------------------------------------------------


def make_epoch(workdir: Path) -> dict[str, Path]:
    """Trainer keys, a sealed bundle of a random SN, a model store with a random recognizer."""
    keys = workdir / "trainer-keys"
    signing = Ed25519PrivateKey.generate()
    material.save_signing_key(signing, keys / "signing.pem")
    material.save_public_key(signing.public_key(), keys / "signing.pub.pem")
    fleet = material.FleetKey.generate()
    material.save_fleet_key(fleet, keys / "fleet.key")
    torch.manual_seed(0)
    network = ScramblerNetwork(
        ScramblerConfig(levels=5, widths=(16, 32, 64, 64, 64), input_size=SIDE), seed=11
    )
    network.self_learn([torch.rand(16, 3, SIDE, SIDE)])
    store = ModelStore(workdir / "models")
    recognizer = Recognizer(
        RecognizerConfig(backbone="compact", input_size=SIDE, embedding_dim=DIM)
    )
    info = store.publish(SCOPE, EPOCH, recognizer, OpenSetCalibration(threshold=0.5))
    state = network.key_state()
    sealed = bundle.seal(
        epoch=EPOCH,
        scope=SCOPE,
        recognizer_id=info.recognizer_id,
        architecture=state["architecture"],
        state=state["state"],
        signing_key=signing,
        fleet_key=fleet,
    )
    (workdir / "epoch-1.rlkb").write_bytes(sealed)
    return {"keys": keys, "bundle": workdir / "epoch-1.rlkb", "models": workdir / "models"}


def announce(port: int, sealed: bytes, signing: Ed25519PrivateKey) -> None:
    """Publish the bundle and its activation, retained, as ``rllfpr keys rotate`` does."""
    header = bundle.read_header(sealed)
    announcement = KeyAnnouncement(
        scope=SCOPE,
        epoch=EPOCH,
        state=KeyState.ACTIVE,
        bundle_id=header.bundle_id,
        bundle_sha256=hashlib.sha256(sealed).hexdigest(),
    )
    settings = MqttSettings(port=port)
    client = mqtt.make_client(settings, "soak-trainer", client_id=f"soak-trainer-{uuid.uuid4()}")
    mqtt.connect(client, settings, clean_start=True)
    for topic, payload in (
        (topics.key_bundle(SCOPE, EPOCH), sealed),
        (topics.key_announcements(SCOPE, EPOCH), envelope.sign(announcement, signing)),
    ):
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def fill_gallery(redis_port: int, size: int) -> None:
    """``size`` synthetic templates (10 per subject) in the epoch's gallery."""
    client = redis.Redis(port=redis_port, socket_timeout=None)
    gallery = Gallery(client, build_ef=50)
    rng = np.random.default_rng(0)
    at = datetime.now(timezone.utc)
    for start in range(0, size, 500):
        rows = rng.standard_normal((min(500, size - start), DIM)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        gallery.enroll_many(
            SCOPE,
            EPOCH,
            [
                Template(f"p{(start + i) // 10:06d}", f"g{start + i}", row, SITE, at)
                for i, row in enumerate(rows)
            ],
        )


def lfw_photos(data: Path, count: int, part: int, parts: int) -> list[Path]:
    photos = sorted((data / "lfw").glob("*/*.jpg"))
    if not photos:
        raise SystemExit(f"no LFW photos under {data / 'lfw'} (set RLLFPR_DATA)")
    chosen = photos[part::parts]
    return (chosen * (1 + count // max(1, len(chosen))))[:count]


MOSQUITTO = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {directory}/
autosave_interval 1
autosave_on_changes true
max_inflight_messages 64
max_queued_messages 100000
sys_interval 5
log_dest file {directory}/mosquitto.log
log_type error
log_type warning
"""


# The run --------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    target: str
    at: float  # epoch seconds of the injection
    restored_at: float = 0.0


class Soak:
    def __init__(self, arguments: argparse.Namespace, workdir: Path) -> None:
        self.args = arguments
        self.workdir = workdir
        self.broker_port, self.redis_port = free_ports(2)
        self.processes: dict[str, Managed] = {}
        self.samples: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()  # one fault or restart at a time
        self.started_at = 0.0

    # ----- set-up
    def prepare(self) -> None:
        epoch = make_epoch(self.workdir)
        self.epoch = epoch
        mosquitto_dir = self.workdir / "mosquitto"
        mosquitto_dir.mkdir()
        os.chmod(mosquitto_dir, 0o777)  # started as root, Mosquitto drops to its own user
        os.chmod(self.workdir, 0o755)
        config = mosquitto_dir / "mosquitto.conf"
        config.write_text(MOSQUITTO.format(port=self.broker_port, directory=mosquitto_dir))
        binary = local_services._find_binary(
            "RLLFPR_MOSQUITTO", "mosquitto", ("/usr/sbin/mosquitto",)
        )
        self.processes["broker"] = Managed(
            "broker",
            [binary, "-c", str(config)],
            self.workdir / "mosquitto.out",
            ready=listening(self.broker_port),
        )
        redis_dir = self.workdir / "redis"
        redis_dir.mkdir()
        redis_binary = local_services._find_binary("RLLFPR_REDIS_SERVER", "redis-server")
        self.processes["redis"] = Managed(
            "redis",
            [
                redis_binary,
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(redis_dir),
                "--logfile",
                "redis.log",
            ],
            self.workdir / "redis.out",
            ready=listening(self.redis_port),
        )
        self.forwarder = Forwarder(self.broker_port)
        base: dict[str, Any] = {
            "log_level": "WARNING",
            "mqtt": {"host": "127.0.0.1", "port": self.broker_port, "session_expiry_s": 3600},
            "redis": {"url": f"redis://127.0.0.1:{self.redis_port}/0"},
            "keys": {
                "trusted_signers": [str(epoch["keys"] / "signing.pub.pem")],
                "fleet_key_file": str(epoch["keys"] / "fleet.key"),
                "scope": SCOPE,
            },
        }
        for index in range(2):
            name = f"recognizer-{index}"
            http_port = free_port()
            settings = base | {
                "recognizer": {
                    "model_store": str(epoch["models"]),
                    "device": "cpu",
                    "consensus_faces": 1,
                    "http_port": http_port,
                    "maintenance_interval_s": 30.0,
                }
            }
            path = self.workdir / f"{name}.yaml"
            path.write_text(yaml.safe_dump(settings))
            self.processes[name] = Managed(
                name,
                [
                    sys.executable,
                    "-m",
                    "rllfpr.cli",
                    "recognizer",
                    "run",
                    "--config",
                    str(path),
                    "--client-id",
                    f"soak-{name}",
                ],
                self.workdir / f"{name}.log",
                env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                ready=http_ok(f"http://127.0.0.1:{http_port}/readyz"),
            )
            self.processes[name].http_port = http_port
        photos = int(self.args.minutes * 60 * self.args.fps * 1.2) + 50
        for index in range(self.args.agents):
            name = f"agent-{index}"
            folder = self.workdir / name / "photos"
            folder.mkdir(parents=True)
            for number, photo in enumerate(
                lfw_photos(self.args.data, photos, index, self.args.agents)
            ):
                (folder / f"{number:06d}.jpg").symlink_to(photo)
            spool_dir = self.workdir / name / "spool"
            spool_dir.mkdir(mode=0o700)
            spool = spool_dir / f"soak-{name}.sqlite3"
            with contextlib.closing(sqlite3.connect(spool)) as connection:
                connection.executescript(JOURNAL)
            os.chmod(spool, 0o600)
            settings = base | {
                "mqtt": base["mqtt"] | {"port": self.forwarder.port},
                "keys": base["keys"] | {"directory": str(self.workdir / name / "keys")},
                "agent": {
                    "spool_dir": str(spool_dir),
                    "metrics_port": 0,
                    "threads": 1,
                    "backend": "onnxruntime",
                    "reconnect_initial_s": 1.0,
                    "reconnect_max_s": 2.0,
                    "key_settle_s": 0.2,
                },
            }
            path = self.workdir / f"{name}.yaml"
            path.write_text(yaml.safe_dump(settings))
            self.processes[name] = Managed(
                name,
                [
                    sys.executable,
                    "-m",
                    "rllfpr.cli",
                    "agent",
                    "run",
                    "--config",
                    str(path),
                    "--source",
                    str(folder),
                    "--site",
                    SITE,
                    "--camera",
                    f"cam-{index}",
                    "--agent-id",
                    f"soak-{name}",
                    "--fps",
                    str(self.args.fps),
                    "--independent",
                    "--key-timeout",
                    "120",
                    "--drain-timeout",
                    "300",
                ],
                self.workdir / f"{name}.log",
                env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
            )
            self.processes[name].spool = spool

    def agents(self) -> list[Managed]:
        return [p for name, p in self.processes.items() if name.startswith("agent-")]

    def recognizers(self) -> list[Managed]:
        return [p for name, p in self.processes.items() if name.startswith("recognizer-")]

    def start(self) -> None:
        self.processes["broker"].start()
        self.processes["redis"].start()
        print(f"filling the gallery with {self.args.gallery} templates", flush=True)
        fill_gallery(self.redis_port, self.args.gallery)
        signing = material.load_signing_key(self.epoch["keys"] / "signing.pem")
        announce(self.broker_port, self.epoch["bundle"].read_bytes(), signing)
        self.observer = Observer(self.broker_port)
        self.observer.start()
        for recognizer in self.recognizers():
            recognizer.start()
        self.started_at = time.time()
        for agent in self.agents():
            agent.start()
        threading.Thread(target=self._supervise, name="supervisor", daemon=True).start()

    def _supervise(self) -> None:
        """Restart what died on its own (a recognizer started while the broker was down exits;
        an agent whose photos ran out exits) - never during a fault, which restarts itself."""
        while not self.stop.is_set():
            time.sleep(1.0)
            with self.lock:
                for process in self.processes.values():
                    if not process.alive() and not process.expected_exit and process.starts:
                        with contextlib.suppress(RuntimeError):
                            process.start()

    # ----- sampling
    def sample(self) -> dict[str, Any]:
        now = time.time()
        row: dict[str, Any] = {"t_s": round(now - self.started_at, 1), "processes": {}}
        for name, process in self.processes.items():
            pid = process.pid
            if pid is not None:
                rss, fds = proc_stats(pid)
                row["processes"][name] = {"pid": pid, "rss_mb": round(rss, 1), "fds": fds}
        row["forwarder_connections"] = len(self.forwarder.sockets) // 2
        row["broker_stored_messages"] = self.observer.broker_stored
        row["spool_depth"] = {a.name: spool_state(a.spool)[0] for a in self.agents()}
        with contextlib.suppress(redis.RedisError):
            info = redis.Redis(port=self.redis_port, socket_timeout=2).info("memory")
            row["redis_used_memory_mb"] = round(int(info["used_memory"]) / 2**20, 1)
        deliveries = self.observer.snapshot()
        window = [
            (received - event.captured_at.timestamp()) * 1000
            for received, event in deliveries
            if received > now - self.args.interval
        ]
        if window:
            row["latency_ms"] = {
                "p50": round(float(np.percentile(window, 50)), 1),
                "p99": round(float(np.percentile(window, 99)), 1),
                "max": round(float(np.max(window)), 1),
            }
        row["events_received"] = len(deliveries)
        row["faces_spooled"] = sum(len(journaled(a.spool)) for a in self.agents())
        row["rejected"] = self.rejected()
        row["load_average"] = round(os.getloadavg()[0], 2)
        return row

    def rejected(self) -> float | None:
        total = 0.0
        for recognizer in self.recognizers():
            url = f"http://127.0.0.1:{recognizer.http_port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    text = response.read().decode()
            except OSError:
                return None
            total += sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("rllfpr_faces_rejected_total")
            )
        return total

    # ----- chaos
    def schedule(self) -> list[tuple[float, str]]:
        kinds = [k for k in FAULT_KINDS for _ in range(self.args.faults_per_kind)]
        rng = random.Random(self.args.seed)
        rng.shuffle(kinds)
        span = self.args.minutes * 60 - 90  # none in the first 30 s and the last 60 s
        step = span / len(kinds)
        return [(30 + step * i + rng.uniform(0, step * 0.5), kind) for i, kind in enumerate(kinds)]

    def inject(self, kind: str, rng: random.Random) -> Fault:
        with self.lock:
            if kind == "link":
                outage = rng.uniform(5, 15)
                fault = Fault(kind, "agent<->broker", time.time())
                self.forwarder.cut(outage)
                time.sleep(outage)
                fault.restored_at = time.time()
                return fault
            if kind == "recognizer":
                target = rng.choice(self.recognizers())
            elif kind == "agent":
                target = rng.choice(self.agents())
            else:
                target = self.processes[kind]
            fault = Fault(kind, target.name, time.time())
            target.kill()
            time.sleep(rng.uniform(1, 5))
            target.start()
            fault.restored_at = time.time()
            return fault

    # ----- the run
    def run(self) -> None:
        schedule = self.schedule() if self.args.chaos else []
        rng = random.Random(self.args.seed + 1)
        end = self.started_at + self.args.minutes * 60
        next_sample = self.started_at + self.args.interval
        while time.time() < end:
            if schedule and time.time() - self.started_at >= schedule[0][0]:
                _, kind = schedule.pop(0)
                fault = self.inject(kind, rng)
                self.faults.append(fault)
                print(
                    f"fault {kind} on {fault.target} at {fault.at - self.started_at:.0f} s",
                    flush=True,
                )
            if time.time() >= next_sample:
                row = self.sample()
                self.samples.append(row)
                next_sample += self.args.interval
                print(json.dumps(row), flush=True)
            time.sleep(0.2)

    def drain(self, timeout_s: float) -> float:
        """Stop the agents' cameras, let each send what its spool still holds (a run on an
        empty folder: connect, send the spool, exit once it is empty), then wait until every
        spooled face has an event or ``timeout_s`` passes; returns how long it took."""
        started = time.time()
        with self.lock:  # no supervisor restarts from here on
            for agent in self.agents():
                agent.stop(timeout_s=60)
            empty = self.workdir / "no-faces"  # one grey picture: a source that ends at once
            empty.mkdir(exist_ok=True)
            cv2.imwrite(str(empty / "grey.png"), np.full((64, 64, 3), 128, np.uint8))
            for agent in self.agents():
                flush = Managed(
                    f"{agent.name}-flush",
                    [
                        empty.as_posix()
                        if part == agent.command[agent.command.index("--source") + 1]
                        else part
                        for part in agent.command
                    ],
                    agent.log,
                    env=agent.env,
                )
                flush.start()
                assert flush.process is not None
                try:
                    flush.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    flush.kill()
        while time.time() - started < timeout_s:
            if not self.missing():
                break
            time.sleep(1.0)
        time.sleep(5.0)  # late redeliveries would arrive now
        return time.time() - started

    def all_faces(self) -> dict[str, tuple[float, float]]:
        faces: dict[str, tuple[float, float]] = {}
        for agent in self.agents():
            faces |= journaled(agent.spool)
        return faces

    def missing(self) -> set[str]:
        named = {str(m) for _, e in self.observer.snapshot() for m in e.message_ids}
        return set(self.all_faces()) - named

    def close(self) -> None:
        self.stop.set()
        with self.lock:
            for process in self.processes.values():
                process.stop(timeout_s=30)
        self.observer.close()
        self.forwarder.close()


def analyse(soak: Soak, drained_s: float) -> dict[str, Any]:
    faces = soak.all_faces()
    deliveries = soak.observer.snapshot()
    deliveries_per_event = Counter(str(event.event_id) for _, event in deliveries)
    events: dict[str, tuple[float, RecognitionEvent]] = {}
    for received, event in deliveries:
        events.setdefault(str(event.event_id), (received, event))
    faces_in: dict[str, set[str]] = defaultdict(set)
    first_event: dict[str, float] = {}
    for event_id, (received, event) in events.items():
        for message in event.message_ids:
            faces_in[str(message)].add(event_id)
            first_event[str(message)] = min(first_event.get(str(message), received), received)
    lost = sorted(set(faces) - set(faces_in))
    arrivals: dict[str, list[float]] = defaultdict(list)
    for received, event in deliveries:
        arrivals[str(event.event_id)].append(received)
    repeated = [
        {
            "event_id": event_id,
            "received_at_s": [round(t - soak.started_at, 1) for t in times],
            "last_fault_before": next(
                (
                    f"{fault.kind} at {fault.at - soak.started_at:.0f} s"
                    for fault in reversed(soak.faults)
                    if fault.at <= times[-1]
                ),
                None,
            ),
        }
        for event_id, times in arrivals.items()
        if len(times) > 1
    ]
    dropped: dict[str, int] = Counter()
    for agent in soak.agents():
        dropped.update(spool_state(agent.spool)[1])
    latencies = [
        (first_event[m] - captured) * 1000 for m, (_, captured) in faces.items() if m in first_event
    ]
    result: dict[str, Any] = {
        "faces_spooled": len(faces),
        "events": len(events),
        "event_deliveries": len(deliveries),
        "faces_lost": len(lost),
        "lost_message_ids": lost[:50],
        "faces_in_two_events": sum(1 for ids in faces_in.values() if len(ids) > 1),
        "event_ids_delivered_twice": sum(1 for n in deliveries_per_event.values() if n > 1),
        "repeated_deliveries": repeated[:50],
        "agent_spool_drops": dict(dropped),
        "rejected": soak.rejected(),
        "drain_s": round(drained_s, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
            "p99": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
            "max": round(float(np.max(latencies)), 1) if latencies else None,
        },
        "rss_slope_percent_per_10_min": rss_slopes(soak.samples),
        "restarts": {name: max(0, p.starts - 1) for name, p in soak.processes.items()},
    }
    if soak.faults:
        result["faults"] = fault_table(soak, faces, faces_in, first_event, events)
    return result


def rss_slopes(samples: list[dict[str, Any]]) -> dict[str, float | None]:
    """Least-squares slope of each process's RSS after warm-up, in % of its mean per 10 min;
    None when the process restarted during that time (a new process, a new curve)."""
    slopes: dict[str, float | None] = {}
    names = {name for row in samples for name in row["processes"]}
    for name in sorted(names):
        points = [
            (row["t_s"], row["processes"][name]["rss_mb"], row["processes"][name]["pid"])
            for row in samples
            if name in row["processes"] and row["t_s"] >= WARM_UP_S
        ]
        if len(points) < 3 or len({pid for *_, pid in points}) > 1:
            slopes[name] = None
            continue
        t = np.array([p[0] for p in points])
        rss = np.array([p[1] for p in points])
        slope_per_s = float(np.polyfit(t, rss, 1)[0])
        slopes[name] = round(100 * slope_per_s * 600 / float(rss.mean()), 2)
    return slopes


def fault_table(
    soak: Soak,
    faces: dict[str, tuple[float, float]],
    faces_in: dict[str, set[str]],
    first_event: dict[str, float],
    events: dict[str, tuple[float, RecognitionEvent]],
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for fault in soak.faults:
        later = [
            first_event[m]
            for m, (_, captured) in faces.items()
            if captured >= fault.at and m in first_event
        ]
        window = [
            (first_event[m] - captured) * 1000
            for m, (_, captured) in faces.items()
            if fault.at <= captured <= fault.at + 30 and m in first_event
        ]
        affected = [
            m for m, (_, captured) in faces.items() if fault.at - 30 <= captured <= fault.at + 60
        ]
        rows.append(
            {
                "kind": fault.kind,
                "target": fault.target,
                "at_s": round(fault.at - soak.started_at, 1),
                "down_s": round(fault.restored_at - fault.at, 1),
                "recovery_s": round(min(later) - fault.at, 1) if later else None,
                "worst_latency_ms_after": round(max(window), 1) if window else None,
                "faces_lost_near": sum(1 for m in affected if m not in faces_in),
                "faces_in_two_events_near": sum(
                    1 for m in affected if len(faces_in.get(m, ())) > 1
                ),
            }
        )
    per_kind: dict[str, Any] = {}
    for kind in FAULT_KINDS:
        mine = [row for row in rows if row["kind"] == kind]
        if not mine:
            continue
        recoveries = [row["recovery_s"] for row in mine if row["recovery_s"] is not None]
        worst = [row["worst_latency_ms_after"] for row in mine if row["worst_latency_ms_after"]]
        per_kind[kind] = {
            "injected": len(mine),
            "faces_lost": sum(row["faces_lost_near"] for row in mine),
            "faces_in_two_events": sum(row["faces_in_two_events_near"] for row in mine),
            "recovery_s_max": max(recoveries) if recoveries else None,
            "recovery_s_mean": round(float(np.mean(recoveries)), 1) if recoveries else None,
            "worst_latency_ms": max(worst) if worst else None,
        }
    return {"injected": rows, "per_kind": per_kind}


def plot(samples: list[dict[str, Any]], faults: list[Fault], started: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    names = sorted({name for row in samples for name in row["processes"]})
    for name in names:
        points = [
            (r["t_s"] / 60, r["processes"][name]["rss_mb"])
            for r in samples
            if name in r["processes"]
        ]
        top.plot(*zip(*points, strict=True), label=name)
    top.set_ylabel("RSS (MiB)")
    top.set_yscale("log")
    top.legend(fontsize=7, ncol=3)
    for key, style in (("p50", "-"), ("p99", "--")):
        points = [(r["t_s"] / 60, r["latency_ms"][key]) for r in samples if "latency_ms" in r]
        if points:
            bottom.plot(*zip(*points, strict=True), style, label=f"capture to event, {key}")
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("minutes")
    for fault in faults:
        for axis in (top, bottom):
            axis.axvline((fault.at - started) / 60, color="red", alpha=0.3, linewidth=0.8)
        bottom.text(
            (fault.at - started) / 60,
            bottom.get_ylim()[1],
            fault.kind,
            rotation=90,
            fontsize=6,
            va="top",
            color="red",
        )
    bottom.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--fps", type=float, default=2.0, help="photos per second per agent")
    parser.add_argument("--gallery", type=int, default=10_000, help="synthetic templates")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--chaos", action="store_true")
    parser.add_argument("--faults-per-kind", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("RLLFPR_DATA", REPO.parent / "shared" / "data")),
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--output", type=Path, required=True)
    arguments = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rllfpr-soak-"))
    load_before = os.getloadavg()
    soak = Soak(arguments, workdir)
    try:
        soak.prepare()
        soak.start()
        soak.run()
        drained = soak.drain(arguments.drain_timeout)
        result = analyse(soak, drained)
    finally:
        soak.close()
    document = {
        "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
        "mode": "chaos" if arguments.chaos else "soak",
        "minutes": arguments.minutes,
        "offered_photos_per_s": arguments.fps * arguments.agents,
        "hardware": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "result": result,
        "samples": soak.samples,
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(document, indent=2) + "\n")
    plot(soak.samples, soak.faults, soak.started_at, arguments.output.with_suffix(".png"))
    print(json.dumps(result, indent=2))
    if arguments.keep:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result["faces_lost"] == 0 and result["faces_in_two_events"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
