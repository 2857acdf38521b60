"""Binary codec of face messages: a JSON header and the scrambled pixels, in one MQTT payload.

Layout (all integers big-endian)::

    offset  size  field
    0       4     magic b"RLFM"
    4       2     schema_version (uint16), equal to the header's
    6       4     header length N (uint32)
    10      N     header: UTF-8 JSON of ``FaceHeader``
    10+N    P     pixels: height x width, one channel, row-major, ``pixel_format``
                  (uint8, or float16 little-endian); P = height * width * itemsize

The pixels are always the output of the one fixed SN-to-pixel conversion of the key in use;
this module only checks that they are well-formed. It never accepts more than one channel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from rllfpr.wire.messages import FACE_SCHEMA_VERSION, FaceHeader, PixelFormat

MAGIC = b"RLFM"
SUPPORTED_FACE_SCHEMA_VERSIONS = frozenset({FACE_SCHEMA_VERSION})
MAX_HEADER_BYTES = 4096
_PREFIX = struct.Struct(">4sHI")
_DTYPES: dict[PixelFormat, np.dtype[Any]] = {
    PixelFormat.UINT8: np.dtype("u1"),
    PixelFormat.FLOAT16: np.dtype("<f2"),
}


class CodecError(ValueError):
    """A face message is malformed; the text says what is wrong."""


@dataclass(frozen=True)
class FaceMessage:
    header: FaceHeader
    pixels: np.ndarray  # (height, width), dtype of header.pixel_format; read-only after decode


def _check_pixels(header: FaceHeader, pixels: np.ndarray) -> None:
    expected_dtype = _DTYPES[header.pixel_format]
    if pixels.dtype.newbyteorder("<") != expected_dtype.newbyteorder("<"):
        raise CodecError(
            f"pixels have dtype {pixels.dtype}, header says {header.pixel_format.value}"
        )
    if pixels.shape != (header.height, header.width):
        raise CodecError(
            f"pixels have shape {pixels.shape}, header says one channel of "
            f"{header.height}x{header.width}"
        )
    if header.pixel_format is PixelFormat.FLOAT16 and not np.isfinite(pixels).all():
        raise CodecError("float16 pixels contain NaN or infinity")


def encode(header: FaceHeader, pixels: np.ndarray) -> bytes:
    """Serialize one face message; raises ``CodecError`` if pixels and header disagree."""
    _check_pixels(header, pixels)
    header_bytes = header.model_dump_json().encode()
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise CodecError(f"header of {len(header_bytes)} bytes exceeds {MAX_HEADER_BYTES}")
    data = np.ascontiguousarray(pixels, dtype=_DTYPES[header.pixel_format]).tobytes()
    return _PREFIX.pack(MAGIC, header.schema_version, len(header_bytes)) + header_bytes + data


def decode(payload: bytes | bytearray | memoryview) -> FaceMessage:
    """Parse and validate one face message; raises ``CodecError`` with the reason."""
    payload = bytes(payload)
    if len(payload) < _PREFIX.size:
        raise CodecError(
            f"truncated face message: {len(payload)} bytes, prefix needs {_PREFIX.size}"
        )
    magic, version, header_length = _PREFIX.unpack_from(payload)
    if magic != MAGIC:
        raise CodecError(f"not a face message: magic {magic!r}, expected {MAGIC!r}")
    if version not in SUPPORTED_FACE_SCHEMA_VERSIONS:
        raise CodecError(
            f"unsupported face schema_version {version}; this build accepts "
            f"{sorted(SUPPORTED_FACE_SCHEMA_VERSIONS)}"
        )
    if header_length > MAX_HEADER_BYTES:
        raise CodecError(f"header length {header_length} exceeds {MAX_HEADER_BYTES}")
    header_end = _PREFIX.size + header_length
    if len(payload) < header_end:
        raise CodecError(f"truncated face message: header needs {header_end} bytes")
    try:
        header = FaceHeader.model_validate_json(payload[_PREFIX.size : header_end])
    except ValidationError as error:
        raise CodecError(f"invalid face header: {error}") from error
    if header.schema_version != version:
        raise CodecError(
            f"prefix schema_version {version} differs from header's {header.schema_version}"
        )
    pixel_data = payload[header_end:]
    if len(pixel_data) != header.pixel_bytes:
        raise CodecError(
            f"pixel data is {len(pixel_data)} bytes; {header.height}x{header.width} "
            f"{header.pixel_format.value} needs {header.pixel_bytes}"
        )
    pixels = np.frombuffer(pixel_data, dtype=_DTYPES[header.pixel_format]).reshape(
        header.height, header.width
    )
    _check_pixels(header, pixels)
    return FaceMessage(header=header, pixels=pixels)
