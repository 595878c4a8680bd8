"""The bits-map file: module path -> (w_bits, a_bits) of quantized layers.

The bit allocation writes it (``quantface allocate``) and ``quantface quantize --bits`` / `set_bits`
apply it. One JSON document::

    {"format": "quantface-bits-map", "version": 1, "meta": {...}, "layers": {path: [w_bits, a_bits]}}

``meta`` is free-form (the allocation records its budget, objective and how it was made).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from quantface_jax.fileio import atomic_write_text

FORMAT = "quantface-bits-map"
VERSION = 1
MIN_BITS = 2
MAX_BITS = 8

BitsMap = dict[str, tuple[int, int]]


def save_bits_map(
  path: str | os.PathLike[str],
  bits_map: Mapping[str, tuple[int, int]],
  meta: Mapping[str, Any] | None = None,
) -> None:
  """Writes ``bits_map`` and ``meta`` atomically.

  Raises:
    ValueError: an entry is not two integer widths in MIN_BITS..MAX_BITS (names the module path).
  """
  layers = {key: list(check_bits_pair(key, bits)) for key, bits in bits_map.items()}
  document = {"format": FORMAT, "version": VERSION, "meta": dict(meta or {}), "layers": layers}
  atomic_write_text(path, json.dumps(document, indent=1))


def load_bits_map(path: str | os.PathLike[str]) -> tuple[BitsMap, dict[str, Any]]:
  """Reads a `save_bits_map` file; returns (bits_map, meta).

  Raises:
    ValueError: the file is not JSON or not a bits map, or an entry is not two integer widths in
      MIN_BITS..MAX_BITS (the message names the file and the module path).
  """
  try:
    with open(path) as f:
      document = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not JSON ({e})") from e
  if not isinstance(document, dict) or document.get("format") != FORMAT:
    raise ValueError(f"{path} is not a {FORMAT} file")
  if document.get("version") != VERSION:
    raise ValueError(f"{path}: unsupported version {document.get('version')!r}")
  layers, meta = document.get("layers"), document.get("meta", {})
  if not isinstance(layers, dict) or not isinstance(meta, dict):
    raise ValueError(f"{path}: 'layers' and 'meta' must be JSON objects")
  try:
    return {key: check_bits_pair(key, bits) for key, bits in layers.items()}, meta
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def check_bits(name: str, bits: Any) -> int:
  """``bits`` as an int, if it is an integer width in MIN_BITS..MAX_BITS; else ValueError naming it."""
  if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
    raise ValueError(f"{name} must be an int, got {bits!r}")
  if not MIN_BITS <= bits <= MAX_BITS:
    raise ValueError(f"{name} must be within {MIN_BITS}..{MAX_BITS}, got {bits}")
  return int(bits)


def check_bits_pair(key: str, bits: Any) -> tuple[int, int]:
  """(w_bits, a_bits) of the bits-map entry ``key``; ValueError naming ``key`` if malformed."""
  if not isinstance(bits, (list, tuple)) or len(bits) != 2:
    raise ValueError(f"bits map entry {key!r} must be (w_bits, a_bits), got {bits!r}")
  return check_bits(f"w_bits of {key!r}", bits[0]), check_bits(f"a_bits of {key!r}", bits[1])
