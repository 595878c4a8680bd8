"""A QDIR stores its quantized weights as integer codes and scales: loading gives back the same
codes (so the same model), and the file's size follows the widths."""

import numpy as np
import pytest
from flax import nnx

from quantface_jax import checkpoint
from quantface_jax.quant import load_quantized, quant_layers, save_quantized, set_bits
from quantface_jax.quant.export import STATE_FILE, weight_codes
from quantface_jax.quant.layers import QuantConv2d


@nnx.jit
def layer_outputs(model, inputs):
  """Every quantized layer of `model` on its input: one compiled program, not op-by-op dispatch."""
  layers = quant_layers(model)
  return {path: layers[path](x) for path, x in inputs.items()}


@pytest.mark.slow
def test_codes_and_layers_survive_the_round_trip(quantized, tmp_path):
  model, recipe = quantized
  loaded = load_quantized(save_quantized(model, recipe, tmp_path / "q", base_ckpt="tiny"))
  before, after = quant_layers(model), quant_layers(loaded)
  assert before.keys() == after.keys()
  rng = np.random.default_rng(0)
  inputs = {}
  for path, layer in before.items():
    (codes, scale), (codes_back, scale_back) = weight_codes(layer), weight_codes(after[path])
    np.testing.assert_array_equal(codes_back, codes, err_msg=path)
    # XLA divides by qmax through a reciprocal, which reaches most float32 scales exactly and the
    # rest within an ulp.
    np.testing.assert_array_max_ulp(scale_back, scale, maxulp=1)
    shape = (
      (2, 6, 6, layer.in_channels) if isinstance(layer, QuantConv2d) else (2, layer.in_channels)
    )
    inputs[path] = rng.standard_normal(shape).astype(np.float32)
  outputs, outputs_back = layer_outputs(model, inputs), layer_outputs(loaded, inputs)
  for path, y in outputs.items():
    y, y_back = np.asarray(y), np.asarray(outputs_back[path])
    np.testing.assert_allclose(y_back, y, rtol=0, atol=1e-5 * np.abs(y).max(), err_msg=path)


def test_qdir_size_follows_the_widths(quantized, tiny_model, tmp_path):
  model, recipe = quantized
  sizes = {}
  for w_bits in (4, 8):
    at_width = nnx.clone(model)
    set_bits(at_width, {p: (w_bits, 8) for p in quant_layers(at_width)})
    qdir = save_quantized(at_width, recipe, tmp_path / f"w{w_bits}", base_ckpt="tiny")
    sizes[w_bits] = (qdir / STATE_FILE).stat().st_size
  fp_bytes = 4 * sum(v.size for v in checkpoint.flat_params(tiny_model).values())
  quantized_elements = sum(layer.kernel.size for layer in quant_layers(model).values())
  assert sizes[4] < sizes[8] < fp_bytes
  # 4-bit codes take half a byte, 8-bit ones a byte: the difference is the 4-bit codes' bytes.
  assert abs((sizes[8] - sizes[4]) - quantized_elements / 2) < 0.02 * quantized_elements
