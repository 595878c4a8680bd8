"""QD-LoRA layers: exact at initialisation with quantization off, exact merge, what gets gradients."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quantface_jax.models.layers import Conv2d, Linear
from quantface_jax.quant import QuantConv2d, QuantLinear, account, api, qdlora, set_quant_enabled
from quantface_jax.quant.calibrate import LayerStats
from quantface_jax.quant.rules import LayerQuantConfig

sys.path.insert(
  0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train")
)
import test_distill  # noqa: E402  (the test run's quantized tiny model)

FULL = LayerQuantConfig(w_bits=4, a_bits=4, smooth=True, alpha=0.5, rotate=True, low_rank=4)
BRANCHES = {"svd_down", "svd_up", "lora_down", "lora_up"}
SCALES = {"w_clip", "a_min", "a_max"}


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _layer_and_input(kind):
  rng = np.random.default_rng(0)
  if kind == "linear":
    layer, x = Linear(64, 48, rngs=nnx.Rngs(0)), rng.standard_normal((32, 64))
  else:
    layer, x = Conv2d(16, 24, 3, padding=1, rngs=nnx.Rngs(0)), rng.standard_normal((2, 8, 8, 16))
  layer.bias[...] = jnp.linspace(-1, 1, layer.bias.shape[0])
  x = jnp.asarray(x * np.linspace(0.1, 20, x.shape[-1]), jnp.float32)  # outlier channels
  flat = np.asarray(x).reshape(-1, x.shape[-1])
  stats = LayerStats(
    ch_min=flat.min(0), ch_max=flat.max(0), sample=np.zeros((0, *layer.kernel.shape[:-1]))
  )
  return api.quantize_layer(layer, FULL, stats=stats, seed=3), layer, x


@pytest.mark.parametrize("kind", ("linear", "conv"))
@pytest.mark.parametrize("learn_scales", (False, True))
def test_layer_exact_at_init_and_merge_exact(kind, learn_scales):
  quantized, fp, x = _layer_and_input(kind)
  layer = qdlora.qdlora_layer(
    quantized,
    rank=6,
    lora_rank=5,
    sigma=0.1,
    learn_scales=learn_scales,
    rng=np.random.default_rng(0),
  )
  assert isinstance(layer, QuantConv2d if kind == "conv" else QuantLinear)
  layer.enabled[...] = jnp.asarray(False)
  assert _rel(layer(x), fp(x)) <= 1e-5
  layer.enabled[...] = jnp.asarray(True)
  assert _rel(layer(x), fp(x)) > 1e-3  # W4A4 is on
  layer.lora_up[...] = jnp.asarray(
    np.random.default_rng(1).normal(size=layer.lora_up.shape), jnp.float32
  )
  merged = qdlora.merge_branches(layer)
  assert type(merged) is (QuantConv2d if kind == "conv" else QuantLinear)
  assert merged.low_rank_up.shape == (11, fp.kernel.shape[-1])
  np.testing.assert_allclose(merged(x), layer(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("learn_scales", (False, True))
def test_gradients_reach_the_trainable_set(learn_scales):
  quantized, _, x = _layer_and_input("conv")
  layer = qdlora.qdlora_layer(
    quantized,
    rank=6,
    lora_rank=5,
    sigma=0.1,
    learn_scales=learn_scales,
    rng=np.random.default_rng(0),
  )
  graphdef, trainable, frozen = nnx.split(layer, qdlora.TRAINABLE, ...)
  names = {k[-1] for k, _ in nnx.to_flat_state(trainable)}
  assert names == (BRANCHES | SCALES if learn_scales else BRANCHES)
  assert {k[-1] for k, _ in nnx.to_flat_state(frozen)} >= {"kernel", "bias", "smooth", "w_bits"}
  grads = jax.grad(lambda t: jnp.sum(jnp.square(nnx.merge(graphdef, t, frozen)(x))))(trainable)
  norms = {k[-1]: float(jnp.linalg.norm(v[...])) for k, v in nnx.to_flat_state(grads)}
  assert norms.pop("lora_down") == 0.0  # B_lora = 0 at initialisation
  assert all(np.isfinite(n) and n > 0 for n in norms.values()), norms


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, tiny_model):
  _, quantized, _ = test_distill.shared_quantized(tmp_path_factory)
  return tiny_model, quantized


@pytest.mark.slow
def test_model_equals_fp_at_init_when_quant_off(tiny_pair):
  fp, quantized = tiny_pair
  student = qdlora.to_qdlora(quantized, rank=4, lora_rank=4, sigma=0.05)
  layers = api.quant_layers(student)
  assert layers.keys() == api.quant_layers(quantized).keys()
  assert all(isinstance(m, qdlora.QDLORA_LAYERS) for m in layers.values())
  assert api.get_bits(student) == api.get_bits(quantized)
  set_quant_enabled(student, False)
  lq = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  restore = nnx.jit(lambda model, x: model.restore(x))
  ref, out = restore(fp, lq), restore(student, lq)
  assert _rel(out.z_high, ref.z_high) <= 1e-5 and _rel(out.image, ref.image) <= 1e-5
  with pytest.raises(ValueError):
    qdlora.to_qdlora(student)


def test_account_counts_the_live_branches_as_the_merged_export_does(tiny_pair):
  _, quantized = tiny_pair
  student = qdlora.to_qdlora(quantized, rank=4, lora_rank=3, sigma=0.05)
  live, merged = account(student), account(qdlora.merge_qdlora(student))
  keys = ("param_bits", "bf16_bits", "fp32_bits", "weight_bits", "bops", "fp32_bops")
  assert {k: live[k] for k in keys} == {k: merged[k] for k in keys}
  assert [r["low_rank"] for r in live["layers"]] == [r["low_rank"] for r in merged["layers"]]
  assert max(r["low_rank"] for r in live["layers"]) == 7  # svd 4 + lora 3
  assert (
    live["fp32_bits"] == account(quantized)["fp32_bits"]
  )  # branches are not part of the original
