"""Tests of quantface_jax.quant.api on the tiny OSDFace: scope, exactness, traced bits."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quantface_jax.models.layers import Conv2d, Linear
from quantface_jax.quant import (
  QuantConv2d,
  QuantLinear,
  api,
  calibrate,
  get_bits,
  get_recipe,
  load_bits_map,
  quant_layers,
  save_bits_map,
  set_bits,
  set_quant_enabled,
)
from quantface_jax.quant import rules as rules_lib

TRACES = []


@nnx.jit
def _restore(model, lq):
  TRACES.append(1)  # Runs once per compilation.
  return model.restore(lq)


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.fixture(scope="module")
def setup(tiny_model):
  rng = np.random.default_rng(0)
  images = [rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32) for _ in range(2)]
  recipe = get_recipe("quantface", "W4A4", alpha=0.5)  # α search is covered in test_layers.
  stats = calibrate(tiny_model, images, rules=recipe.rules, max_samples=0, progress=False)
  qmodel = api.quantize(tiny_model, recipe, calibration=stats)
  ref = _restore(tiny_model, jnp.asarray(images[0]))
  return qmodel, images, ref


def test_swaps_exactly_the_rule_scope(tiny_model, setup):
  qmodel, _, _ = setup
  fp = dict(rules_lib.iter_layers(tiny_model, (Linear, Conv2d)))
  expected = [
    p
    for p in fp
    if p.startswith(("unet.", "vae.encoder.", "vae.decoder.", "vae.quant", "vae.post_quant"))
  ]
  quantized = quant_layers(qmodel)
  assert sorted(quantized) == sorted(expected)
  assert all(
    isinstance(quantized[p], QuantConv2d if isinstance(fp[p], Conv2d) else QuantLinear)
    for p in expected
  )
  left = dict(rules_lib.iter_layers(qmodel, (Linear, Conv2d)))
  assert sorted(left) == sorted(p for p in fp if p.startswith(("vre.", "embedding_change.")))
  bits = get_bits(qmodel)
  kept = [p for p in bits if rules_lib.match([(k, 1) for k in rules_lib.KEEP_W8A8], p)]
  assert len(kept) == 10  # unet conv_in/out + 2 time MLP, vae 4 conv_in/out, (post_)quant_conv
  assert all(bits[p] == (8, 8) for p in kept)
  assert all(b == (4, 4) for p, b in bits.items() if p not in kept)
  assert isinstance(tiny_model.unet.conv_in, Conv2d)  # The FP model is left as it was.


def test_parallel_quantize_is_serial_quantize(tiny_model, setup):
  qmodel, images, _ = setup  # quantized on the default thread pool
  recipe = get_recipe("quantface", "W4A4", alpha=0.5)
  stats = calibrate(tiny_model, images, rules=recipe.rules, max_samples=0, progress=False)
  serial = api.quantize(tiny_model, recipe, calibration=stats, workers=1)
  threaded = api.quantize(tiny_model, recipe, calibration=stats, workers=4)
  flat = lambda m: {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(m))}
  expected = flat(serial)
  for model in (threaded, qmodel):
    got = flat(model)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
      np.testing.assert_array_equal(got[key], value, err_msg=str(key))


def test_balanced_model_equals_original_and_bits_never_recompile(setup):
  qmodel, images, ref = setup
  lq = jnp.asarray(images[0])
  set_quant_enabled(qmodel, False)
  off = _restore(qmodel, lq)
  n = len(TRACES)
  assert _rel(off.image, ref.image) <= 1e-5 and _rel(off.z_high, ref.z_high) <= 1e-5
  set_quant_enabled(qmodel, True)
  errors = {}
  for b in (8, 4):
    set_bits(qmodel, {p: (b, b) for p in get_bits(qmodel)})
    errors[b] = _rel(_restore(qmodel, lq).z_high, ref.z_high)
  set_bits(qmodel, {"unet.conv_in": (6, 5)})
  _restore(qmodel, lq)
  assert len(TRACES) == n  # Only data changed.
  assert errors[8] < 0.3 < errors[4], errors


def test_bits_map_json_round_trip(setup, tmp_path):
  qmodel, _, _ = setup
  bits = get_bits(qmodel)
  bits["unet.conv_out"] = (3, 5)
  save_bits_map(tmp_path / "bits.json", bits, meta={"budget": 4})
  assert load_bits_map(tmp_path / "bits.json") == (bits, {"budget": 4})
  with pytest.raises(KeyError):
    set_bits(qmodel, {"vre.encoder.conv_in": (4, 4)})


@pytest.mark.slow
def test_deeper_balanced_model_equals_original():
  """Three resolution levels, two layers per block (UNet and VAE): still exact with quant off."""
  import dataclasses

  from quantface_jax.models import build
  from quantface_jax.models.configs import TINY

  config = dataclasses.replace(
    TINY,
    name="tiny3",
    unet=dataclasses.replace(
      TINY.unet,
      block_out_channels=(32, 64, 64),
      layers_per_block=2,
      down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
      num_attention_heads=(2, 4, 4),
    ),
    vae=dataclasses.replace(TINY.vae, block_out_channels=(16, 32, 32), layers_per_block=2),
  )
  model = build(config, seed=1)
  images = [np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)]
  recipe = get_recipe("quantface", "W4A4", alpha=0.5)
  stats = calibrate(model, images, rules=recipe.rules, max_samples=0, progress=False)
  qmodel = api.quantize(model, recipe, calibration=stats)
  set_quant_enabled(qmodel, False)
  lq = jnp.asarray(images[0])
  ref, off = _restore(model, lq), _restore(qmodel, lq)
  assert _rel(off.image, ref.image) <= 1e-5 and _rel(off.z_high, ref.z_high) <= 1e-5
