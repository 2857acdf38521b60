"""AES-256 over each grey image's bytes, row-major: the encrypted-image baseline.

- ECB: each 16-byte block (16 neighbouring pixels of a row) is encrypted independently with
  one key, so equal blocks give equal ciphertext: ECB famously leaks structure (the "ECB
  penguin"). Deterministic, so a recognizer can at least try to learn from it.
- CTR: a fresh random 16-byte initial counter per image, so every image is encrypted with a
  different keystream: the ciphertext is indistinguishable from random bytes.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from trainer.studies.privacy.baselines.base import Properties, Protection, grey_pixels

_BLOCK = 16


def _check_size(images: np.ndarray) -> None:
    if images[0].size % _BLOCK:
        raise ValueError(f"AES-ECB needs images whose pixel count is a multiple of {_BLOCK}")


def encrypt_ecb(images: np.ndarray, key: bytes) -> np.ndarray:
    _check_size(images)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    data = encryptor.update(np.ascontiguousarray(images, np.uint8).tobytes()) + encryptor.finalize()
    return np.frombuffer(data, np.uint8).reshape(images.shape).copy()


def decrypt_ecb(images: np.ndarray, key: bytes) -> np.ndarray:
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    data = decryptor.update(np.ascontiguousarray(images, np.uint8).tobytes()) + decryptor.finalize()
    return np.frombuffer(data, np.uint8).reshape(images.shape).copy()


def crypt_ctr(image: np.ndarray, key: bytes, nonce: bytes) -> np.ndarray:
    """Encrypts or decrypts (the same operation) one image with its initial counter."""
    cipher = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    data = cipher.update(np.ascontiguousarray(image, np.uint8).tobytes()) + cipher.finalize()
    return np.frombuffer(data, np.uint8).reshape(image.shape).copy()


class AesEcb(Protection):
    properties = Properties("AES-256-ECB", True, "256-bit", "with the key", "yes (new key)")

    def __init__(self, key: bytes) -> None:
        self.key = key

    def protect(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return encrypt_ecb(grey_pixels(faces), self.key)


class AesCtr(Protection):
    properties = Properties(
        "AES-256-CTR (random IV)", True, "256-bit", "with the key", "yes (new key)"
    )

    def __init__(self, key: bytes) -> None:
        self.key = key

    def protect(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        grey = grey_pixels(faces)
        nonces = rng.integers(0, 256, (len(grey), _BLOCK), dtype=np.uint8)
        encrypted = [
            crypt_ctr(image, self.key, nonce.tobytes())
            for image, nonce in zip(grey, nonces, strict=True)
        ]
        return np.stack(encrypted) if encrypted else grey
