"""Key-rebuild attack (issue 21): rebuild an SN key from what a party without the fleet key sees.

An attacker reads bytes: MQTT payloads, files, log lines, HTTP answers. ``harvest`` collects
every number those bytes show that could be a seed (each decimal run and each hex run of the
printable text below 2**63; base64 runs decoded and searched again) and every JSON object that
is a valid ``ScramblerConfig``. A seed written inside a longer run, or in binary, is what
``secret_fragments`` finds.
``rebuilds_a_kernel`` tries every one of those integers as a key seed, with every architecture
found and the public one (Kerckhoffs), and says whether any draws the key's kernels.
``best_rebuild`` builds an SN from each plausible seed, self-learns its BatchNorm statistics on
public faces as the trainer does, and reports the largest |correlation| between its output and
the real key's wire pixels on victims' faces. A leaked seed gives 0.5-0.9; unrelated keys stay
near 0 (``tests/test_key_secrecy.py``, ``benchmarks/key_secrecy.py``).

``secret_fragments`` lists the byte strings that would betray a key directly: the seed in
decimal, hex and as 8 bytes either way round, and runs of every kernel and BatchNorm statistic.
``seal_format_1`` writes a bundle as releases before issue 21 did (seed in the public header),
to measure what they exposed; the trainer refuses to publish one.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import secrets
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import ValidationError

from rllfpr.keys.material import FleetKey, signer_id
from rllfpr.models.scrambler import KEY_SEED_BITS, ScramblerConfig, ScramblerNetwork

_PRINTABLE = re.compile(rb"[\x20-\x7e]{4,}")
_DECIMAL = re.compile(r"\d+")
_HEX = re.compile(r"[0-9a-fA-F]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
_SEED_LIMIT = 2**KEY_SEED_BITS
_SN_FIELDS = set(ScramblerConfig.model_fields)
# A production seed is 63 random bits (``random_key_seed``): below 2**32 with probability
# 2**-31. Numbers below that are checked for kernels, not worth an SN each.
PLAUSIBLE_SEED = 2**32


@dataclass
class Harvest:
    seeds: set[int]
    architectures: list[ScramblerConfig]


def _numbers(text: str) -> Iterable[int]:
    """Every decimal run, and every hex run with a letter in it, that could be a seed."""
    for run in _DECIMAL.findall(text):
        yield int(run)
    for run in _HEX.findall(text):
        if not run.isdigit():
            yield int(run, 16)


def _json_objects(text: str) -> Iterable[object]:
    """Every JSON document that starts somewhere in ``text`` and, recursively, every value
    inside it (JSON held in string values too)."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"[{\[]", text)):
        try:
            document, _end = decoder.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):
            continue
        stack: list[object] = [document]
        while stack:
            item = stack.pop()
            yield item
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, str) and item[:1] in "{[":
                yield from _json_objects(item)


def harvest(blobs: Iterable[bytes], depth: int = 2) -> Harvest:
    """Candidate seeds and architectures from raw bytes, as an attacker would look for them."""
    seeds: set[int] = set()
    architectures: dict[str, ScramblerConfig] = {}
    for blob in blobs:
        for match in _PRINTABLE.finditer(blob):
            text = match.group().decode("ascii")
            seeds.update(n for n in _numbers(text) if n < _SEED_LIMIT)
            for item in _json_objects(text):
                if isinstance(item, dict) and len(set(item) & _SN_FIELDS) >= 2:
                    try:
                        config = ScramblerConfig.model_validate(item)
                    except (ValidationError, TypeError):
                        continue
                    architectures[config.model_dump_json()] = config
            if depth > 0:
                decoded = []
                for run in _BASE64.findall(text):
                    try:
                        decoded.append(base64.b64decode(run + "=" * (-len(run) % 4)))
                    except (binascii.Error, ValueError):
                        continue
                found = harvest(decoded, depth - 1)
                seeds |= found.seeds
                for config in found.architectures:
                    architectures[config.model_dump_json()] = config
    return Harvest(seeds, list(architectures.values()))


