"""The recognizer service with an epoch whose model ships a cohort, against a real Mosquitto and
Redis 8: templates keep their cohort statistics, searches are re-scored by S-norm and decided
on the calibration's S-norm threshold, and events say so (``score_kind``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from recognizer_service.service import RecognizerService
from rllfpr.faces.pixels import embed_wire
from rllfpr.local_services import Endpoint
from rllfpr.models.recognizer import Recognizer
from rllfpr.models.store import ModelStore, OpenSetCalibration
from rllfpr.scorenorm import CohortNorm
from tests.support.recognizer import (
    EPOCH,
    TINY,
    Client,
    counter,
    face,
    image,
    make_settings,
    noisy,
    wait_until,
)
from tests.support.recognizer import client as client  # fixtures
from tests.support.recognizer import model_store as model_store
from tests.support.recognizer import start_service as start_service

pytestmark = pytest.mark.integration
CPU = torch.device("cpu")


def test_an_epoch_with_a_cohort_decides_on_s_norm_scores(
    mqtt_broker: Endpoint,
    redis_endpoint: Endpoint,
    tmp_path: Path,
    start_service: Callable[..., RecognizerService],
    client: Client,
) -> None:
    torch.manual_seed(0)
    recognizer = Recognizer(TINY).eval()
    norm = CohortNorm(embed_wire(recognizer, [image(100 + i) for i in range(40)], CPU), top_k=10)
    alice, bob, stranger = image(1), image(2), image(3)
    probe = noisy(alice, 7)
    templates = embed_wire(recognizer, [alice, bob], CPU)
    expected = norm.matrix(embed_wire(recognizer, [probe, stranger], CPU), templates)
    assert expected[0, 0] > expected[1].max() + 2  # the test's premise: far apart in S-norm
    threshold = float((expected[0, 0] + expected[1].max()) / 2)
    calibration = OpenSetCalibration(scores="s_norm", threshold=threshold, min_margin=0.5)
    ModelStore(tmp_path).publish("fleet", EPOCH, recognizer, calibration, norm=norm)
    settings = make_settings(mqtt_broker, redis_endpoint, tmp_path, quantization="NOQUANT")
    service = start_service(settings)

    for subject, pixels in (("alice", alice), ("bob", bob)):
        client.publish(*face(pixels, subject=subject)[:2])
    wait_until(lambda: counter(service, "rllfpr_templates_enrolled_total") == 2)
    means, stds = norm.statistics(templates)
    for row, subject in enumerate(("alice", "bob")):
        (attributes,) = service.gallery.attributes("fleet", EPOCH, subject)
        assert attributes["cohort_mean"] == pytest.approx(means[row], abs=1e-5)
        assert attributes["cohort_std"] == pytest.approx(stds[row], abs=1e-5)

    topic, payload, known_id = face(probe, track=1)
    client.publish(topic, payload)
    topic, payload, stranger_id = face(stranger, track=2)
    client.publish(topic, payload)
    wait_until(lambda: len(client.received()) == 2)
    events = {str(e.message_ids[0]): e for e in client.received()}
    match, unknown = events[known_id], events[stranger_id]
    assert (match.decision, match.subject, match.score_kind) == ("match", "alice", "s_norm")
    assert [c.subject for c in match.candidates] == ["alice", "bob"]
    assert [c.score for c in match.candidates] == pytest.approx(expected[0], abs=1e-3)
    assert match.margin == pytest.approx(expected[0, 0] - expected[0, 1], abs=1e-3)
    assert (unknown.decision, unknown.subject, unknown.score_kind) == ("unknown", None, "s_norm")
    assert unknown.score == pytest.approx(expected[1].max(), abs=1e-3)
    assert unknown.score < threshold < match.score
    # overrides: a cosine one (here: anything matches) leaves an S-norm model alone...
    service.stop(leave_group=True)

    def restarted(**overrides: float) -> RecognizerService:
        changed = settings.recognizer.model_copy(update=overrides)
        return start_service(settings.model_copy(update={"recognizer": changed}))

    other = image(4)
    other_best = norm.matrix(embed_wire(recognizer, [other], CPU), templates).max()
    assert other_best < threshold - 0.5
    lax = restarted(threshold=-1.0, min_margin=0.0)
    client.publish(*face(other, track=3)[:2])
    wait_until(lambda: any(e.track_id == 3 for e in client.received()))
    (event,) = [e for e in client.received() if e.track_id == 3]
    assert (event.decision, event.score) == ("unknown", pytest.approx(other_best, abs=1e-3))
    lax.stop(leave_group=True)
    # ...and an S-norm one applies to it
    restarted(s_norm_threshold=float(expected[0, 0]) + 1)
    client.publish(*face(probe, track=4)[:2])
    wait_until(lambda: any(e.track_id == 4 for e in client.received()))
    (event,) = [e for e in client.received() if e.track_id == 4]
    assert (event.decision, event.score) == ("unknown", pytest.approx(expected[0, 0], abs=1e-3))
