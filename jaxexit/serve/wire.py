"""Wire format of CE-CoLLM's hidden states: quantise, frame, parse.

Host-side numpy (spec `llm_exits.md` §4.2: float16 halves the payload).
`quantize` → `Payload` → `to_bytes`, and back with `from_bytes` →
`dequantize`. Modes: "fp32", "fp16" (the paper's choice), "int8" (a float32
absmax scale per row, i.e. per position). The header is magic b"CEH1",
mode code (u8), ndim (u8), then ndim u32 dims, little-endian; the body is
the data then (int8) the scales. Every malformed buffer is refused with a
ValueError naming what is wrong.

Axes: R rows (positions) of a payload, D width.
"""

import math
import struct
from typing import NamedTuple

import numpy as np
from jaxtyping import ArrayLike

from jaxexit import checks

MODES = ("fp32", "fp16", "int8")
_DTYPES = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2"), "int8": np.int8}
_MAGIC = b"CEH1"
_HEAD = struct.Struct("<4sBB")  # magic, mode code, ndim
_INT8_MAX = 127.0


class Payload(NamedTuple):
  """Quantised hidden states on the host.

  Attributes:
    mode: one of `MODES`.
    data: [..., R, D] float32 / float16 / int8 (little-endian).
    scale: int8 only: [..., R] float32 absmax / 127 per row; else None.
  """

  mode: str
  data: np.ndarray
  scale: np.ndarray | None


def quantize(x: ArrayLike, mode: str) -> Payload:
  """Quantises hidden states [..., D] (each row its own int8 scale).

  Raises:
    ValueError: unknown mode, no rows, non-float or non-finite input, or a
      value beyond float16's range in "fp16" mode.
  """
  checks.one_of("mode", mode, MODES)
  x = np.asarray(x)
  if x.ndim < 1 or x.size == 0 or not np.issubdtype(x.dtype, np.floating):
    raise ValueError(
      f"x must be a non-empty float array; got {x.dtype}{list(x.shape)}"
    )
  x = x.astype(np.float32)
  if not np.isfinite(x).all():
    raise ValueError("x holds NaN or inf; refusing to transmit it")
  if mode == "fp32":
    return Payload(mode, x.astype(_DTYPES[mode]), None)
  if mode == "fp16":
    peak = float(np.abs(x).max())
    if peak > float(np.finfo(np.float16).max):
      raise ValueError(f"|x| reaches {peak:g}, beyond float16; use fp32/int8")
    return Payload(mode, x.astype(_DTYPES[mode]), None)
  scale = np.abs(x).max(axis=-1) / np.float32(_INT8_MAX)  # [..., R]
  safe = np.where(scale > 0, scale, np.float32(1))[..., None]
  q = np.clip(np.rint(x / safe), -_INT8_MAX, _INT8_MAX).astype(np.int8)
  return Payload(mode, q, scale.astype(np.float32))


def _check_payload(p: Payload) -> None:
  checks.one_of("payload mode", p.mode, MODES)
  want = np.dtype(_DTYPES[p.mode])
  if not isinstance(p.data, np.ndarray) or p.data.dtype != want:
    raise ValueError(
      f"{p.mode} payload data must be a numpy {want} array; got "
      f"{getattr(p.data, 'dtype', type(p.data).__name__)}"
    )
  if p.data.ndim < 1 or p.data.size == 0:
    raise ValueError(f"payload data shape {p.data.shape} is empty")
  if p.mode != "int8":
    if p.scale is not None:
      raise ValueError(f"a {p.mode} payload carries no scale")
    return
  s = p.scale
  if not isinstance(s, np.ndarray) or s.dtype != np.float32:
    raise ValueError("an int8 payload needs a float32 numpy scale")
  if s.shape != p.data.shape[:-1]:
    raise ValueError(
      f"int8 scale shape {s.shape} must be data.shape[:-1] = "
      f"{p.data.shape[:-1]}"
    )
  if not (np.isfinite(s) & (s >= 0)).all():
    raise ValueError("int8 scales must be finite and >= 0")


def dequantize(p: Payload) -> np.ndarray:
  """The float32 hidden states [..., D] of a (checked) payload."""
  _check_payload(p)
  x = p.data.astype(np.float32)
  return x if p.scale is None else x * p.scale[..., None]


def payload_bytes(num_positions: int, d: int, mode: str) -> int:
  """Body bytes of `num_positions` rows of width d (header excluded)."""
  checks.positive_int("num_positions", num_positions)
  checks.positive_int("d", d)
  checks.one_of("mode", mode, MODES)
  per = np.dtype(_DTYPES[mode]).itemsize * d + (4 if mode == "int8" else 0)
  return num_positions * per


def header_bytes(ndim: int) -> int:
  """Header bytes of a payload of `ndim` dimensions."""
  return _HEAD.size + 4 * ndim


def to_bytes(p: Payload) -> bytes:
  """Serialises a payload: header, data, then int8 scales."""
  _check_payload(p)
  shape = p.data.shape
  if len(shape) > 255 or max(shape) >= 2**32:
    raise ValueError(f"payload shape {shape} does not fit the header")
  head = _HEAD.pack(_MAGIC, MODES.index(p.mode), len(shape))
  parts = [head, struct.pack(f"<{len(shape)}I", *shape), p.data.tobytes()]
  if p.scale is not None:
    parts.append(p.scale.astype("<f4").tobytes())
  return b"".join(parts)


def from_bytes(
  buf: bytes | bytearray | memoryview, *, d: int | None = None
) -> Payload:
  """Parses `to_bytes` output, validating every field.

  Args:
    buf: the serialised payload.
    d: expected row width D, or None to accept any.

  Raises:
    ValueError: truncated or oversized buffer, bad magic, unknown mode,
      empty shape, or a width other than `d`.
  """
  buf = bytes(buf)
  if len(buf) < _HEAD.size:
    raise ValueError(
      f"payload of {len(buf)} bytes is shorter than the "
      f"{_HEAD.size}-byte header"
    )
  magic, code, ndim = _HEAD.unpack_from(buf)
  if magic != _MAGIC:
    raise ValueError(f"bad payload magic {magic!r}; expected {_MAGIC!r}")
  if code >= len(MODES):
    raise ValueError(
      f"unknown payload mode code {code}; expected < "
      f"{len(MODES)} ({list(MODES)})"
    )
  mode, start = MODES[code], header_bytes(ndim)
  if ndim < 1 or len(buf) < start:
    raise ValueError(
      f"payload header (ndim={ndim}) truncated or empty: {len(buf)} bytes"
    )
  shape = struct.unpack_from(f"<{ndim}I", buf, _HEAD.size)
  if 0 in shape:
    raise ValueError(f"payload shape {shape} has an empty dimension")
  if d is not None and shape[-1] != d:
    raise ValueError(f"payload rows have width {shape[-1]}; expected D={d}")
  rows = math.prod(shape[:-1])
  want = start + payload_bytes(rows, shape[-1], mode)
  if len(buf) != want:
    raise ValueError(
      f"{mode} payload of shape {shape} needs {want} bytes; got {len(buf)}"
    )
  dtype = np.dtype(_DTYPES[mode])
  end = start + dtype.itemsize * rows * shape[-1]
  data = np.frombuffer(buf[start:end], dtype).reshape(shape).copy()
  scale = None
  if mode == "int8":
    scale = np.frombuffer(buf[end:], "<f4").astype(np.float32)
    scale = scale.reshape(shape[:-1])
  p = Payload(mode, data, scale)
  _check_payload(p)
  return p
