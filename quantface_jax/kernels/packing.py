"""Storage formats of integer weight codes.

Weights are stored output-major, ``w_t[N, K]`` (PyTorch's ``Linear.weight`` layout, K contiguous):
that is the "K-major" operand order that int8 tensor-core MMA (cuBLASLt IMMA, Hopper ``wgmma`` s8)
needs for both operands, so no kernel has to transpose a tile.

- int8 / int6 codes: ``int8 [N, K]``, values in ``[-2^(b-1), 2^(b-1) - 1]``.
- int4 codes: ``uint8 [N, ceil(K / 2)]``, two per byte packed along K: byte ``j`` of row ``n`` holds
  ``k = 2j`` in the LOW nibble (bits 0-3) and ``k = 2j + 1`` in the HIGH nibble (bits 4-7), each a
  4-bit two's-complement value. This is XLA's / ml_dtypes' own ``int4`` packing, so
  ``lax.bitcast_convert_type(packed, jnp.int4)`` views it as ``int4 [N, ceil(K/2), 2]``.
  Odd K is padded with one zero nibble at the end of each row (a zero code adds nothing to a dot);
  ``unpack_int4(packed, k)`` drops it again.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

INT4_MIN, INT4_MAX = -8, 7


def pack_int4(codes: jnp.ndarray) -> jnp.ndarray:
  """int8 ``[..., K]`` codes in [-8, 7] -> uint8 ``[..., ceil(K/2)]`` (even k in the low nibble)."""
  codes = jnp.asarray(codes)
  if codes.dtype != jnp.int8:
    raise TypeError(f"pack_int4 expects int8 codes, got {codes.dtype}")
  k = codes.shape[-1]
  if k % 2:
    codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, 1)])
  nibbles = lax.bitcast_convert_type(codes, jnp.uint8) & 0x0F
  pairs = nibbles.reshape(*codes.shape[:-1], -1, 2)
  return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_int4(packed: jnp.ndarray, k: int | None = None) -> jnp.ndarray:
  """uint8 ``[..., P]`` -> int8 ``[..., k]`` codes in [-8, 7] (``k`` defaults to ``2P``)."""
  packed = jnp.asarray(packed)
  if packed.dtype != jnp.uint8:
    raise TypeError(f"unpack_int4 expects uint8, got {packed.dtype}")
  low, high = unpack_int4_halves(packed)
  codes = jnp.stack([low, high], axis=-1).reshape(*packed.shape[:-1], -1)
  return codes if k is None else codes[..., :k]


def unpack_int4_halves(packed: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """uint8 ``[..., P]`` -> (even-k codes, odd-k codes), each int8 ``[..., P]``, sign-extended.

  Two shifts per nibble (arithmetic right shift of an int8 sign-extends); used inside kernels.
  """
  signed = lax.bitcast_convert_type(packed, jnp.int8)
  low = lax.shift_right_arithmetic(lax.shift_left(signed, jnp.int8(4)), jnp.int8(4))
  high = lax.shift_right_arithmetic(signed, jnp.int8(4))
  return low, high


def pack_weight(codes_kn: jnp.ndarray, bits: int) -> jnp.ndarray:
  """Logical weight codes int8 ``[K, N]`` -> the GEMM storage format above.

  ``bits <= 4``: uint8 ``[N, ceil(K/2)]``; ``4 < bits <= 8``: int8 ``[N, K]``.
  """
  w_t = jnp.asarray(codes_kn).T
  if bits <= 4:
    return pack_int4(w_t)
  if bits <= 8:
    return w_t.astype(jnp.int8)
  raise ValueError(f"bits must be in [2, 8], got {bits}")


def unpack_weight(w_stored: jnp.ndarray, k: int) -> jnp.ndarray:
  """GEMM storage (int8 ``[N, K]`` or packed uint8 ``[N, ceil(K/2)]``) -> int8 ``[N, K]``."""
  if w_stored.dtype == jnp.uint8:
    return unpack_int4(w_stored, k)
  return w_stored
