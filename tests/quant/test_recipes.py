"""Tests of recipes and of the size/BOPs account."""

import pytest
from flax import nnx

from quantface_jax.models.layers import Linear
from quantface_jax.quant import RECIPES, account, account_table, get_recipe, parse_bits
from quantface_jax.quant.rules import match


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("bits", ("W8A8", "W6A6", "W4A6", "W4A4"))
def test_recipes_scope(name, bits):
  recipe = get_recipe(name, bits)
  w, a = parse_bits(bits)
  body = match(recipe.rules, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
  assert (body.w_bits, body.a_bits) == (w, a)
  assert match(recipe.rules, "vae.post_quant_conv").w_bits == 8
  assert match(recipe.rules, "vre.encoder.conv_in") is None
  assert get_recipe(name, bits, a_mode="dynamic").rules[-1][1].a_mode == "dynamic"


class _Toy(nnx.Module):
  def __init__(self):
    self.config = type("C", (), {"resolution": 4})()
    self.proj = Linear(3, 8, use_bias=False, rngs=nnx.Rngs(0))

  def restore(self, x):
    return type("R", (), {"image": self.proj(x)})()


@pytest.mark.parametrize("w,a", ((4, 4), (4, 8), (6, 6)))
def test_account_toy_exact(w, a):
  rules = [(r"proj", get_recipe("rtn", f"W{w}A{a}").rules[-1][1])]
  report = account(_Toy(), rules=rules)
  assert report["weight_bits"] * 32 == report["fp32_weight_bits"] * w
  assert report["bops"] * 32 * 32 == report["fp32_bops"] * w * a
  assert report["layers"][0]["macs"] == 4 * 4 * 3 * 8
  assert "BOPs" in account_table(report)
