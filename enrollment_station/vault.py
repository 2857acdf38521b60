"""The enrollment station's photo vault: enrollment faces kept on the station, encrypted at rest.

A key rotation makes every template of the old epoch useless, so each enrollment station
re-scrambles its people for the new epoch before it is activated (``rllfpr gallery reenroll``);
no raw face is ever needed on a recognizer or a broker. The vault keeps, per photo, the face
region and its five landmarks in that region's coordinates, so a face is re-aligned at whatever
input size the new key has, as at the first enrollment (the region is what any alignment reads).

One file per subject, ``{subject}.rlpv``: ``RLPV`` + format byte + 12-byte nonce + AES-256-GCM
ciphertext of an npz, with the subject name as associated data (a file renamed to another
subject does not decrypt). The 32-byte vault key is created 0600 beside nothing else; keep it
on the station (or in its TPM / secret store), never with the recognizer.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enrollment_station.enrollment import ScrambledFace
from rllfpr.faces import pixels
from rllfpr.faces.align import align, similarity_transform
from rllfpr.faces.detect import Detection
from rllfpr.files import write_private
from rllfpr.keys.material import KeyMaterialError
from rllfpr.keys.scrambler_key import ScramblerKey
from rllfpr.wire.messages import CropBox
from rllfpr.wire.topics import level

MAGIC = b"RLPV"
FORMAT_VERSION = 1
FOOTPRINT = 112  # any size gives the same footprint: the template scales with the output
MARGIN = 2  # pixels around the footprint, for bilinear interpolation at its edge


class VaultError(ValueError):
    """A vault file or key is missing, tampered with, or belongs to another subject."""


@dataclass(frozen=True)
class VaultFace:
    region: np.ndarray  # (H, W, 3) uint8 RGB face region
    landmarks: np.ndarray  # (5, 2) in region coordinates
    source: str  # the photo's file name, for the operator
    score: float = 1.0  # the detector's confidence when the photo was enrolled

    def aligned(self, size: int) -> np.ndarray:
        return align(self.region, self.landmarks, size)


def face_region(image: np.ndarray, detection: Detection, source: str) -> VaultFace:
    """The part of ``image`` that any alignment of this face reads (the aligned square's
    footprint, which does not depend on the output size), plus a margin for interpolation."""
    inverse = cv2.invertAffineTransform(similarity_transform(detection.landmarks, FOOTPRINT))
    corners = np.array([[0, 0, 1], [FOOTPRINT, 0, 1], [0, FOOTPRINT, 1], [FOOTPRINT, FOOTPRINT, 1]])
    footprint = corners @ inverse.T
    height, width = image.shape[:2]
    left = int(np.clip(np.floor(footprint[:, 0].min()) - MARGIN, 0, width - 1))
    top = int(np.clip(np.floor(footprint[:, 1].min()) - MARGIN, 0, height - 1))
    right = int(np.clip(np.ceil(footprint[:, 0].max()) + MARGIN, left + 1, width))
    bottom = int(np.clip(np.ceil(footprint[:, 1].max()) + MARGIN, top + 1, height))
    region = np.ascontiguousarray(image[top:bottom, left:right])
    landmarks = detection.landmarks.astype(np.float64) - np.array([left, top], np.float64)
    return VaultFace(region, landmarks, source, float(detection.score))


def create_vault_key(path: Path) -> None:
    """A new random vault key, written 0600; refuses to overwrite one."""
    write_private(path, secrets.token_bytes(32), exclusive=True)


def load_vault_key(path: Path) -> bytes:
    if not path.exists():
        raise KeyMaterialError(f"no vault key at {path} (create one with create_vault_key)")
    if path.stat().st_mode & 0o077:
        raise KeyMaterialError(f"{path} is readable by others; chmod 600 it")
    key = path.read_bytes()
    if len(key) != 32:
        raise KeyMaterialError(f"{path} does not hold a 32-byte key")
    return key


class PhotoVault:
    def __init__(self, directory: Path, key: bytes) -> None:
        self.directory = directory
        self._cipher = AESGCM(key)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, subject: str) -> Path:
        return self.directory / f"{level(subject)}.rlpv"

    def add(self, subject: str, faces: list[VaultFace]) -> int:
        """Add faces to a subject (kept with the ones already there); returns the total."""
        kept = self.faces(subject) if self._path(subject).exists() else []
        everything = kept + faces
        buffer = io.BytesIO()
        arrays: dict[str, np.ndarray] = {
            "sources": np.array([f.source for f in everything]),
            "scores": np.array([f.score for f in everything], np.float32),
        }
        for index, face in enumerate(everything):
            arrays[f"region_{index}"] = face.region
            arrays[f"landmarks_{index}"] = face.landmarks
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        nonce = secrets.token_bytes(12)
        sealed = self._cipher.encrypt(nonce, buffer.getvalue(), self._associated(subject))
        write_private(self._path(subject), MAGIC + bytes([FORMAT_VERSION]) + nonce + sealed)
        return len(everything)

    def faces(self, subject: str) -> list[VaultFace]:
        path = self._path(subject)
        if not path.exists():
            raise VaultError(f"no photos of {subject!r} in the vault")
        data = path.read_bytes()
        if data[:4] != MAGIC or len(data) < 17 or data[4] != FORMAT_VERSION:
            raise VaultError(f"{path} is not a version-{FORMAT_VERSION} vault file")
        try:
            plain = self._cipher.decrypt(data[5:17], data[17:], self._associated(subject))
        except InvalidTag as error:
            raise VaultError(f"{path} does not decrypt: wrong key, tampered, or renamed") from error
        with np.load(io.BytesIO(plain), allow_pickle=False) as archive:
            sources, scores = archive["sources"].tolist(), archive["scores"].tolist()
            return [
                VaultFace(archive[f"region_{i}"], archive[f"landmarks_{i}"], source, score)
                for i, (source, score) in enumerate(zip(sources, scores, strict=True))
            ]

    def subjects(self) -> list[str]:
        return sorted(path.stem for path in self.directory.glob("*.rlpv"))

    def erase(self, subject: str) -> bool:
        """Forget a subject's photos (the right to erasure reaches the station too)."""
        path = self._path(subject)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    @staticmethod
    def _associated(subject: str) -> bytes:
        return MAGIC + subject.encode()


def scramble(faces: list[VaultFace], key: ScramblerKey) -> list[ScrambledFace]:
    """The vault's faces aligned at the key's input size and scrambled with it, ready for
    ``enrollment_messages``; the crop box is the stored region (no frame exists any more)."""
    if not faces:
        return []
    size = key.network.config.input_size
    aligned = np.stack([face.aligned(size) for face in faces])
    scrambled = []
    for face, wire in zip(faces, pixels.scramble(key.network, aligned), strict=True):
        height, width = face.region.shape[:2]
        crop = CropBox(x=0, y=0, width=width, height=height, frame_width=width, frame_height=height)
        scrambled.append(ScrambledFace(Path(face.source), wire, face.score, crop))
    return scrambled
