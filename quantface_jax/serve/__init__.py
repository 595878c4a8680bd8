"""Integer serving: the packed SERVE_DIR format, its export from a QDIR, and the serving model
whose quantized layers run on the integer kernels (docs/design.md §2.6)."""

from quantface_jax.serve.export import (
  SERVE_FORMAT,
  Packing,
  export,
  is_serve_dir,
  load_served,
  packed_account,
  read_serve_manifest,
  save_served,
  serve_model,
  served_dir,
  shipped_models,
  truncate_low_rank,
)
from quantface_jax.serve.layers import (
  INT_LAYERS,
  IntConv2d,
  IntLayerSpec,
  IntLinear,
  int_layer,
  quantize_static,
)

__all__ = [
  "INT_LAYERS",
  "IntConv2d",
  "IntLayerSpec",
  "IntLinear",
  "Packing",
  "SERVE_FORMAT",
  "export",
  "int_layer",
  "is_serve_dir",
  "load_served",
  "packed_account",
  "quantize_static",
  "read_serve_manifest",
  "save_served",
  "serve_model",
  "served_dir",
  "shipped_models",
  "truncate_low_rank",
]
