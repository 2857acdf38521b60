"""Property-based fuzzing (Hypothesis) of every parser a stranger can reach.

Each property feeds hostile bytes, JSON or text to one parser and asserts that it
- returns, or raises its own module's error type and nothing else;
- answers within ``CPU_BOUND_S`` of CPU time and ``WALL_BOUND_S`` of wall time (no hang);
- needs less than ``MEMORY_BOUND_MB`` more memory while it answers (the peak RSS during the
  call over the RSS before it: Linux resets the peak through ``/proc/self/clear_refs``).

The inputs are random bytes and, more usefully, valid messages mutated: fields replaced by
arbitrary JSON, length fields lied about, bytes flipped, inserted, cut; and payloads that carry
a valid signature from a trusted key around garbage (what a compromised signer could send).

The suite runs ``FUZZ_EXAMPLES`` examples per property (default 150: a few thousand in
all, a few seconds). ``python benchmarks/fuzz.py --long`` runs 100,000 per property with a
recorded seed (``docs/results/reliability.md``); it reads the per-property counts this module
writes to ``FUZZ_STATS`` after every property.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import resource
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote as _quote

import numpy as np
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from edge_agent.backends import TorchBackend
from edge_agent.keys import AgentKeys, classify
from edge_agent.metrics import AgentMetrics
from recognizer_service.api import create_app
from recognizer_service.keywatch import KeyWatch
from recognizer_service.pipeline import Delivery, PoisonMessageError
from recognizer_service.service import RecognizerService
from rllfpr.config import ConfigError, KeySettings, Settings, load_settings
from rllfpr.keys import bundle, envelope, material
from rllfpr.keys.bundle import BundleError
from rllfpr.keys.envelope import SignatureError
from rllfpr.keys.keyring import KeyRing
from rllfpr.local_services import Endpoint
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import (
    AgentStatus,
    KeyAnnouncement,
    KeyState,
    RecognitionEvent,
    Revocation,
)
from tests.support.recognizer import (
    EPOCH,
    SIDE,
    Client,
    counter,
    covered,
    face,
    image,
    make_settings,
    noisy,
    wait_until,
)
from tests.support.recognizer import client as client  # fixtures
from tests.support.recognizer import model_store as model_store
from tests.support.recognizer import start_service as start_service
from tests.support.wire import make_header

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
CPU_BOUND_S = 2.0  # CPU time of one call: the machine's other jobs do not count
WALL_BOUND_S = 30.0  # and a call blocked on something (no CPU used) must not hang either
MEMORY_BOUND_MB = 256
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the time bound below is ours: a loaded CI machine must not flake
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # conftest's environment isolation, harmless here
    ],
)
TOKEN = "fuzz-token"


# Bounds and statistics -------------------------------------------------------------------------


def _memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise LookupError(field)


def _reset_peak() -> bool:
    """Start the peak RSS again from the current RSS (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# The bound is per call, not on the process's growth since the first call: Hypothesis' own
# record of the inputs it has tried grows with the examples (past 256 MB at about 73,000 face
# payloads), which is not the parser's doing. Without a resettable peak (not Linux), the
# growth of the peak since the first call is bounded instead: right for the suite's few
# examples, too strict for a long run.
_PER_CALL = _reset_peak()
_BASELINE_MB: list[float] = []
STATS: dict[str, dict[str, Any]] = {}


def hostile(name: str, call: Callable[[], object], allowed: tuple[type[Exception], ...]) -> str:
    """Run one parser call; fail on any other exception, a slow answer or a memory spike.
    Returns the outcome (``ok`` or the allowed error's type name)."""
    if _PER_CALL:
        _reset_peak()
        before = _memory_mb("VmRSS")
    else:
        if not _BASELINE_MB:  # the tests that ran before (models, detectors) do not count
            _BASELINE_MB.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        before = _BASELINE_MB[0]
    # The cyclic garbage collector is off while the call is timed: a full collection walks every
    # object of the process, Hypothesis' growing record of tried inputs included, and would
    # charge that walk to whichever call triggered it. Reference counting still frees the
    # call's garbage; its cycles wait until after the call.
    collecting = gc.isenabled()
    gc.disable()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        call()
        outcome = "ok"
    except allowed as error:
        outcome = type(error).__name__
    finally:
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if collecting:
            gc.enable()
    grown = (_memory_mb("VmHWM") if _PER_CALL else _peak_rss_mb()) - before
    stats = STATS.setdefault(
        name,
        {
            "examples": 0,
            "max_cpu_ms": 0.0,
            "max_wall_ms": 0.0,
            "max_memory_mb": 0.0,
            "rss_mb_first": _memory_mb("VmRSS"),
            "outcomes": Counter(),
        },
    )
    stats["examples"] += 1
    stats["max_cpu_ms"] = max(stats["max_cpu_ms"], cpu * 1000)
    stats["max_wall_ms"] = max(stats["max_wall_ms"], wall * 1000)
    stats["max_memory_mb"] = max(stats["max_memory_mb"], round(grown, 1))
    stats["rss_mb_last"] = _memory_mb("VmRSS")
    stats["outcomes"][outcome] += 1
    # memory first: a call over the memory bound may also be slow (page faults on a busy
    # machine), and the memory is what it is judged by
    assert grown < MEMORY_BOUND_MB, f"{name} needed {grown:.0f} MB more memory"
    assert cpu < CPU_BOUND_S, f"{name} used {cpu:.2f} s of CPU"
    assert wall < WALL_BOUND_S, f"{name} took {wall:.2f} s"
    return outcome


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def test_the_memory_bound_sees_what_one_call_needs() -> None:
    """A parser that needs more than the bound for one input fails the property."""
    with pytest.raises(AssertionError, match="more memory"):
        hostile("spike", lambda: b"\1" * ((MEMORY_BOUND_MB + 44) * 2**20), ())
    assert hostile("small", lambda: b"\1" * 2**20, ()) == "ok"
    assert STATS.pop("small")["max_memory_mb"] < MEMORY_BOUND_MB
    assert STATS.pop("spike")["max_memory_mb"] >= MEMORY_BOUND_MB


def test_a_call_is_timed_without_collecting_the_harness_garbage() -> None:
    """The collector is off during the timed call, and on again after it, also after an error."""
    seen: list[bool] = []

    def look(fail: bool) -> None:
        seen.append(gc.isenabled())
        if fail:
            raise KeyError("missing")

    assert hostile("gc", lambda: look(False), ()) == "ok"
    with pytest.raises(KeyError):
        hostile("gc", lambda: look(True), ())
    assert seen == [False, False]
    assert gc.isenabled()
    STATS.pop("gc")


@pytest.fixture(autouse=True)
def _write_statistics() -> Iterator[None]:
    """After every property (a long run cut short keeps the counts of what it did)."""
    yield
    target = os.environ.get("FUZZ_STATS")
    if target:
        document = {
            name: {**values, "outcomes": dict(values["outcomes"])} for name, values in STATS.items()
        }
        Path(target).write_text(json.dumps(document, indent=2, sort_keys=True))


# Strategies ------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["", "fleet", "lobby", "cam-0", "enroll", "recognize", "uint8", "float16"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(document, dict):
        for key, value in document.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated_json(draw: st.DrawFn, valid: dict[str, Any]) -> Any:
    """A valid JSON document with a few fields replaced, deleted or added."""
    document = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(document))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not paths or not isinstance(document, dict):
            return draw(json_values)
        path = draw(st.sampled_from(paths))
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(json_values)
    return document


