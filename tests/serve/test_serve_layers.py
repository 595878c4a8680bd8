"""Integer serving layers against the fake-quant layers they replace, on the model's own inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quantface_jax.quant import get_bits, quant_layers, set_bits
from quantface_jax.quant import rules as rules_lib
from quantface_jax.serve import INT_LAYERS, IntConv2d, IntLinear, int_layer, serve_model

_RECORD = {}  # path -> traced input, filled while `_inputs_and_outputs` traces


class _Tap(nnx.Module):
  """Passes through, recording the layer's input while traced."""

  def __init__(self, layer, path):
    self.layer, self.path = layer, path

  def __call__(self, x):
    _RECORD[self.path] = x
    return self.layer(x)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _inputs_and_outputs(tapped, state, served, served_state, lq):
  """Each quantized layer's input in a restore of ``lq``, and the fake-quant and the serving
  layer's outputs on it: {path: (x, fake, served)}. One compile per model structure."""
  model, serving = nnx.merge(tapped, state), nnx.merge(served, served_state)
  _RECORD.clear()
  model.restore(lq)
  return {
    p: (x, rules_lib.get_module(model, p).layer(x), rules_lib.get_module(serving, p)(x))
    for p, x in _RECORD.items()
  }


def layer_io(model, lq, **serve_kwargs) -> dict:
  tapped = nnx.clone(model)
  for path, layer in quant_layers(tapped).items():
    rules_lib.set_module(tapped, path, _Tap(layer, path))
  served = serve_model(model, **serve_kwargs)
  return _inputs_and_outputs(
    nnx.graphdef(tapped),
    nnx.state(tapped),
    nnx.graphdef(served),
    nnx.state(served),
    jnp.asarray(lq),
  )


@pytest.mark.slow
@pytest.mark.parametrize("bits", [(8, 8), (4, 8), (4, 4)])
def test_layers_match_fake_quant(quantized, lq, bits):
  """Codes are identical (same balancing code, same rounding), integer sums are exact: the only
  difference is the fake-quant path's float32 accumulation of K dequantized products, relative
  error <= K·2^-24 worst case (K <= 576 here: 3.4e-5), ~√K·2^-24 typically. So 1e-5 of the
  output's magnitude, per layer, on the inputs each layer sees in a real restore."""
  model = nnx.clone(quantized[0])
  set_bits(model, {p: bits for p in get_bits(model)}, refit_clip=False)  # any clip serves
  served = serve_model(model)
  kinds = {
    (type(m).__name__, m.spec.a_mode, m.spec.kernel_shape[:2] if m.spec.kind == "conv" else None)
    for m in dict(rules_lib.iter_layers(served, INT_LAYERS)).values()
  }
  for path, (_, want, got) in layer_io(model, lq).items():
    want = np.asarray(want)
    np.testing.assert_allclose(
      np.asarray(got), want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=path
    )
  # Both activation modes of both layer kinds, 3x3 and 1x1 convs, were exercised.
  assert {
    ("IntLinear", "dynamic", None),
    ("IntLinear", "static", None),
    ("IntConv2d", "dynamic", (3, 3)),
    ("IntConv2d", "static", (3, 3)),
    ("IntConv2d", "static", (1, 1)),
  } <= kinds


@pytest.mark.slow
def test_storage_and_backends(quantized, lq):
  """Packed storage as documented, and the Pallas kernels (interpret mode) agree with XLA."""
  model = quantized[0]
  io = layer_io(model, lq)
  layers = quant_layers(model)
  for path in (
    "unet.down_blocks.0.resnets.0.conv1",
    "vae.encoder.down_blocks.0.downsamplers.0.conv",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2",
  ):
    x, _, xla = io[path]
    pallas = int_layer(layers[path], path=path, backend="interpret")
    k, n = pallas.spec.k, pallas.spec.n
    assert pallas.weight.dtype == jnp.uint8 and pallas.weight.shape == (n, -(-k // 2))
    np.testing.assert_allclose(
      np.asarray(pallas(x)), np.asarray(xla), rtol=1e-6, atol=1e-6, err_msg=path
    )
  conv_in = int_layer(layers["unet.conv_in"])
  assert isinstance(conv_in, IntConv2d) and conv_in.weight.dtype == jnp.int8
  assert isinstance(int_layer(layers[path]), IntLinear)


def test_rejects_unservable(quantized):
  layer = nnx.clone(quant_layers(quantized[0])["unet.conv_in"])
  layer.a_bits[...] = jnp.asarray(16, jnp.int32)
  with pytest.raises(ValueError, match="unet.conv_in"):
    int_layer(layer, path="unet.conv_in")


def test_served_model_lowers_for_cuda_on_pallas_kernels(quantized, lq):
  """The whole served restore with the Pallas kernels lowers for CUDA on this CPU machine (every
  kernel has Triton lowering rules and power-of-two tiles: `tiny`'s 48-wide layers found the
  quantizer's unpadded tiles)."""
  served = serve_model(quantized[0], backend="pallas")
  graphdef, state = nnx.split(served)
  restore = jax.jit(lambda s, x: nnx.merge(graphdef, s).restore(x, dtype=jnp.bfloat16).image)
  text = restore.trace(state, lq).lower(lowering_platforms=("cuda",)).as_text()
  assert "__gpu$xla.gpu.triton" in text  # the integer layers run on Triton kernels


def test_static_rtn_block_fuses_group_norm_silu_into_the_quantizer(tiny_model, lq):
  """The quantizing prologue of docs/design.md §2.6, left to XLA's fusion: in a served resnet block
  with static per-tensor activations (no rotation), GroupNorm + SiLU + quantize compile into fusions that write
  the integer codes, and no SiLU output is written out in float first (`profiling.hlo_summary`;
  on this CPU backend; `bench_serve.py --hlo-summary` asks the GPU compiler the same)."""
  from quantface_jax.profiling import hlo_summary
  from quantface_jax.quant import LayerQuantConfig, Recipe, calibrate, quantize
  from quantface_jax.quant.rules import FULL_PRECISION

  rules = tuple((p, None) for p in FULL_PRECISION) + (
    (r"vae\..*", LayerQuantConfig(w_bits=4, a_bits=4, smooth=False, rotate=False, low_rank=0)),
  )
  model = quantize(
    tiny_model,
    Recipe(name="rtn-static", rules=rules),
    calibration=calibrate(tiny_model, [lq], rules=rules, max_samples=0, progress=False),
  )
  block = serve_model(model).vae.decoder.up_blocks[0].resnets[0]
  graphdef, state = nnx.split(block)
  x = jnp.ones((1, 8, 8, block.conv1.spec.kernel_shape[2]), jnp.bfloat16)
  text = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile().as_text()
  summary = hlo_summary(text)
  assert summary["integer_fusions_with_sigmoid"] == 2, summary  # norm1-SiLU-conv1, norm2-SiLU-conv2
  assert summary["float_fusions_with_sigmoid"] == 0, summary