def secret_fragments(network: ScramblerNetwork) -> dict[str, bytes]:
    """Byte strings whose presence anywhere betrays the key (name -> bytes)."""
    seed = network.seed
    fragments = {
        "seed (decimal)": str(seed).encode(),
        "seed (hex)": f"{seed:x}".encode(),
        "seed (8 bytes, little-endian)": seed.to_bytes(8, "little"),
        "seed (8 bytes, big-endian)": seed.to_bytes(8, "big"),
    }
    for name, tensor in network.state_dict().items():
        values = tensor.detach().cpu().numpy().ravel()
        if values.size >= 8:  # runs of 8 float32 (32 bytes) never match by chance
            fragments[name] = values[:8].astype(np.float32).tobytes()
            fragments[f"{name} (float64)"] = values[:8].astype(np.float64).tobytes()
    return fragments


def leaked(data: bytes, fragments: dict[str, bytes]) -> list[str]:
    return [name for name, fragment in fragments.items() if fragment in data]


def real_faces(data_root: Path, count: int, start: int, side: int) -> np.ndarray:
    """(N, side, side, 3) uint8 RGB: the central 112 px of the first photo of ``count`` LFW
    people (LFW centres each face), resized. Real faces without a detector."""
    people = sorted(p for p in (data_root / "lfw").iterdir() if p.is_dir())[start : start + count]
    faces = []
    for person in people:
        image = cv2.imread(str(sorted(person.glob("*.jpg"))[0]), cv2.IMREAD_COLOR)
        assert image is not None, person
        crop = cv2.cvtColor(image[69:181, 69:181], cv2.COLOR_BGR2RGB)
        faces.append(cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA))
    return np.stack(faces)


