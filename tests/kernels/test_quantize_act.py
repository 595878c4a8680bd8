import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantface_jax.kernels import group_norm_prologue, quantize_act
from quantface_jax.kernels.quantize_act import quantize_act_pallas
from quantface_jax.kernels.reference import (
  norm_silu_ref,
  quantize_act_ref,
  rotate_ref,
  round_half_even,
)


def _rotation(rng, k, block):
  if block is None:
    return np.linalg.qr(rng.standard_normal((k, k)))[0].astype(np.float32)
  return np.stack(
    [np.linalg.qr(rng.standard_normal((block, block)))[0] for _ in range(k // block)]
  ).astype(np.float32)


@pytest.mark.parametrize("backend", ["interpret", "xla"])
@pytest.mark.parametrize(
  "m,k,block", [(77, 64, None), (130, 320, 64), (20, 256, 128), (33, 80, 20)]
)  # a block of 20: padded to 32 inside
def test_codes_equal_reference(backend, m, k, block):
  rng = np.random.default_rng()
  x = jnp.asarray(rng.standard_normal((m, k)) * rng.uniform(0.1, 10, k), jnp.bfloat16)
  smooth = rng.uniform(0.5, 2.0, k).astype(np.float32)
  rotation = _rotation(rng, k, block)
  for bits in (3, 4, 8):
    codes, scale = quantize_act(x, smooth, rotation, jnp.int32(bits), backend=backend)
    ref_codes, ref_scale = quantize_act_ref(x, smooth, rotation, jnp.int32(bits))
    assert codes.dtype == jnp.int8 and scale.shape == (m,)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(scale, ref_scale)
    assert np.abs(np.asarray(codes)).max() == 2 ** (bits - 1) - 1  # the row max hits qmax


def test_bits_is_runtime_data():
  """One compiled function serves every bit width (bits is a traced int32 array)."""
  rng = np.random.default_rng()
  x = rng.standard_normal((16, 64)).astype(np.float32)
  fn = jax.jit(
    lambda bits: quantize_act(
      x, np.ones(64, np.float32), _rotation(rng, 64, 32), bits, backend="interpret"
    )
  )
  maxima = [int(np.abs(np.asarray(fn(jnp.int32(b))[0])).max()) for b in (2, 5, 8)]
  assert maxima == [1, 15, 127]
  assert fn._cache_size() == 1


def test_round_half_even_is_numpy_round():
  """The floor-based rounding the kernels use equals ties-to-even rounding on every f32 tried:
  ties of both parities and signs, values just beside ties, integers past 2**23, random."""
  rng = np.random.default_rng()
  ties = np.arange(-8, 8) + 0.5
  beside = np.concatenate([np.nextafter(ties, np.inf), np.nextafter(ties, -np.inf)])
  big = np.array([2.0**23, 2.0**23 + 1, -(2.0**24) - 2, 3e38, -3e38])
  v = np.concatenate([ties, beside, big, rng.standard_normal(10_000) * 300]).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(round_half_even(jnp.asarray(v))), np.round(v))


@pytest.mark.parametrize("k", [48, 20, 320, 1280])
def test_codes_equal_reference_without_rotation(k):
  """Without a rotation the kernel works on power-of-two chunks of K (padded when K has none)."""
  rng = np.random.default_rng()
  x = jnp.asarray(rng.standard_normal((45, k)) * rng.uniform(0.1, 10, k), jnp.bfloat16)
  for smooth in (None, rng.uniform(0.5, 2.0, k).astype(np.float32)):
    codes, scale = quantize_act(x, smooth, None, jnp.int32(4), backend="interpret")
    ref_codes, ref_scale = quantize_act_ref(x, smooth, None, jnp.int32(4))
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(scale, ref_scale)


@pytest.mark.parametrize("backend", ["interpret", "xla"])
@pytest.mark.parametrize(
  "images,rows,k,block", [(3, 64, 320, 64), (2, 32, 48, None), (1, 96, 80, 20)]
)
def test_group_norm_silu_prologue_matches_reference(backend, images, rows, k, block):
  """The fused prologue: GroupNorm (as a per-image affine) + SiLU before smoothing, rotation and
  codes. Unlike the plain quantizer, this one has a multiply-add before the rounding, which each
  compiled program may or may not contract into an FMA: scales agree to 1e-6, and a code may
  differ only by one and only where the reference sits within 1e-3 of a rounding tie."""
  rng = np.random.default_rng()
  x = rng.standard_normal((images, rows, k)) * rng.uniform(0.1, 10, k) + rng.uniform(-3, 3, k)
  x = jnp.asarray(x, jnp.bfloat16)
  prologue = group_norm_prologue(
    x, rng.uniform(0.5, 2, k), rng.uniform(-1, 1, k), groups=4, eps=1e-6
  )
  smooth = rng.uniform(0.5, 2.0, k).astype(np.float32)
  rotation = None if block is None else _rotation(rng, k, block)
  flat = x.reshape(-1, k)
  for bits in (4, 8):
    codes, scale = quantize_act(
      flat, smooth, rotation, jnp.int32(bits), prologue=prologue, backend=backend
    )
    ref_codes, ref_scale = quantize_act_ref(flat, smooth, rotation, jnp.int32(bits), prologue)
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-6)
    real = (
      np.asarray(rotate_ref(norm_silu_ref(flat, prologue), smooth, rotation))
      / np.asarray(ref_scale)[:, None]
    )
    off = np.asarray(codes, np.int32) != np.asarray(ref_codes, np.int32)
    assert np.all(np.abs(np.asarray(codes, np.int32) - np.asarray(ref_codes, np.int32))[off] == 1)
    assert np.all(np.abs(np.abs(real - np.floor(real)) - 0.5)[off] < 1e-3), real[off]
    assert off.mean() < 1e-3
  # Without the prologue the codes differ: the kernel did apply it.
  assert not np.array_equal(
    codes, quantize_act(flat, smooth, rotation, jnp.int32(8), backend=backend)[0]
  )


