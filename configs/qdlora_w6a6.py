"""QD-LoRA distillation of the `mini` OSDFace at W6A6: configs/qdlora_w4a4.py at 6 bits (the
quantized model starts much closer to the teacher, so half the steps)."""

import os

import ml_collections

from quantface_jax.train.config_utils import load_config_file


def get_config() -> ml_collections.ConfigDict:
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "qdlora_w4a4.py"))
  c.quant.bits = "W6A6"
  c.train.steps = 1000
  return c
