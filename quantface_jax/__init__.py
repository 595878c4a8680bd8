"""quantface-jax: QuantFace low-bit quantization of the OSDFace one-step face restorer, in JAX/Flax NNX.

The public API lives here; submodules hold the pieces (models, quant, alloc, train, kernels, data,
metrics, convert).
"""

from quantface_jax.checkpoint import load, save_model
from quantface_jax.inference import make_restore_fn
from quantface_jax.models import (
  MINI,
  PRESETS,
  SD21,
  TINY,
  OSDFace,
  OSDFaceConfig,
  RestoreOutput,
  abstract,
  build,
  parameter_counts,
  set_remat,
)
from quantface_jax.version import __version__
