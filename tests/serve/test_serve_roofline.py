"""benchmarks.serve_roofline: the layers it prices are exactly the ones `quantize` quantizes, with
their traced shapes, and its floors keep their order (fused int8 never above bf16 or as-built)."""

from benchmarks import serve_roofline
from quantface_jax.models import build
from quantface_jax.quant import get_bits, get_recipe, quantize


def test_layers_are_the_quantized_ones_with_their_shapes():
  rows = serve_roofline.layer_shapes("tiny", 2, "W4A8")
  qmodel = quantize(build("tiny"), get_recipe("rtn", "W4A8", a_mode="dynamic"))  # no calibration
  assert {r["path"]: r["w_bits"] for r in rows} == {p: b[0] for p, b in get_bits(qmodel).items()}
  conv_in = next(r for r in rows if r["path"] == "vae.encoder.conv_in")
  res = build("tiny").config.resolution
  assert (conv_in["M"], conv_in["K"], conv_in["in_elems"]) == (
    2 * res * res,
    9 * 3,
    2 * res * res * 3,
  )


def test_floors_keep_their_order():
  for row in serve_roofline.layer_shapes("tiny", 2, "W4A8"):
    f = serve_roofline.floors_ms(row)
    assert 0 < f["int8_fused"] <= min(f["bf16"], f["int8_built"])
