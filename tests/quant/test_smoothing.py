"""Tests of quantface_jax.quant.smoothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantface_jax.quant import hadamard as hd
from quantface_jax.quant import quantizers as qz
from quantface_jax.quant import smoothing as sm


def _outlier_layer(n=256, d=128, d_out=64, seed=0):
  """A Linear layer whose input has a few outlier channels (x50)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)).astype(np.float32)
  x[:, rng.choice(d, 4, replace=False)] *= 50
  w = (rng.standard_normal((d, d_out)) / np.sqrt(d)).astype(np.float32)
  return x, w


def _relative_error(actual, expected):
  return np.linalg.norm(np.asarray(actual, np.float64) - expected) / np.linalg.norm(expected)


def test_smoothing_scales_formula_and_guards():
  act = jnp.asarray([4.0, 1.0, 0.0, 1e12])
  w = jnp.asarray([[1.0, -2.0], [0.25, 0.0], [1.0, 1.0], [1.0, 1.0]])
  s = sm.smoothing_scales(act, w, 0.5)
  np.testing.assert_allclose(s[:2], [np.sqrt(4.0) / np.sqrt(2.0), 1.0 / np.sqrt(0.25)], rtol=1e-6)
  assert 0 < s[2] < 1e-2 and s[3] == 1e5  # Dead channel floored, huge channel clamped.
  np.testing.assert_allclose(sm.smoothing_scales(act[:2], w[:2], 1.0), act[:2], rtol=1e-6)


@pytest.mark.parametrize("rotation_seed", (None, 5))
def test_balanced_layer_computes_the_same_function(rotation_seed):
  x, w = _outlier_layer(d=320)
  rotation = None if rotation_seed is None else hd.random_hadamard(320, rotation_seed)
  scales = sm.smoothing_scales(sm.act_channel_absmax(x), w, 0.5)

  @jax.jit
  def balanced_output(x, w, scales):
    return sm.balance_input(x, scales, rotation) @ sm.balance_weight(w, scales, rotation)

  reference = x.astype(np.float64) @ w.astype(np.float64)
  assert _relative_error(x @ w, reference) < 1e-6
  assert _relative_error(balanced_output(x, w, scales), reference) < 1e-6
  assert _relative_error(balanced_output(x, w, jnp.ones(320)), reference) < 1e-6


def test_balancing_conv_weights_shares_scales_over_taps():
  rng = np.random.default_rng(1)
  patches = rng.standard_normal((32, 3, 3, 12)).astype(np.float32)  # (n, kh, kw, C_in)
  w = rng.standard_normal((3, 3, 12, 8)).astype(np.float32)  # HWIO
  rotation = hd.random_hadamard(12, 0)
  scales = sm.smoothing_scales(sm.act_channel_absmax(patches), w, 0.6)
  assert scales.shape == (12,)
  balanced = jnp.tensordot(
    sm.balance_input(patches, scales, rotation), sm.balance_weight(w, scales, rotation), axes=3
  )
  np.testing.assert_allclose(balanced, jnp.tensordot(patches, w, axes=3), rtol=1e-4, atol=1e-4)


def test_w4a4_error_order_rtn_smoothing_rotation():
  x, w = _outlier_layer()
  rotation = hd.random_hadamard(x.shape[1], seed=0)
  rtn = jax.jit(sm.balanced_quant_error)(x, w, None, 4, 4)
  alpha, scales, errors = sm.search_alpha(x, w, 4, 4)
  alpha_rot, _, errors_rot = sm.search_alpha(x, w, 4, 4, rotation=rotation)
  assert errors.shape == (len(sm.DEFAULT_ALPHAS),) and scales.shape == (x.shape[1],)
  assert 0.0 < alpha < 1.0 and 0.0 < alpha_rot < 1.0
  np.testing.assert_allclose(
    errors.min(), jax.jit(sm.balanced_quant_error)(x, w, scales, 4, 4), rtol=1e-5
  )
  assert rtn > errors.min() > errors_rot.min()
  assert errors_rot.min() < 0.2 * errors.min()


def test_search_alpha_bits_are_traced_and_chunking_matches_vmap():
  x, w = _outlier_layer(n=64, d=64, d_out=32, seed=2)
  config = dict(
    w_config=qz.QuantizerConfig(granularity="per_channel"), a_config=qz.ACT_STATIC_PER_TENSOR
  )
  before = sm.search_alpha._cache_size() if hasattr(sm.search_alpha, "_cache_size") else None
  results = [sm.search_alpha(x, w, bits, bits, **config) for bits in (3, 4, 6)]
  if before is not None:
    assert sm.search_alpha._cache_size() == before + 1
  assert results[0][2].min() > results[1][2].min() > results[2][2].min()
  _, _, chunked = sm.search_alpha(x, w, 4, 4, alpha_batch_size=4, **config)
  np.testing.assert_allclose(chunked, results[1][2], rtol=1e-6)
  # 16 bits: no quantization, so every alpha gives the float output (up to rounding).
  _, _, exact = sm.search_alpha(x, w, 16, 16, **config)
  assert exact.max() < 1e-8
