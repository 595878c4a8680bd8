"""Tests of quantface_jax.quant.hadamard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantface_jax.quant import hadamard as hd

SD21_DIMS = (4, 128, 256, 320, 512, 640, 960, 1024, 1280, 1920, 2560)
OTHER_DIMS = (1, 2, 12, 20, 24, 28, 36, 44, 48, 60, 368, 768)  # Paley I/II, Kronecker.
BLOCK_DIAGONAL_DIMS = (6, 7, 100)  # No full-order construction here: blocks of 2, 1, 20.


@pytest.mark.parametrize("d", SD21_DIMS + OTHER_DIMS)
def test_hadamard_matrix_is_exact(d):
  h = hd.hadamard_matrix(d)
  assert h.shape == (d, d) and np.all(np.abs(h) == 1)
  assert hd.hadamard_factors(d).num_blocks == 1
  # Integer-valued float64 products are exact at these sizes (|entries| <= d << 2**53).
  np.testing.assert_array_equal(h.astype(np.float64) @ h.T.astype(np.float64), d * np.eye(d))


def test_sd21_factorizations():
  expected = {320: (20, 4), 960: (60, 4), 1920: (60, 5), 2560: (20, 7), 1024: (1, 10)}
  for d, (order, log2) in expected.items():
    f = hd.hadamard_factors(d)
    assert (f.dense.shape[0], f.log2_sylvester) == (order, log2)


@pytest.mark.parametrize("d", BLOCK_DIAGONAL_DIMS)
def test_block_diagonal_fallback_is_orthogonal(d):
  f = hd.hadamard_factors(d)
  assert f.num_blocks > 1 and f.num_blocks * f.block_order == d
  h = hd.hadamard_matrix(d)
  np.testing.assert_array_equal(h @ h.T, f.block_order * np.eye(d, dtype=np.int64))
  q = hd.dense_rotation(hd.random_hadamard(d, 3))
  np.testing.assert_allclose(q.T @ q, np.eye(d), atol=1e-12)


def test_rotation_is_orthogonal_and_deterministic():
  for d in (320, 1920):
    q = hd.dense_rotation(hd.random_hadamard(d, seed=7))
    np.testing.assert_allclose(q.T @ q, np.eye(d), atol=1e-12)
    q32 = q.astype(np.float32).astype(np.float64)  # Stored in float32, checked exactly.
    np.testing.assert_allclose(q32.T @ q32, np.eye(d), atol=1e-6)
  a, b = hd.random_hadamard(64, 0), hd.random_hadamard(64, 0)
  assert a == b and hash(a) == hash(b)
  np.testing.assert_array_equal(a.signs, b.signs)
  assert not np.array_equal(a.signs, hd.random_hadamard(64, 1).signs)
  assert set(np.unique(a.signs)) == {-1.0, 1.0}
  np.testing.assert_array_equal(hd.random_hadamard(8, None).signs, np.ones(8))
  # Pinned: the signs come from numpy's PCG64, not from jax's PRNG.
  np.testing.assert_array_equal(
    hd.random_hadamard(8, 0).signs, 2 * np.random.default_rng(0).integers(0, 2, 8) - 1
  )


@pytest.mark.parametrize("d", SD21_DIMS + (12, 36, 6, 100))
def test_fast_transform_equals_dense(d):
  spec = hd.random_hadamard(d, seed=d)
  q = hd.dense_rotation(spec)
  x = np.random.default_rng(0).standard_normal((2, 3, d)).astype(np.float32)
  xt = np.ascontiguousarray(x[0].T)  # (d, 3): rotated along axis 0, i.e. Qᵀ·xt.

  @jax.jit
  def transforms(x, xt):
    y = hd.apply_hadamard(x, spec)
    return (
      y,
      hd.apply_hadamard_transpose(x, spec),
      hd.apply_hadamard_transpose(y, spec),
      hd.apply_hadamard(xt, spec, axis=0),
    )

  y, y_inverse, roundtrip, yt = transforms(x, xt)
  assert y.shape == x.shape and y.dtype == jnp.float32
  # Entries are O(1): float32 rounding of a few butterfly / matmul steps.
  np.testing.assert_allclose(y, x @ q, rtol=0, atol=1e-5)
  np.testing.assert_allclose(y_inverse, x @ q.T, rtol=0, atol=1e-5)
  np.testing.assert_allclose(roundtrip, x, rtol=0, atol=1e-5)
  np.testing.assert_allclose(yt, q.T @ xt, rtol=0, atol=1e-5)


@pytest.mark.parametrize("d", (320, 1280))
def test_bfloat16_inputs(d):
  spec = hd.random_hadamard(d, seed=1)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, d)), jnp.bfloat16)
  rotate = jax.jit(hd.apply_hadamard, static_argnums=1)
  y = rotate(x, spec)
  assert y.dtype == jnp.bfloat16
  expected = np.asarray(x, np.float64) @ hd.dense_rotation(spec)
  # f32 math, one bf16 rounding of the result (relative 2**-8).
  np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=2**-8, atol=1e-6)
  np.testing.assert_array_equal(y, rotate(x.astype(jnp.float32), spec).astype(jnp.bfloat16))


def test_rejects_wrong_channel_count():
  with pytest.raises(ValueError):
    hd.apply_hadamard(jnp.zeros((2, 10)), hd.random_hadamard(12, 0))
