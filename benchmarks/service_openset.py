"""The open set through the running recognizer service: does the service decide as the offline
numbers say, with S-norm and with raw cosines?

A finished View 1 student (``trainer.experiment.view1_student``) is published twice under one
scope: key epoch 1 with its cohort (``cohort`` of its own training faces, seed 0, AS-norm
``--top-k``: as ``keys rotate`` builds an epoch with ``score_norm``), key epoch 2 with raw
cosines. Each is calibrated for ``--target-fpir`` on the calibration half of the calibrate
study's split (``rllfpr.openset``: margins tried, as the rotation calibrates). The test half's
gallery photos are scrambled with the student's key and enrolled as MQTT enrollment messages,
its probes sent as one-face tracks, through a real Mosquitto into a ``RecognizerService`` with a
real Redis 8 (Q8 vector sets, ``search_count`` 20, one shard); FNIR, FPIR and
misidentifications are counted from the events a subscriber receives and set beside the offline
rates of the same embeddings at the same operating point. What can differ: Q8 quantization of
the templates, the HNSW search's top templates per face (``search_count``) instead of all, and
float rounding at the threshold.

    python benchmarks/service_openset.py CONFIG.yaml:scrambled [--top-k 50] [--target-fpir 0.01] \\
        --output docs/results/teacher/service-openset.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho

from recognizer_service.service import RecognizerService
from rllfpr import local_services, mqtt
from rllfpr.config import MqttSettings, RecognizerSettings, RedisSettings, Settings, load_settings
from rllfpr.faces.pixels import embed_wire, scramble
from rllfpr.local_services import Endpoint
from rllfpr.models.store import ModelStore, OpenSetCalibration, ScoreKind
from rllfpr.openset import Half, calibrate, rates, searches_of, split_people
from rllfpr.scorenorm import CohortNorm
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import CropBox, FaceHeader, PixelFormat, RecognitionEvent, utc_now
from trainer.experiment import view1_student
from trainer.studies.openset import evaluation_faces
from trainer.train import embed

COHORT = 3000
SITE = "bench"


def _message(
    pixels: np.ndarray, epoch: int, track: int, subject: str | None
) -> tuple[str, bytes, str]:
    side = pixels.shape[0]
    header = FaceHeader(
        purpose="enroll" if subject else "recognize",
        subject=subject,
        agent="bench-agent",
        site=SITE,
        camera="enrollment" if subject else "cam-0",
        captured_at=utc_now(),
        key_epoch=epoch,
        track_id=track,
        detection_score=0.99,
        quality=1.0,
        crop=CropBox(x=0, y=0, width=side, height=side, frame_width=640, frame_height=480),
        height=side,
        width=side,
        pixel_format=PixelFormat.UINT8,
    )
    topic = topics.enroll(SITE, subject) if subject else topics.faces(SITE, header.camera)
    return topic, codec.encode(header, pixels), str(header.message_id)


class Subscriber:
    """Every recognition event, by the message id it was decided on."""

    def __init__(self, broker: Endpoint) -> None:
        settings = MqttSettings(host=broker.host, port=broker.port)
        self.client = mqtt.make_client(settings, "bench", client_id=f"sub-{uuid.uuid4().hex[:6]}")
        self.client.max_inflight_messages_set(500)
        self.events: dict[str, RecognitionEvent] = {}
        self.lock = threading.Lock()
        self.client.on_message = self._on_message
        mqtt.connect(self.client, settings, clean_start=True)
        mqtt.subscribe(self.client, topics.ALL_EVENTS)

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        event = RecognitionEvent.model_validate_json(message.payload)
        with self.lock:
            for message_id in event.message_ids:
                self.events[str(message_id)] = event

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(30)

    def wait(self, ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if all(i in self.events for i in ids):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{sum(i not in self.events for i in ids)} of {len(ids)} events missing")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _service_rates(subscriber: Subscriber, probes: list[tuple[str, int]]) -> dict[str, float]:
    """``rllfpr.openset.rates`` counted from events: (message id, subject column or -1)."""
    with subscriber.lock:
        decided = [(subscriber.events[m], mate) for m, mate in probes]
    mated = [(e, mate) for e, mate in decided if mate >= 0]
    non_mated = [e for e, mate in decided if mate < 0]
    correct = [e.decision == "match" and e.subject == f"s{mate}" for e, mate in mated]
    wrong = [e.decision == "match" and e.subject != f"s{mate}" for e, mate in mated]
    return {
        "fnir": 1 - float(np.mean(correct)),
        "fpir": float(np.mean([e.decision == "match" for e in non_mated])),
        "misidentification": float(np.mean(wrong)),
        "mated_searches": len(mated),
        "non_mated_searches": len(non_mated),
    }


def run(spec: str, top_k: int, target_fpir: float, runs: Path) -> dict[str, Any]:
    path, _, view = spec.rpartition(":")
    if view != "scrambled":
        raise SystemExit(f"{spec}: the service sees scrambled faces: CONFIG.yaml:scrambled")
    config, view1, recognizer, face_view = view1_student(Path(path), "scrambled", runs)
    assert face_view.scrambler is not None
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(view1.train), min(COHORT, len(view1.train)), replace=False))
    norm = CohortNorm(embed(recognizer, face_view, view1.train.faces[sample]), top_k)
    faces = evaluation_faces(config, load_settings(None))
    wire = scramble(face_view.scrambler.cpu().eval(), faces.faces, batch=256)
    embeddings = embed_wire(recognizer, wire, face_view.device, batch=256)
    halves = split_people(faces.labels, 0)
    test: Half = halves["test"]
    epochs = {1: norm, 2: None}
    calibrations: dict[int, OpenSetCalibration] = {}
    offline: dict[int, dict[str, float]] = {}
    for epoch, epoch_norm in epochs.items():
        kind: ScoreKind = "cosine" if epoch_norm is None else "s_norm"
        point = calibrate(
            searches_of(embeddings, halves["calibration"], epoch_norm),
            target_fpir,
            protocol=f"calibration half; target FPIR {target_fpir}",
            scores=kind,
        )
        calibrations[epoch] = point
        offline[epoch] = rates(
            searches_of(embeddings, test, epoch_norm), point.threshold, point.min_margin
        )
    result: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory() as directory,
        local_services.mosquitto() as broker,
        local_services.redis_server() as redis_endpoint,
    ):
        store = ModelStore(Path(directory))
        for epoch, epoch_norm in epochs.items():
            store.publish("fleet", epoch, recognizer, calibrations[epoch], norm=epoch_norm)
        settings = Settings(
            mqtt=MqttSettings(host=broker.host, port=broker.port),
            redis=RedisSettings(url=f"redis://{redis_endpoint.host}:{redis_endpoint.port}/0"),
            recognizer=RecognizerSettings(
                model_store=Path(directory), device="cpu", consensus_faces=1, max_wait_ms=20
            ),
        )
        service = RecognizerService(settings, client_id="bench-openset")
        service.start()
        subscriber = Subscriber(broker)
        try:
            enrolled_name = "rllfpr_templates_enrolled_total"
            for epoch in epochs:
                for index, column in zip(test.gallery, test.gallery_labels, strict=True):
                    subscriber.publish(*_message(wire[index], epoch, 0, f"s{column}")[:2])
            deadline = time.monotonic() + 300
            expected = len(epochs) * len(test.gallery)
            while service.metrics.registry.get_sample_value(enrolled_name) != expected:
                if time.monotonic() > deadline:
                    raise TimeoutError("enrollments not all stored")
                time.sleep(0.1)
            probes = list(test.mated) + list(test.non_mated)
            mates = list(test.mated_labels) + [-1] * len(test.non_mated)
            started = time.monotonic()
            for epoch, epoch_norm in epochs.items():
                sent = []
                for track, (index, mate) in enumerate(zip(probes, mates, strict=True), 1):
                    topic, payload, message_id = _message(wire[index], epoch, track, None)
                    subscriber.publish(topic, payload)
                    sent.append((message_id, int(mate)))
                subscriber.wait([m for m, _ in sent], 600)
                kinds = sorted({subscriber.events[m].score_kind for m, _ in sent})
                result["s_norm" if epoch_norm is not None else "raw_cosine"] = {
                    "calibration": calibrations[epoch].model_dump(mode="json"),
                    "offline": offline[epoch],
                    "service": _service_rates(subscriber, sent),
                    "events_score_kind": kinds,
                }
            result["probe_seconds"] = round(time.monotonic() - started, 1)
        finally:
            subscriber.close()
            service.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student", help="CONFIG.yaml:scrambled, a finished View 1 run")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--target-fpir", type=float, default=0.01)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument(
        "--output", type=Path, default=Path("docs/results/teacher/service-openset.json")
    )
    args = parser.parse_args()
    started, load_before = time.time(), os.getloadavg()
    result: dict[str, Any] = {
        "protocol": __doc__,
        "command": f"python benchmarks/service_openset.py {args.student} --top-k {args.top_k} "
        f"--target-fpir {args.target_fpir} --output {args.output}",
        "cohort_faces": COHORT,
        "top_k": args.top_k,
    }
    result |= run(args.student, args.top_k, args.target_fpir, args.runs)
    result["seconds"] = round(time.time() - started, 1)
    result["load_average_1_5_15"] = {"start": load_before, "end": os.getloadavg()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "protocol"}, indent=2))


if __name__ == "__main__":
    main()