def json_bytes(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


@st.composite
def mutated_bytes(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with a few bytes flipped, inserted or cut, or truncated."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "overwrite"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        elif action == "truncate":
            del data[position:]
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[position : position + len(chunk)] = chunk
    return bytes(data)


uint32 = st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 2**31, 2**32 - 1])


# 1. The face codec -----------------------------------------------------------------------------

VALID_FACE = codec.encode(
    make_header(height=16, width=16), np.arange(256, dtype=np.uint8).reshape(16, 16)
)
VALID_HEADER = make_header(height=16, width=16).model_dump(mode="json")


@st.composite
def face_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "mutated", "header", "lengths"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    if kind == "mutated":
        return draw(mutated_bytes(VALID_FACE))
    version = draw(st.sampled_from([1, 1, 1, 0, 2, 65535]))
    header = json_bytes(draw(mutated_json(VALID_HEADER)))
    if kind == "header":  # a lying header, honest framing, pixels of some length
        pixels = draw(st.binary(max_size=600)) if draw(st.booleans()) else b"\0" * 256
        return struct.pack(">4sHI", codec.MAGIC, version, len(header)) + header + pixels
    claimed = draw(uint32)  # framing that lies about the header length
    return (
        struct.pack(">4sHI", codec.MAGIC, version, claimed) + header + draw(st.binary(max_size=64))
    )


