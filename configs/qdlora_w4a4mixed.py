"""QD-LoRA distillation of the `mini` OSDFace with mixed-precision activations: configs/qdlora_w4a4.py
with the body's activation widths from configs/mini_w4_a4mixed.bits.json (weights 4 bit,
activations 3-6 bit at a mean width of 4.0, as `quantface allocate --budget 4.0` chose them)."""

import os

import ml_collections

from quantface_jax.train.config_utils import load_config_file

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ml_collections.ConfigDict:
  c = load_config_file(os.path.join(_HERE, "qdlora_w4a4.py"))
  c.quant.bits_map = os.path.join(_HERE, "mini_w4_a4mixed.bits.json")
  return c
