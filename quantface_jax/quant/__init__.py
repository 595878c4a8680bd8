"""Quantization: fake quantizers, Hadamard rotations, smoothing, quantized layers, QD-LoRA layers, rules,
calibration, recipes, the size/BOPs account and the QDIR format (DESIGN §2)."""

from quantface_jax.quant.account import account, account_table
from quantface_jax.quant.api import (
  BITS_MAP_FORMAT,
  bits_map_from_json,
  bits_map_to_json,
  calibrate_ranges,
  clip_ratio,
  get_bits,
  quant_layers,
  quantize,
  quantize_layer,
  set_bits,
  set_quant_enabled,
)
from quantface_jax.quant.calibrate import CalibrationStats, LayerStats, Observer, calibrate
from quantface_jax.quant.export import load_quantized, read_manifest, save_quantized
from quantface_jax.quant.hadamard import (
  RotationSpec,
  apply_hadamard,
  apply_hadamard_transpose,
  dense_rotation,
  random_hadamard,
)
from quantface_jax.quant.layers import (
  QuantBits,
  QuantConv2d,
  QuantLinear,
  QuantState,
  low_rank_split,
  rotate_input,
  rotate_weight,
)
from quantface_jax.quant.qdlora import (
  QDLORA_LAYERS,
  QDLoRAConv2d,
  QDLoRALinear,
  merge_qdlora,
  to_qdlora,
)
from quantface_jax.quant.quantizers import (
  ACT_DYNAMIC_PER_TOKEN,
  ACT_STATIC_PER_TENSOR,
  WEIGHT_PER_CHANNEL,
  QuantizerConfig,
  fake_quant,
  fake_quant_static,
  fake_quant_tensor,
  quantize_per_token,
  search_clip_ratio,
)
from quantface_jax.quant.recipes import (
  RECIPES,
  CalibrationSettings,
  Recipe,
  get_recipe,
  parse_bits,
  recipe_from_dict,
  recipe_to_dict,
)
from quantface_jax.quant.rules import LayerQuantConfig, default_rules, match
from quantface_jax.quant.smoothing import (
  balance_input,
  balance_weight,
  search_alpha,
  smoothing_scales,
)
