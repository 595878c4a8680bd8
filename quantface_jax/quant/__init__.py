"""Quantization of an FP model (docs/design.md §2): recipes, calibration, the ``quantize``
transform, traced bit widths, QD-LoRA, the QDIR format and the size/BOPs account.

Only what a user needs is re-exported; everything else stays importable from its module
(``quantizers``, ``hadamard``, ``smoothing``, ``layers``, ``rules``, ``calibrate``, ``api``, ...).
"""

from quantface_jax.quant.account import account, account_table
from quantface_jax.quant.api import (
  get_bits,
  quant_layers,
  quantize,
  set_bits,
  set_quant_enabled,
)
from quantface_jax.quant.bits_map import load_bits_map, save_bits_map
from quantface_jax.quant.calibrate import CalibrationStats, calibrate
from quantface_jax.quant.export import load_quantized, read_qdir_manifest, save_quantized
from quantface_jax.quant.hadamard import random_hadamard
from quantface_jax.quant.layers import QuantConv2d, QuantLinear
from quantface_jax.quant.qdlora import QDLoRAConv2d, QDLoRALinear, merge_qdlora, to_qdlora
from quantface_jax.quant.quantizers import QuantizerConfig, fake_quant
from quantface_jax.quant.recipes import RECIPES, CalibrationSettings, Recipe, get_recipe, parse_bits
from quantface_jax.quant.rules import LayerQuantConfig, default_rules

__all__ = [
  # Recipes: which layers, how, and at which widths.
  "RECIPES",
  "CalibrationSettings",
  "LayerQuantConfig",
  "QuantizerConfig",
  "Recipe",
  "default_rules",
  "get_recipe",
  "parse_bits",
  # Calibrate and quantize.
  "CalibrationStats",
  "calibrate",
  "quantize",
  # Bit widths and the quantization switch: traced data, no recompilation.
  "get_bits",
  "load_bits_map",
  "quant_layers",
  "save_bits_map",
  "set_bits",
  "set_quant_enabled",
  # Quantized layers and QD-LoRA.
  "QDLoRAConv2d",
  "QDLoRALinear",
  "QuantConv2d",
  "QuantLinear",
  "merge_qdlora",
  "to_qdlora",
  # The QDIR on disk and its size/BOPs account.
  "account",
  "account_table",
  "load_quantized",
  "read_qdir_manifest",
  "save_quantized",
  # Building blocks for functional experiments.
  "fake_quant",
  "random_hadamard",
]