def test_prologue_rows_must_split_into_whole_tiles_per_image():
  x = jnp.ones((2 * 40, 64), jnp.float32)  # 40 rows per image: not a multiple of block_m=32
  prologue = (jnp.ones((2, 64)), jnp.zeros((2, 64)))
  with pytest.raises(ValueError, match="do not split"):
    quantize_act(x, None, None, jnp.int32(4), prologue=prologue, backend="interpret")


def test_group_norm_prologue_is_the_models_group_norm_then_silu():
  from quantface_jax.models.layers import GroupNorm, silu

  rng = np.random.default_rng()
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 64)) * 3 + 1, jnp.float32)
  norm = GroupNorm(32, 64, eps=1e-6)
  norm.scale[...] = jnp.asarray(rng.uniform(0.5, 2, 64), jnp.float32)
  norm.bias[...] = jnp.asarray(rng.uniform(-1, 1, 64), jnp.float32)
  scale, shift = group_norm_prologue(
    x.reshape(2, 64, 64), norm.scale[...], norm.bias[...], groups=32, eps=1e-6
  )
  got = norm_silu_ref(x.reshape(-1, 64), (scale, shift))
  np.testing.assert_allclose(got, silu(norm(x)).reshape(-1, 64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["pallas", "reference"])
def test_rotation_dots_ask_for_full_f32_precision(kernel):
  """A GPU runs an f32 dot at its default precision in TF32 (10 mantissa bits; Triton's default
  too), which moves rotated values by ~1e-3 and flips codes (on an H200 the Pallas quantizer put
  a code off by one against the reference). The CPU computes f32 either way, so this
  reads the traced program: every rotation dot asks for HIGHEST, as the fake-quant layers'
  Hadamard transform does."""
  rotation = jnp.stack([jnp.eye(64)] * 2)
  fn = {
    "pallas": lambda x: quantize_act_pallas(x, None, rotation, jnp.int32(4), interpret=True),
    "reference": lambda x: quantize_act_ref(x, None, rotation, jnp.int32(4)),
  }[kernel]
  text = str(jax.make_jaxpr(fn)(jnp.zeros((32, 128))))
  dots = text.count("dot_general[")
  assert dots >= 2, text
  assert text.count("precision=(Precision.HIGHEST, Precision.HIGHEST)") == dots, text