@pytest.mark.slow
@FUZZ
@given(face_payloads())
def test_face_codec_raises_only_codec_errors(payload: bytes) -> None:
    outcome = hostile("face_codec", lambda: codec.decode(payload), (codec.CodecError,))
    if outcome == "ok":  # what it accepts is well-formed
        message = codec.decode(payload)
        assert message.pixels.shape == (message.header.height, message.header.width)
        assert np.isfinite(message.pixels.astype(np.float32)).all()


# 2. Topics -------------------------------------------------------------------------------------

topic_text = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.sampled_from(
            ["rllfpr", "v1", "faces", "enroll", "events", "lobby", "cam-0", "", "#", "+"]
        )
        | st.text(max_size=70),
        max_size=7,
    ).map("/".join),
)


@FUZZ
@given(topic_text, st.one_of(st.text(max_size=70), st.integers()))
def test_topic_parsing_raises_only_topic_errors(topic: str, value: str | int) -> None:
    hostile("topics", lambda: topics.parse(topic), (topics.TopicError,))
    outcome = hostile("topics", lambda: topics.level(value), (topics.TopicError,))
    if outcome == "ok":  # an accepted level is one topic level, with no wildcard or separator
        assert not set(str(value)) & set("/+#$\0")
        assert 1 <= len(str(value)) <= 64


# 3. Key bundles, signed envelopes, the key ring ------------------------------------------------

SIGNER = Ed25519PrivateKey.generate()
FLEET = material.FleetKey.generate()
TRUSTED = {material.signer_id(SIGNER.public_key()): SIGNER.public_key()}
FLEET_KEYS = {FLEET.key_id: FLEET}
STATE = {"encoder.0.weight": np.ones((2, 1, 3, 3), np.float32)}
VALID_BUNDLE = bundle.seal(
    epoch=1,
    scope="fleet",
    recognizer_id="fuzz",
    architecture={"levels": 2},
    state=STATE,
    signing_key=SIGNER,
    fleet_key=FLEET,
)
VALID_BUNDLE_HEADER = bundle.read_header(VALID_BUNDLE).model_dump(mode="json")
_LENGTH = struct.Struct(">I")


def sign_bundle_parts(header: bytes, plaintext: bytes | None, ciphertext: bytes | None) -> bytes:
    """A bundle signed by the trusted key around the given header and content: the framing
    and signature are right, the rest is whatever the fuzzer chose."""
    head = struct.pack(">4sHI", bundle.MAGIC, bundle.FORMAT_VERSION, len(header)) + header
    if ciphertext is None:
        nonce = bytes.fromhex(json.loads(header)["nonce"])
        ciphertext = bundle.AESGCM(FLEET.secret).encrypt(nonce, plaintext or b"", head)
    body = head + _LENGTH.pack(len(ciphertext)) + ciphertext
    return body + SIGNER.sign(body)


npz_like = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=512).map(lambda tail: b"PK\x03\x04" + tail),
    st.binary(max_size=512).map(lambda tail: b"\x93NUMPY" + tail),
    st.just(bundle._pack_state(STATE)).flatmap(mutated_bytes),
)
# Format 2's plaintext: architecture length, architecture JSON, then the .npz (issue 21).
plaintexts = st.one_of(
    st.binary(max_size=512),
    npz_like.map(lambda state: _LENGTH.pack(2) + b"{}" + state),
)


@st.composite
def bundle_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "mutated", "signed-header", "signed-content"]))
    if kind == "random":
        return draw(st.binary(max_size=1024))
    if kind == "mutated":
        return draw(mutated_bytes(VALID_BUNDLE))
    if kind == "signed-header":  # a trusted signature over a hostile header
        header = json_bytes(draw(mutated_json(VALID_BUNDLE_HEADER)))
        return sign_bundle_parts(header, None, draw(st.binary(max_size=256)))
    header = json.dumps(VALID_BUNDLE_HEADER).encode()  # signed and encrypted garbage state
    return sign_bundle_parts(header, draw(plaintexts), None)


@FUZZ
@given(bundle_payloads())
def test_key_bundle_parsers_raise_only_bundle_errors(data: bytes) -> None:
    hostile("key_bundle", lambda: bundle.read_header(data), (BundleError,))
    hostile("key_bundle", lambda: bundle.open_bundle(data, TRUSTED, FLEET_KEYS), (BundleError,))
    ring = KeyRing(TRUSTED, [FLEET])
    hostile("key_bundle", lambda: ring.accept(data), (BundleError,))