def to_input(faces: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def best_rebuild(
    found: Harvest,
    public: ScramblerConfig,
    public_faces: np.ndarray,
    keys: Sequence[ScramblerNetwork],
    victims: np.ndarray,
    screen: int = 8,
    confirm: float = 0.1,
) -> tuple[list[float], int]:
    """(for each key, the largest |r| over every plausible candidate seed and every
    architecture; SNs tried).

    Each candidate SN self-learns its BatchNorm statistics on public faces as the trainer
    does; its raw output (``to_pixels`` is affine up to rounding and clipping) is correlated
    with each real key's wire pixels, both reduced to what depends on the face (``_centred``).
    Two stages keep this cheap without losing precision: every candidate learns on 16 public
    faces and is compared on the first ``screen`` victims; one that reaches ``confirm`` there
    learns again on every public face and is compared on every victim, and that value counts.
    Between a key that passes rotation's screen and an unrelated one, |r| has a standard
    deviation of about 0.01-0.02; a leaked seed gives 0.5-0.9."""
    all_victims, all_public = to_input(victims), to_input(public_faces)
    truths = [_scramble(key, all_victims) for key in keys]
    references = [(_centred(truth[:screen]), _centred(truth)) for truth in truths]
    best, tried = [0.0] * len(keys), 0
    for config in _configs(found, public):
        for seed in sorted(s for s in found.seeds if s >= PLAUSIBLE_SEED):
            output = _raw(_learned(config, seed, all_public[:16]), all_victims[:screen])
            everyone = None
            for index, (few, every) in enumerate(references):
                correlation = _correlation(output, few)
                if abs(correlation) >= confirm and len(victims) > screen:
                    if everyone is None:
                        everyone = _raw(_learned(config, seed, all_public), all_victims)
                    correlation = _correlation(everyone, every)
                best[index] = max(best[index], abs(correlation))
            tried += 1
    return best, tried


def rebuild_correlation(
    config: ScramblerConfig,
    seed: int,
    public_faces: np.ndarray,
    key: ScramblerNetwork,
    victims: np.ndarray,
) -> float:
    """|r| of one SN rebuilt from (``config``, ``seed``), BatchNorm self-learned on every
    public face, against ``key``'s wire pixels on every victim."""
    faces = to_input(victims)
    rebuilt = _raw(_learned(config, seed, to_input(public_faces)), faces)
    return abs(_correlation(rebuilt, _centred(_scramble(key, faces))))


_BATCH = 64


def _learned(config: ScramblerConfig, seed: int, faces: torch.Tensor) -> ScramblerNetwork:
    """A fresh SN whose BatchNorm averages the statistics of ``faces`` (as ``self_learn``)."""
    network = ScramblerNetwork(config, seed)
    with torch.no_grad():
        network.train()  # momentum None: the running statistics average every batch seen
        for start in range(0, len(faces), _BATCH):
            network(faces[start : start + _BATCH])
    return network.eval()


def _raw(network: ScramblerNetwork, faces: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        parts = [network(faces[i : i + _BATCH]).numpy() for i in range(0, len(faces), _BATCH)]
    return np.concatenate(parts)


def _scramble(key: ScramblerNetwork, faces: torch.Tensor) -> np.ndarray:
    parts = [key.scramble(faces[i : i + _BATCH]).numpy() for i in range(0, len(faces), _BATCH)]
    return np.concatenate(parts)


def _correlation(output: np.ndarray, reference: np.ndarray) -> float:
    guess = _centred(output)
    denominator = np.sqrt((guess**2).sum() * (reference**2).sum())
    return float((guess * reference).sum() / denominator) if denominator else 0.0


def _centred(images: np.ndarray) -> np.ndarray:
    """The part of each image that depends on the face, flattened: minus the image's own mean
    and minus the mean image over the faces. A rebuilt SN is worth something only if it
    predicts that part; the rest is the same for every face (border effects of the zero
    padding, the level each key gives to each position) and made two unrelated keys agree by
    chance up to |r| 0.13 on 128 faces."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    return (flat - flat.mean(axis=0, keepdims=True)).reshape(-1)


def _configs(found: Harvest, public: ScramblerConfig) -> list[ScramblerConfig]:
    """The public architecture and every one found, at the public input size, once each."""
    unique = {}
    for config in [public, *found.architectures]:
        config = config.model_copy(update={"input_size": public.input_size})
        unique[config.model_dump_json()] = config
    return list(unique.values())


def first_kernel(config: ScramblerConfig, seed: int) -> torch.Tensor:
    """The first kernel an SN of ``config`` draws from ``seed`` (its first conv's weight),
    without building the SN: cheap enough for every number an attacker sees."""
    generator = torch.Generator().manual_seed(seed)
    shape = (config.widths[0], config.in_channels, 3, 3)
    if config.kernel_distribution == "normal":
        return torch.randn(shape, generator=generator) * config.kernel_std
    bound = config.kernel_std * 3**0.5
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def rebuilds_a_kernel(found: Harvest, public: ScramblerConfig, key: ScramblerNetwork) -> bool:
    """Whether any candidate seed, with any architecture, draws the key's first kernel (or the
    start of it: a wrong guess of the widths still draws the same random stream). Every
    candidate is tried, whatever its size."""
    real = key.state_dict()["encoder.0.0.weight"].flatten()  # the first conv drawn
    assert torch.equal(first_kernel(key.config, key.seed).flatten(), real)  # draws as the SN
    for config in _configs(found, public):
        for seed in found.seeds:
            drawn = first_kernel(config, seed).flatten()
            length = min(len(drawn), len(real))
            if torch.equal(drawn[:length], real[:length]):
                return True
    return False


def seal_format_1(
    network: ScramblerNetwork,
    *,
    epoch: int,
    scope: str,
    signing_key: Ed25519PrivateKey,
    fleet_key: FleetKey,
) -> bytes:
    """A bundle as the releases before issue 21 wrote it: architecture and seed in the
    signed, unencrypted header; the state (kernels and statistics) encrypted."""
    key = network.key_state()
    nonce = secrets.token_bytes(12)
    header = {
        "format_version": 1,
        "bundle_id": str(uuid.uuid4()),
        "epoch": epoch,
        "scope": scope,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "recognizer_id": f"rec-e{epoch}",
        "architecture": key["architecture"],
        "signer": signer_id(signing_key.public_key()),
        "fleet_key_id": fleet_key.key_id,
        "nonce": nonce.hex(),
    }
    head = json.dumps(header).encode()
    signed_head = struct.pack(">4sHI", b"RLKB", 1, len(head)) + head
    archive = io.BytesIO()
    np.savez(archive, **key["state"])
    ciphertext = AESGCM(fleet_key.secret).encrypt(nonce, archive.getvalue(), signed_head)
    body = signed_head + struct.pack(">I", len(ciphertext)) + ciphertext
    return body + signing_key.sign(body)
