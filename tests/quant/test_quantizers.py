"""Tests of quantface_jax.quant.quantizers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantface_jax.quant import quantizers as qz

BITS = (2, 3, 4, 5, 6, 8)
LAYOUTS = (
  dict(granularity="per_tensor"),
  dict(granularity="per_channel", axis=-1),
  dict(granularity="per_channel", axis=0),
  dict(granularity="per_token"),
  dict(granularity="per_group", axis=0, group_size=8),
  dict(granularity="per_group", axis=-1, group_size=4),
)


def _x(shape=(32, 24), seed=0, dtype=np.float32):
  x = np.random.default_rng(seed).standard_normal(shape) * np.linspace(0.1, 3, shape[-1])
  return jnp.asarray(x, dtype)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: "-".join(map(str, layout.values())))
@pytest.mark.parametrize("symmetric", (True, False))
def test_error_bound_codes_and_integer_path(layout, symmetric):
  @jax.jit
  def roundtrip(x, bits):
    scale, zp = qz.compute_qparams(x, bits, symmetric=symmetric, **layout)
    y = qz.fake_quant(x, scale, zp, bits, symmetric=symmetric)
    codes = qz.quantize_int(x, scale, zp, bits, symmetric=symmetric)
    refit = qz.compute_qparams(y, bits, symmetric=symmetric, **layout)
    return dict(
      step=qz.expand_groups(scale, x.shape),
      y=y,
      codes=codes,
      dequantized=qz.dequantize(codes, scale, zp),
      again=qz.fake_quant(y, scale, zp, bits, symmetric=symmetric),
      refitted=qz.fake_quant(y, *refit, bits, symmetric=symmetric),
    )

  x = _x()
  for bits in BITS:
    r = roundtrip(x, bits)
    # No clipping here (range fitted to x): the error is at most half a step everywhere.
    assert np.all(np.abs(x - r["y"]) <= r["step"] / 2 * (1 + 1e-5))
    assert r["codes"].dtype == (jnp.int8 if symmetric else jnp.uint8)
    codes = np.asarray(r["codes"], np.int32)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    assert codes.min() >= lo and codes.max() <= hi
    np.testing.assert_array_equal(r["dequantized"], r["y"])
    # Idempotent with the same parameters (bit for bit), and with refitted ones (to rounding).
    np.testing.assert_array_equal(r["again"], r["y"])
    np.testing.assert_allclose(r["refitted"], r["y"], rtol=1e-5, atol=1e-6)


def test_parameter_shapes():
  x = _x((4, 6, 8))
  shapes = {"per_tensor": (1, 1, 1), "per_token": (4, 6, 1)}
  for granularity, shape in shapes.items():
    assert qz.compute_qparams(x, 4, granularity=granularity)[0].shape == shape
  assert qz.compute_qparams(x, 4, granularity="per_channel", axis=1)[0].shape == (1, 6, 1)
  scale, _ = qz.compute_qparams(x, 4, granularity="per_group", axis=-1, group_size=2)
  assert scale.shape == (4, 6, 4)
  with pytest.raises(ValueError):
    qz.compute_qparams(x, 4, granularity="per_group", axis=-1, group_size=3)


def test_asymmetric_range_is_widened_to_hold_an_exact_zero():
  x = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, (16, 16)), jnp.float32)
  for data, zero_code in ((x, 0), (-x, 15)):
    scale, zp = qz.compute_qparams(data, 4, symmetric=False)
    assert zp.item() == zero_code
    y = qz.fake_quant(data.at[0, 0].set(0.0), scale, zp, 4, symmetric=False)
    assert y[0, 0].item() == 0.0


@pytest.mark.parametrize("dtype", (jnp.float32, jnp.bfloat16))
def test_passthrough_is_exact_identity(dtype):
  @jax.jit
  def variants(x):
    scale, zp = qz.compute_qparams(x, 4)
    return [
      qz.fake_quant(x, scale, zp, 16, symmetric=True),
      qz.fake_quant(x, scale, zp, 32, symmetric=True),
      qz.fake_quant(x, scale, zp, 4, symmetric=True, enabled=jnp.asarray(False)),
      qz.fake_quant_tensor(x, 16, qz.WEIGHT_PER_CHANNEL),
      qz.fake_quant_tensor(x, 4, qz.QuantizerConfig(enabled=False)),
      qz.fake_quant_static(x, -1.0, 1.0, 16),
      qz.fake_quant(x, scale, zp, 4, symmetric=True),
    ]

  x = _x(dtype=dtype)
  *passed, quantized = variants(x)
  for y in passed:
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x, np.float32))
  assert quantized.dtype == dtype


def test_per_row_bits_mix_quantized_and_passthrough():
  x = _x((4, 16))
  bits = jnp.asarray([[2], [4], [8], [16]])
  y = jax.jit(qz.fake_quant_tensor, static_argnums=2)(x, bits, qz.ACT_DYNAMIC_PER_TOKEN)
  np.testing.assert_array_equal(y[3], x[3])
  errors = np.abs(y - x).max(-1) / np.abs(x).max(-1)
  assert errors[0] > errors[1] > errors[2] > 0


def test_one_compilation_serves_every_bit_width():
  traces = []

  @jax.jit
  def quantize(x, bits):
    traces.append(None)  # Runs once per trace, i.e. per compilation.
    return qz.fake_quant_tensor(x, bits, qz.WEIGHT_PER_CHANNEL)

  x = _x()
  outputs = [quantize(x, bits) for bits in (3, 4, 5, 6, 8)]
  assert len(traces) == 1
  outputs += [quantize(x, jnp.int32(bits)) for bits in (3, 4, 5, 6, 8)]
  assert len(traces) == 2  # A strongly typed int32 is a second signature, still only one more.
  for a, b in zip(outputs[:5], outputs[5:]):
    np.testing.assert_array_equal(a, b)
  assert len({np.asarray(o).tobytes() for o in outputs[:5]}) == 5


def test_ste_gradient_identity_inside_zero_outside():
  scale, bits = 0.1, 4  # Symmetric 4 bit: codes -8..7, i.e. x in [-0.85, 0.75) rounds inside.
  x = jnp.asarray([-2.0, -0.8, -0.31, 0.0, 0.12, 0.7, 0.9, 5.0])
  grad = jax.grad(lambda x: qz.fake_quant(x, scale, 0.0, bits, symmetric=True).sum())(x)
  np.testing.assert_array_equal(grad, [0, 1, 1, 1, 1, 1, 0, 0])
  grad = jax.grad(lambda x: qz.fake_quant(x, scale, 0.0, 16, symmetric=True).sum())(x)
  np.testing.assert_array_equal(grad, np.ones(8))


def test_lsq_gradients_of_scale_and_zero_point():
  x = jnp.asarray([-3.0, -0.26, -0.19, 0.04, 0.33, 0.41, 2.0])
  scale, zp, bits = jnp.float32(0.1), jnp.float32(3.0), 3  # asym 3 bit: codes 0..7.
  fq = lambda x, s, z: qz.fake_quant(x, s, z, bits, symmetric=False)
  g_scale = jax.grad(lambda s: fq(x, s, zp).sum())(scale)
  g_zp = jax.grad(lambda z: fq(x, scale, z).sum())(zp)
  u = np.asarray(x) / 0.1
  inside = (np.round(u) + 3 >= 0) & (np.round(u) + 3 <= 7)
  expected = np.where(inside, np.round(u) - u, np.where(u < 0, 0 - 3, 7 - 3)).sum()
  np.testing.assert_allclose(g_scale, expected, rtol=1e-5)
  np.testing.assert_allclose(g_zp, -0.1 * (~inside).sum(), rtol=1e-6)
  # scale_gradient: exact identity forward, gradient scaled by the LSQ factor.
  g = qz.lsq_gradient_factor(x.size, bits, symmetric=False)
  np.testing.assert_allclose(g, 1 / np.sqrt(7 * 7), rtol=1e-6)
  assert qz.scale_gradient(scale, g) == scale
  np.testing.assert_allclose(
    jax.grad(lambda s: fq(x, qz.scale_gradient(s, g), zp).sum())(scale), expected * g, rtol=1e-5
  )


def test_clip_search_never_worse_than_no_clip():
  rng = np.random.default_rng(2)
  w = rng.standard_normal((64, 48)).astype(np.float32)
  w[rng.integers(0, 64, 10), rng.integers(0, 48, 10)] *= 8  # Heavy-tailed channels.

  @jax.jit
  def errors(w, bits):
    scale, zp, ratio = qz.search_clip_ratio(w, bits, granularity="per_channel", axis=-1)
    plain = qz.compute_qparams(w, bits, granularity="per_channel", axis=-1)
    error = lambda s, z: jnp.square(qz.fake_quant(w, s, z, bits, symmetric=True) - w).sum(0)
    return error(scale, zp), error(*plain), ratio

  for bits in (3, 4, 8):
    err_clip, err_plain, ratio = errors(w, bits)
    assert ratio.shape == (1, 48) and np.all((ratio >= 0.5) & (ratio <= 1.0))
    assert np.all(err_clip <= err_plain)
    if bits == 3:
      assert err_clip.sum() < 0.9 * err_plain.sum()


def test_per_token_integer_serving_path():
  x = _x((3, 5, 16), dtype=jnp.bfloat16)
  codes, scale = qz.quantize_per_token(x, 8)
  assert codes.dtype == jnp.int8 and scale.shape == (3, 5, 1)
  np.testing.assert_array_equal(np.abs(np.asarray(codes, np.int32)).max(-1), 127)
  np.testing.assert_array_equal(
    qz.dequantize(codes, scale, 0.0).astype(jnp.bfloat16),
    qz.fake_quant_tensor(x, 8, qz.ACT_DYNAMIC_PER_TOKEN),
  )


def test_config_validation():
  with pytest.raises(ValueError):
    qz.QuantizerConfig(granularity="per_row")
  with pytest.raises(ValueError):
    qz.QuantizerConfig(granularity="per_group")
  with pytest.raises(ValueError):
    qz.QuantizerConfig(clip_search=True, clip_ratios=(0.9, 0.8))
  with pytest.raises(TypeError):
    qz.QuantizerConfig(4)  # Keyword-only.
  assert hash(qz.WEIGHT_PER_CHANNEL) == hash(
    qz.QuantizerConfig(granularity="per_channel", clip_search=True)
  )