VALID_ANNOUNCEMENT = KeyAnnouncement(
    scope="fleet",
    epoch=2,
    state=KeyState.ACTIVE,
    bundle_id=bundle.read_header(VALID_BUNDLE).bundle_id,
    bundle_sha256="0" * 64,
).model_dump(mode="json")
VALID_REVOCATION = Revocation(scope="fleet", epoch=1).model_dump(mode="json")


def signed_envelope(kind: str, payload: str, key: Ed25519PrivateKey = SIGNER) -> bytes:
    signature = key.sign(kind.encode() + b"\0" + payload.encode("utf-8", "surrogatepass"))
    return json_bytes(
        {
            "kind": kind,
            "signer": material.signer_id(key.public_key()),
            "payload": payload,
            "signature": base64.b64encode(signature).decode(),
        }
    )


@st.composite
def envelope_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "json", "mutated", "signed-garbage", "signed-json"]))
    valid = envelope.sign(KeyAnnouncement.model_validate(VALID_ANNOUNCEMENT), SIGNER)
    if kind == "random":
        return draw(st.binary(max_size=1024))
    if kind == "json":
        return json_bytes(draw(mutated_json(json.loads(valid))))
    if kind == "mutated":
        return draw(mutated_bytes(valid))
    message_kind = draw(st.sampled_from(["key-announcement", "revocation", "other"]))
    if kind == "signed-garbage":  # trusted signature over arbitrary text
        return signed_envelope(message_kind, draw(st.text(max_size=200)))
    template = VALID_ANNOUNCEMENT if message_kind == "key-announcement" else VALID_REVOCATION
    return signed_envelope(message_kind, json.dumps(draw(mutated_json(template))))


@FUZZ
@given(envelope_payloads())
def test_signed_envelopes_raise_only_signature_errors(data: bytes) -> None:
    allowed = (SignatureError,)
    hostile(
        "signed_envelope", lambda: envelope.open_signed(data, KeyAnnouncement, TRUSTED), allowed
    )
    hostile("signed_envelope", lambda: envelope.open_signed(data, Revocation, TRUSTED), allowed)
    ring = KeyRing(TRUSTED, [FLEET])
    hostile("signed_envelope", lambda: ring.revoke(data), (SignatureError, BundleError))


# 4. What an agent and a recognizer do with key topics --------------------------------------------

key_messages = st.one_of(bundle_payloads(), envelope_payloads(), st.just(b""))


@pytest.fixture(scope="module")
def agent_keys(tmp_path_factory: pytest.TempPathFactory) -> AgentKeys:
    """An agent that trusts the fuzzer's signer: hostile content gets past the signature."""
    directory = tmp_path_factory.mktemp("agent-keys")
    material.save_public_key(SIGNER.public_key(), directory / "signing.pub.pem")
    material.save_fleet_key(FLEET, directory / "fleet.key")
    return AgentKeys(
        KeySettings(
            directory=directory / "keys",
            trusted_signers=[directory / "signing.pub.pem"],
            fleet_key_file=directory / "fleet.key",
        ),
        directory / "agent",
        lambda network, _engine_dir: TorchBackend(network),
        AgentMetrics(),
        settle_s=0.0,
    )


@FUZZ
@given(key_messages)
def test_an_agent_refuses_hostile_key_messages_without_failing(
    agent_keys: AgentKeys, data: bytes
) -> None:
    keys = agent_keys
    hostile("agent_keys", lambda: classify(data), (BundleError, ValidationError, ValueError))
    # The agent's whole intake (sort, verify, apply) never raises; garbage never becomes its
    # key (no fuzzed activation names a staged bundle's SHA-256).
    hostile("agent_keys", lambda: keys._apply_all([data]), ())
    assert keys.current() is None


@pytest.fixture(scope="module")
def key_watch(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyWatch, list[object]]:
    directory = tmp_path_factory.mktemp("keywatch")
    material.save_public_key(SIGNER.public_key(), directory / "signing.pub.pem")
    settings = Settings.model_validate(
        {"keys": {"trusted_signers": [directory / "signing.pub.pem"]}}
    )
    actions: list[object] = []
    watch = KeyWatch(
        settings,
        loaded=lambda _scope: [0, 1],
        retire=lambda *arguments: actions.append(("retire", *arguments)),
        drop=lambda *arguments: actions.append(("drop", *arguments)),
    )
    return watch, actions


