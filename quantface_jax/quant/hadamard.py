"""Randomized Hadamard rotations Q = H·diag(±1)/√n for any channel count d (docs/design.md §2.3).

Construction of H (order d = 2^k·m, m odd), in this order of preference:

1. ``H = H_o ⊗ S_{2^p}``: a small dense Hadamard matrix H_o of order o = m·2^j (smallest j that
   works) Kroneckered with a Sylvester matrix of order 2^p = 2^(k-j). H_o is Sylvester (o = 1),
   Paley I (o - 1 a prime ≡ 3 mod 4: 12, 20, 24, 32, 44, 48, 60, ...), Paley II (o/2 - 1 a prime
   ≡ 1 mod 4: 12, 28, 36, 76, ...) or a Kronecker product of those. Every channel count of
   SD-2.1's UNet/VAE is covered: 320 = 20·16, 640 = 20·32, 960 = 60·16, 1280 = 20·64,
   1920 = 60·32, 2560 = 20·128, and powers of two.
2. Otherwise (no construction known here, e.g. d = 6 or d odd) **block diagonal**:
   ``H = I_b ⊗ H_n`` with n the largest constructible order dividing d (n = 1 in the worst case,
   where Q is a plain sign flip). H·Hᵀ = n·I, Q stays exactly orthogonal, mixing is only within
   blocks of n channels.

So in general H = I_b ⊗ H_o ⊗ S_{2^p}, with block order n = o·2^p and Q = H·diag(signs)/√n.
:func:`apply_hadamard` never forms H: it reshapes the channel axis to (b, o, 2^p), multiplies
the o-axis by H_o and runs a Walsh–Hadamard butterfly (p steps of add/sub) on the 2^p axis.
The signs come from ``numpy.random.default_rng(seed)``, so they do not depend on the jax version.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------------------------
# Integer Hadamard matrices.


def _is_prime(n: int) -> bool:
  return n >= 2 and all(n % f for f in range(2, math.isqrt(n) + 1))


def _jacobsthal(q: int) -> np.ndarray:
  """(q, q) int64 matrix Q[i, j] = Legendre symbol of (j - i) mod prime q."""
  residues = np.zeros(q, np.int64)
  residues[[(x * x) % q for x in range(1, q)]] = 1
  chi = np.where(residues == 1, 1, -1)
  chi[0] = 0
  idx = np.arange(q)
  return chi[(idx[None, :] - idx[:, None]) % q]


def _paley_i(q: int) -> np.ndarray:
  """Order q + 1 for a prime q ≡ 3 mod 4: H = I + S, S = [[0, 1ᵀ], [-1, Q]] skew."""
  s = np.zeros((q + 1, q + 1), np.int64)
  s[0, 1:] = 1
  s[1:, 0] = -1
  s[1:, 1:] = _jacobsthal(q)
  return np.eye(q + 1, dtype=np.int64) + s


def _paley_ii(q: int) -> np.ndarray:
  """Order 2(q + 1) for a prime q ≡ 1 mod 4, from the symmetric conference matrix C."""
  c = np.zeros((q + 1, q + 1), np.int64)
  c[0, 1:] = 1
  c[1:, 0] = 1
  c[1:, 1:] = _jacobsthal(q)
  return np.kron(c, np.array([[1, 1], [1, -1]])) + np.kron(
    np.eye(q + 1, dtype=np.int64), np.array([[1, -1], [-1, -1]])
  )


@functools.cache
def _dense_hadamard(n: int) -> np.ndarray | None:
  """A ±1 int8 Hadamard matrix of order n from the constructions above, or None (read-only)."""
  if n == 1:
    h = np.ones((1, 1), np.int64)
  elif n == 2:
    h = np.array([[1, 1], [1, -1]])
  elif n % 4:
    return None
  elif _is_prime(n - 1) and (n - 1) % 4 == 3:
    h = _paley_i(n - 1)
  elif _is_prime(n // 2 - 1) and (n // 2 - 1) % 4 == 1:
    h = _paley_ii(n // 2 - 1)
  else:
    pairs = (
      (_dense_hadamard(a), _dense_hadamard(n // a))
      for a in range(2, math.isqrt(n) + 1)
      if n % a == 0
    )
    h = next((np.kron(ha, hb) for ha, hb in pairs if ha is not None and hb is not None), None)
    if h is None:
      return None
  h = h.astype(np.int8)
  h.flags.writeable = False
  return h


def _odd_and_pow2(d: int) -> tuple[int, int]:
  k = (d & -d).bit_length() - 1
  return d >> k, k


def _kron_factors(n: int) -> tuple[np.ndarray, int] | None:
  """(H_o, p) with n = o·2^p and o = m·2^j for the smallest j that has a construction."""
  m, k = _odd_and_pow2(n)
  for j in range(k + 1):
    dense = _dense_hadamard(m << j)
    if dense is not None:
      return dense, k - j
  return None


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class HadamardFactors:
  """H = I_{num_blocks} ⊗ dense ⊗ Sylvester(2^log2_sylvester); see the module docstring."""

  num_blocks: int  # 1 unless no Hadamard matrix of order d is constructed (block diagonal).
  dense: np.ndarray  # (o, o) int8, entries ±1, dense·denseᵀ = o·I; (1, 1) for powers of two.
  log2_sylvester: int  # p: the power-of-two factor 2^p, applied by the butterfly.

  @property
  def block_order(self) -> int:
    """n = o·2^p, the order of each diagonal block: H·Hᵀ = n·I."""
    return self.dense.shape[0] << self.log2_sylvester


@functools.cache
def hadamard_factors(d: int) -> HadamardFactors:
  """The Kronecker / block-diagonal structure of the Hadamard matrix used for d channels."""
  if d < 1:
    raise ValueError(f"dimension must be positive, got {d}")
  for n in sorted((n for n in range(1, d + 1) if d % n == 0), reverse=True):
    factors = _kron_factors(n)
    if factors is not None:
      return HadamardFactors(num_blocks=d // n, dense=factors[0], log2_sylvester=factors[1])
  raise AssertionError("unreachable: order 1 always exists")


def _sylvester(p: int) -> np.ndarray:
  h = np.ones((1, 1), np.int64)
  for _ in range(p):
    h = np.kron(h, np.array([[1, 1], [1, -1]]))
  return h


def hadamard_matrix(d: int) -> np.ndarray:
  """(d, d) int64 matrix with entries ±1 (0 off the blocks in the block-diagonal fallback).

  H·Hᵀ = d·I exactly whenever ``hadamard_factors(d).num_blocks == 1`` (every SD-2.1 width);
  otherwise H·Hᵀ = n·I with n the block order.
  """
  f = hadamard_factors(d)
  block = np.kron(f.dense.astype(np.int64), _sylvester(f.log2_sylvester))
  return np.kron(np.eye(f.num_blocks, dtype=np.int64), block)


# ----------------------------------------------------------------------------------------------
# Randomized rotations.


@dataclasses.dataclass(frozen=True, kw_only=True)
class RotationSpec:
  """A randomized Hadamard rotation Q = H·diag(signs)/√n of ``dim`` channels.

  Hashable (usable as a static jit argument) and fully determined by (dim, seed): export it as
  those two integers.
  """

  dim: int  # d, the number of channels rotated.
  seed: int | None  # numpy seed of the ±1 signs; None means all +1 (a plain normalized H).

  @property
  def factors(self) -> HadamardFactors:
    return hadamard_factors(self.dim)

  @functools.cached_property
  def signs(self) -> np.ndarray:
    """(dim,) float32 of ±1."""
    if self.seed is None:
      return np.ones(self.dim, np.float32)
    bits = np.random.default_rng(self.seed).integers(0, 2, size=self.dim)
    signs = (2 * bits - 1).astype(np.float32)
    signs.flags.writeable = False
    return signs


def random_hadamard(d: int, seed: int | None) -> RotationSpec:
  """The rotation of d channels with signs drawn from ``numpy.random.default_rng(seed)``."""
  hadamard_factors(d)  # Validates d and warms the cache.
  return RotationSpec(dim=d, seed=seed)


def dense_rotation(spec: RotationSpec) -> np.ndarray:
  """(d, d) float64 Q = H·diag(signs)/√n, orthogonal; for fusing into weights."""
  return (
    hadamard_matrix(spec.dim)
    * spec.signs.astype(np.float64)[None, :]
    / math.sqrt(spec.factors.block_order)
  )


def _walsh_hadamard_last(x: jax.Array) -> jax.Array:
  """x @ Sylvester(2^p) over the last axis (length 2^p) by p butterfly steps."""
  lead, n = x.shape[:-1], x.shape[-1]
  half = 1
  while half < n:
    pairs = x.reshape(lead + (n // (2 * half), 2, half))
    a, b = pairs[..., 0, :], pairs[..., 1, :]
    x = jnp.stack([a + b, a - b], axis=-2).reshape(lead + (n,))
    half *= 2
  return x


def _rotate(x: jax.Array, spec: RotationSpec, axis: int, transpose: bool) -> jax.Array:
  x = jnp.asarray(x)
  if x.shape[axis] != spec.dim:
    raise ValueError(f"axis {axis} of shape {x.shape} does not have {spec.dim} channels")
  f = spec.factors
  signs = jnp.asarray(spec.signs)
  y = jnp.moveaxis(x, axis, -1).astype(jnp.float32)
  if transpose:  # x @ Qᵀ = ((x·signs) @ Hᵀ)/√n
    y = y * signs
  lead = y.shape[:-1]
  order = f.dense.shape[0]
  y = y.reshape(lead + (f.num_blocks, order, 1 << f.log2_sylvester))
  if order > 1:
    dense = jnp.asarray(f.dense.T if transpose else f.dense, jnp.float32)
    y = jnp.einsum("...bip,ij->...bjp", y, dense, precision=jax.lax.Precision.HIGHEST)
  y = _walsh_hadamard_last(y).reshape(lead + (spec.dim,))
  y = y * (1.0 / math.sqrt(f.block_order))
  if not transpose:  # x @ Q = (x @ H)·signs/√n
    y = y * signs
  return jnp.moveaxis(y.astype(x.dtype), -1, axis)


def apply_hadamard(x: jax.Array, spec: RotationSpec, axis: int = -1) -> jax.Array:
  """``x @ Q`` along ``axis`` (any leading/trailing dims, any float dtype; f32 math, x's dtype).

  Along axis 0 of a weight W (d, d_out) this computes Qᵀ·W.
  """
  return _rotate(x, spec, axis, transpose=False)


def apply_hadamard_transpose(x: jax.Array, spec: RotationSpec, axis: int = -1) -> jax.Array:
  """``x @ Qᵀ`` along ``axis``: the inverse of :func:`apply_hadamard`."""
  return _rotate(x, spec, axis, transpose=True)
