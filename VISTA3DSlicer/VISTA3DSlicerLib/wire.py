"""What ``vista3d serve`` and its clients (``remote``) send each other: the one encoding both use.

Arrays travel as their raw C-order bytes compressed with Zstandard, described by a small JSON
header (``X-VISTA3D-Array``): a volume with its shape, type and IJK->RAS affine; a result as the
box of voxels it covers (its start and shape on the volume's grid), so a click's reply is the
changed box, not the volume. Decoding checks the declared size against the frame before
decompressing (no decompression bomb) and the bytes against the shape (no misread volume).
Only numbers travel: nothing of a request reaches a file path, a shell or ``pickle``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .errors import VISTA3DError

#: Changes when a request or reply changes meaning; client and server must agree on it.
PROTOCOL = 1
ARRAY_HEADER = "X-VISTA3D-Array"
#: The JSON reply header of a request that returns an array (``{"box": ..., ...}``).
REPLY_HEADER = "X-VISTA3D-Reply"
TOKEN_HEADER = "Authorization"
CLIENT_HEADER = "X-VISTA3D-Client"
#: The ``code`` of a reply about a session that is gone (expired, or the server restarted): the client opens a new one.
SESSION_GONE = "session_gone"
#: The ``code`` of a reply about a request its client cancelled (``POST .../cancel``).
CANCELLED = "cancelled"
#: Voxel types a volume may have (what ITK reads medical images as); labels and masks come back as uints.
VOLUME_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
#: Zstandard level 3: a CT compresses about 3x in tens of milliseconds; higher levels cost more than the link saves.
_LEVEL = 3


class WireError(VISTA3DError):
    """A payload that is not what its header says (the server answers 400 with this message)."""


@dataclass(frozen=True)
class Box:
    """A box of voxels ``[start, start + shape)`` on a volume's grid."""

    start: tuple[int, int, int]
    shape: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.shape))  # type: ignore[return-value]

    @classmethod
    def of(cls, region: Optional[tuple[slice, slice, slice]]) -> Optional["Box"]:
        if region is None:
            return None
        return cls(tuple(int(s.start) for s in region), tuple(int(s.stop - s.start) for s in region))  # type: ignore[arg-type]

    def to_json(self) -> dict:
        return {"start": list(self.start), "shape": list(self.shape)}

    @classmethod
    def from_json(cls, value: Any, within: tuple[int, ...]) -> "Box":
        try:
            start, shape = (tuple(int(v) for v in value[key]) for key in ("start", "shape"))
        except (KeyError, TypeError, ValueError):
            raise WireError(f"A box must be {{\"start\": [i, j, k], \"shape\": [i, j, k]}}, not {value!r}.") from None
        if len(start) != 3 or len(shape) != 3 or any(
                s < 0 or n < 0 or s + n > size for s, n, size in zip(start, shape, within)):
            raise WireError(f"The box {value!r} does not fit the volume of {list(within)} voxels.")
        return cls(start, shape)  # type: ignore[arg-type]


def compress(array: np.ndarray) -> bytes:
    """The array's C-order bytes, Zstandard-compressed (the frame records their size)."""
    import zstandard

    return zstandard.ZstdCompressor(level=_LEVEL).compress(np.ascontiguousarray(array).tobytes())


def decompress(data: bytes, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """The array ``compress`` made, refusing a frame whose size is not the shape's before decompressing it."""
    import zstandard

    expected = math.prod(shape) * np.dtype(dtype).itemsize
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise WireError("The data is not a Zstandard frame: compress the array's bytes with Zstandard.") from None
    if declared != expected:
        raise WireError(f"The data holds {declared} bytes, but a {'x'.join(map(str, shape))} array of {dtype} is "
                        f"{expected} bytes: the bytes do not match the declared shape.")
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=expected)
    except zstandard.ZstdError as error:
        raise WireError(f"The data could not be decompressed ({error}).") from None
    if len(raw) != expected:
        raise WireError(f"The data holds {len(raw)} bytes, a {shape} array of {dtype} {expected}.")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def volume_header(array: np.ndarray, affine: np.ndarray) -> str:
    """The JSON header of a volume upload."""
    return json.dumps({"shape": list(array.shape), "dtype": array.dtype.name, "affine": np.asarray(affine).tolist()})


def read_volume(header: Optional[str], data: bytes, max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """The volume (``[i, j, k]``) and IJK->RAS affine of an upload, checked: one clear error per fault."""
    if not header:
        raise WireError(f"The upload has no {ARRAY_HEADER} header (JSON: shape, dtype, affine).")
    try:
        fields = json.loads(header)
        shape = tuple(int(n) for n in fields["shape"])
        dtype = str(fields["dtype"])
        affine = np.asarray(fields["affine"], dtype=np.float64)
    except (ValueError, KeyError, TypeError):
        raise WireError(f"The {ARRAY_HEADER} header must be JSON with shape, dtype and affine.") from None
    if len(shape) != 3 or min(shape) < 1:
        raise WireError(f"A volume is three positive sizes, not {list(shape)}.")
    if math.prod(shape) > max_voxels:
        raise WireError(f"The volume has {math.prod(shape):,} voxels, more than this server's {max_voxels:,}: "
                        "crop it to the region of interest.")
    if dtype not in VOLUME_TYPES:
        raise WireError(f"Voxels of type {dtype!r} are not taken: use one of {', '.join(VOLUME_TYPES)}.")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise WireError("The affine must be a finite, invertible 4x4 IJK->RAS matrix.")
    return decompress(data, shape, dtype), affine