@FUZZ
@given(
    st.sampled_from(
        [
            topics.key_announcements("fleet", 2),
            topics.key_revocation("fleet", 1),
            "rllfpr/v1/keys/fleet/other",
        ]
    ),
    envelope_payloads(),
)
def test_a_recognizer_acts_only_on_verified_key_messages(
    key_watch: tuple[KeyWatch, list[object]], topic: str, data: bytes
) -> None:
    watch, actions = key_watch
    before = len(actions)
    outcome = hostile("recognizer_keys", lambda: watch.handle(topic, data), (SignatureError,))
    if outcome != "ok":
        assert len(actions) == before  # nothing retired or dropped on a refused message


# 5. Faces as the recognizer receives them, and its HTTP API ------------------------------------


@pytest.fixture(scope="module")
def api(idle_service: RecognizerService) -> TestClient:
    return TestClient(create_app(idle_service))


@pytest.fixture(scope="module")
def idle_service(
    mqtt_broker: Endpoint, redis_endpoint: Endpoint, model_store: Path
) -> RecognizerService:
    """A recognizer with its tiny model loaded, not consuming; its API with a token."""
    base = make_settings(mqtt_broker, redis_endpoint, model_store)
    options = base.recognizer.model_copy(update={"api_token": SecretStr(TOKEN)})
    service = RecognizerService(base.model_copy(update={"recognizer": options}))
    service.models.refresh()
    return service


GOOD_ENROLLMENT = face(image(1), subject="fuzz")
GOOD_FACE = face(image(2))
wire_payloads = st.one_of(
    face_payloads(),
    st.just(GOOD_ENROLLMENT[1]).flatmap(mutated_bytes),
    st.just(GOOD_FACE[1]).flatmap(mutated_bytes),
)


@pytest.mark.integration
@FUZZ
@given(st.sampled_from([GOOD_FACE[0], GOOD_ENROLLMENT[0]]) | topic_text, wire_payloads)
def test_a_delivered_face_is_processed_or_rejected_as_poison(
    idle_service: RecognizerService, topic: str, payload: bytes
) -> None:
    delivery = Delivery(topic, payload, 1, 1)
    outcome = hostile(
        "face_delivery", lambda: idle_service.processor.validate(delivery), (PoisonMessageError,)
    )
    if outcome == "ok":
        accepted = idle_service.processor.validate(delivery)
        assert accepted.pixels.shape == (SIDE, SIDE)
        assert (accepted.header.key_scope, accepted.header.key_epoch) == ("fleet", EPOCH)


