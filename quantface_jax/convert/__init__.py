"""PyTorch -> Flax NNX conversion: the generic state-dict mapping and the OSDFace release layout."""

from quantface_jax.convert.release import (
  convert_release,
  merge_lora,
  read_lightning_state_dict,
  read_state_dict,
  vre_config_from_state_dict,
)
from quantface_jax.convert.torch_to_nnx import (
  ConversionError,
  ConversionReport,
  load_torch_state_dict,
  nnx_to_torch_state_dict,
  torch_shapes,
)
