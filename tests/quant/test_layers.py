"""Tests of quantface_jax.quant.layers: exactness with quantization off, error ordering."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quantface_jax.models.layers import Conv2d, Linear
from quantface_jax.quant import api, get_recipe
from quantface_jax.quant.calibrate import LayerStats
from quantface_jax.quant.layers import low_rank_split
from quantface_jax.quant.rules import LayerQuantConfig

FULL = LayerQuantConfig(w_bits=4, a_bits=4, smooth=True, alpha="search", rotate=True, low_rank=4)


def _stats(x):
  flat = x.reshape(-1, x.shape[-1])
  return LayerStats(ch_min=flat.min(0), ch_max=flat.max(0), sample=flat[:256])


def _outlier_input(n=512, d=64, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)).astype(np.float32)
  x[:, [3, 17, 40]] *= np.array([30.0, 60.0, 100.0], np.float32)  # diffusion-UNet-like outliers
  return x


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("impl", ("fast", "dense"))
def test_balanced_linear_equals_original_when_quant_off(impl):
  layer = Linear(64, 48, rngs=nnx.Rngs(0))
  layer.bias[...] = jnp.linspace(-1, 1, 48)
  x = _outlier_input()
  q = api.quantize_layer(layer, FULL.replace(rotation_impl=impl), stats=_stats(x), seed=3)
  q.enabled[...] = jnp.asarray(False)
  assert _rel(q(x), layer(x)) < 1e-5
  q.enabled[...] = jnp.asarray(True)
  assert _rel(q(x), layer(x)) > 1e-3


@pytest.mark.parametrize("stride,padding", ((1, 1), (2, ((0, 1), (0, 1)))))
def test_balanced_conv_with_low_rank_equals_original_when_quant_off(stride, padding):
  layer = Conv2d(24, 16, 3, stride=stride, padding=padding, rngs=nnx.Rngs(1))
  x = np.random.default_rng(1).standard_normal((2, 9, 9, 24)).astype(np.float32)
  x[..., 5] *= 50
  flat = x.reshape(-1, 24)
  stats = LayerStats(
    ch_min=flat.min(0), ch_max=flat.max(0), sample=np.zeros((0, 3, 3, 24), np.float32)
  )
  q = api.quantize_layer(layer, FULL.replace(alpha=0.5), stats=stats, seed=5)
  assert q.low_rank_down.shape == (3 * 3 * 24, 4) and q.low_rank_up.shape == (4, 16)
  q.enabled[...] = jnp.asarray(False)
  assert _rel(q(x), layer(x)) < 1e-5


def test_w4a4_error_orders_rtn_smoothquant_quantface():
  """On outlier channels, balancing reduces the W4A4 output error in the expected order."""
  layer = Linear(64, 64, rngs=nnx.Rngs(2))
  x = _outlier_input(seed=2)
  stats = _stats(x)
  errors = {}
  for name in ("rtn", "smoothquant", "quantface"):
    config = get_recipe(name, "W4A4", low_rank=0).rules[-1][1]
    q = api.quantize_layer(layer, config, stats=stats, seed=7)
    errors[name] = _rel(q(x), layer(x))
  assert errors["rtn"] > errors["smoothquant"] > errors["quantface"], errors


def test_bits_are_traced_and_more_bits_less_error():
  layer = Linear(64, 32, rngs=nnx.Rngs(3))
  x = _outlier_input(seed=3)
  q = api.quantize_layer(layer, FULL, stats=_stats(x), seed=1)
  traces = []

  @nnx.jit
  def run(q, x):
    traces.append(1)
    return q(x)

  errors = []
  for bits in (4, 6, 8):
    q.w_bits[...] = jnp.asarray(bits, jnp.int32)
    q.a_bits[...] = jnp.asarray(bits, jnp.int32)
    errors.append(_rel(run(q, x), layer(x)))
  assert len(traces) == 1
  assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize(
  "shape,rank", [((40, 12), 5), ((12, 40), 5), ((3, 3, 8, 20), 6), ((6, 4), 9), ((16, 16), 0)]
)
def test_low_rank_split_is_the_top_singular_pairs(shape, rank):
  """L1·L2 is the best rank-r approximation (Eckart–Young: the residual's energy is the tail of the
  spectrum), whichever side is longer, and R + L1·L2 = Ŵ."""
  rng = np.random.default_rng(4)
  w = rng.standard_normal(shape) * np.logspace(0, -2, shape[-1])  # a decaying spectrum
  residual, down, up = (
    np.asarray(a, np.float64) for a in low_rank_split(jnp.asarray(w, jnp.float32), rank)
  )
  matrix = w.reshape(-1, shape[-1])
  r = min(rank, *matrix.shape)
  assert down.shape == (matrix.shape[0], r) and up.shape == (r, shape[-1])
  u, s, vt = np.linalg.svd(matrix, full_matrices=False)
  np.testing.assert_allclose(down @ up, (u[:, :r] * s[:r]) @ vt[:r], atol=2e-6 * s[0])
  np.testing.assert_allclose(np.sum(residual**2), np.sum(s[r:] ** 2), rtol=1e-4, atol=1e-10)
  np.testing.assert_allclose(residual.reshape(matrix.shape) + down @ up, matrix, atol=2e-6 * s[0])
  # The two factors share the singular values evenly (S^½ each), as QD-LoRA's branches assume.
  np.testing.assert_allclose(np.linalg.norm(down, axis=0), np.sqrt(s[:r]), rtol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(up, axis=1), np.sqrt(s[:r]), rtol=1e-4)