def rejected_total(service: RecognizerService) -> float:
    return sum(
        sample.value
        for metric in service.metrics.registry.collect()
        if metric.name == "rllfpr_faces_rejected"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


@pytest.fixture
def consuming(
    start_service: Callable[..., RecognizerService], client: Client
) -> tuple[RecognizerService, Client]:
    """A running recognizer (real broker and Redis) with alice enrolled."""
    service = start_service()
    client.publish(*face(ALICE, subject="alice")[:2])
    wait_until(lambda: counter(service, "rllfpr_templates_enrolled_total") == 1)
    return service, client


ALICE = image(3)


@pytest.mark.integration
@settings(FUZZ, max_examples=max(1, EXAMPLES // 10))
@given(st.lists(wire_payloads, min_size=1, max_size=6), st.integers(0, 2**31))
def test_poison_on_the_wire_is_acknowledged_counted_and_the_next_face_still_recognized(
    consuming: tuple[RecognizerService, Client], payloads: list[bytes], seed: int
) -> None:
    service, client = consuming
    topic = topics.faces("lobby", "cam-0")
    poison = []
    for payload in payloads:  # keep what the recognizer must refuse (a flipped pixel is fine)
        try:
            service.processor.validate(Delivery(topic, payload, 0, 0))
        except PoisonMessageError:
            poison.append(payload)
    rejected = rejected_total(service)
    acknowledged = counter(service, "rllfpr_faces_acknowledged_total")
    for payload in poison:
        client.publish(topic, payload)
    good_topic, good, good_id = face(noisy(ALICE, seed), track=seed)
    client.publish(good_topic, good)
    wait_until(lambda: good_id in covered(client.received()))
    event = next(e for e in client.received() if good_id in {str(m) for m in e.message_ids})
    assert (event.decision, event.subject) == ("match", "alice")
    assert rejected_total(service) == rejected + len(poison)
    wait_until(
        lambda: (
            counter(service, "rllfpr_faces_acknowledged_total") == acknowledged + len(poison) + 1
        )
    )


def quote(text: str) -> str:
    """One path segment as a client sends it: every byte percent-encoded."""
    return _quote(text, safe="")


HTTP_OK = {200, 201, 400, 401, 404, 405, 422, 503}
path_text = st.text(st.characters(codec="utf-8", exclude_characters="/?#"), min_size=1, max_size=70)


@pytest.mark.integration
@FUZZ
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.just(GOOD_ENROLLMENT[1]).flatmap(mutated_bytes),
        face_payloads(),
    ),
    path_text,
    path_text,
    st.one_of(st.integers(), path_text),
    st.sampled_from([TOKEN, "", "wrong", "x" * 300]),
)
def test_the_http_api_answers_hostile_requests_with_a_client_error(
    api: TestClient,
    body: bytes,
    subject: str,
    scope: str,
    number: int | str,
    token: str,
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    responses: list[Any] = []
    requests: list[Callable[[], None]] = [
        lambda: responses.append(api.post("/v1/enrollments", content=body, headers=headers)),
        lambda: responses.append(
            api.delete(f"/v1/subjects/{quote(subject)}", params={"scope": scope}, headers=headers)
        ),
        lambda: responses.append(
            api.get(f"/v1/galleries/{quote(scope)}/{quote(str(number))}/subjects", headers=headers)
        ),
        lambda: responses.append(api.get("/v1/audit", params={"count": number}, headers=headers)),
    ]
    for request in requests:
        hostile("http_api", request, ())
    for response in responses:
        assert response.status_code in HTTP_OK, (response.status_code, response.text)


# 6. Events and statuses as a subscriber parses them -------------------------------------------

VALID_EVENT = {
    "decision": "match",
    "subject": "alice",
    "score": 0.9,
    "margin": 0.2,
    "site": "lobby",
    "camera": "cam-0",
    "agent": "agent-1",
    "track_id": 3,
    "message_ids": ["6f1c2a3e-2f4b-4c1e-9a57-0b8f3c3d2e10"],
    "captured_at": "2026-11-26T12:00:00+00:00",
    "decision_latency_ms": 12.5,
    "key_epoch": 1,
}
VALID_STATUS = {"agent": "agent-1", "site": "lobby", "state": "online", "version": "0.1.0"}


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=512),
        mutated_json(VALID_EVENT).map(json_bytes),
        mutated_json(VALID_STATUS).map(json_bytes),
    )
)
def test_events_and_statuses_raise_only_validation_errors(data: bytes) -> None:
    hostile("events", lambda: RecognitionEvent.model_validate_json(data), (ValidationError,))
    hostile("events", lambda: AgentStatus.model_validate_json(data), (ValidationError,))


# 7. The configuration loader -------------------------------------------------------------------

VALID_CONFIG = {
    "mqtt": {"host": "broker", "port": 1883, "tls": False},
    "redis": {"url": "redis://127.0.0.1:6379/0"},
    "recognizer": {"scopes": ["fleet"], "max_batch": 32, "search_ef": 200},
    "agent": {"site": "lobby", "camera": "cam-0"},
    "log_level": "INFO",
}
yaml_text = st.one_of(
    st.text(max_size=300),
    mutated_json(VALID_CONFIG).map(lambda document: yaml.safe_dump(document)),
    mutated_json(VALID_CONFIG).map(json.dumps),  # JSON is YAML
    st.lists(
        st.sampled_from(
            ["a: &a [1, 2]", "b: [*a, *a]", "mqtt:", "  port: 1", "- x", "!!binary AA==", "&x", "{"]
        ),
        max_size=6,
    ).map("\n".join),
)
environment_names = st.sampled_from(
    [
        "RLLFPR_MQTT__PORT",
        "RLLFPR_MQTT",
        "RLLFPR_RECOGNIZER__SCOPES",
        "RLLFPR_RECOGNIZER__MAX_BATCH",
        "RLLFPR_REDIS__URL",
        "RLLFPR_LOG_LEVEL",
        "RLLFPR_NOT_A_FIELD",
    ]
)


@FUZZ
@given(yaml_text, environment_names, st.text(max_size=40))
def test_the_config_loader_raises_only_config_errors(
    tmp_path_factory: pytest.TempPathFactory, text: str, variable: str, value: str
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    hostile("config", lambda: load_settings(path), (ConfigError,))
    if "\0" in value:  # an environment variable cannot hold NUL
        return
    previous = os.environ.get(variable)
    os.environ[variable] = value
    try:
        hostile("config", lambda: load_settings(None), (ConfigError,))
    finally:
        if previous is None:
            del os.environ[variable]
        else:
            os.environ[variable] = previous
