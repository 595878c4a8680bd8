"""quantface-jax: QuantFace low-bit quantization of the OSDFace one-step face restorer, in JAX/Flax NNX.

The verbs a notebook uses, in pipeline order::

    import quantface_jax as qf

    model = qf.load("mini")                          # or qf.build(qf.TINY), a converted checkpoint
    restore = qf.make_restore_fn(model)              # jitted: LQ faces [-1, 1] -> images [0, 1]
    qmodel = qf.quantize(model, qf.get_recipe("quantface", "W4A4"), calibration=batches)
    qf.set_bits(qmodel, {path: (4, 6)})              # widths are data: no recompilation
    student = qf.to_qdlora(qmodel)                   # trainable branches for distillation
    serve_dir = qf.export(qdir, "served")            # a QDIR packed for the integer kernels
    served = qf.load_served(serve_dir)

Submodules hold the pieces (models, quant, alloc, train, kernels, serve, data, metrics, convert);
each re-exports its own public names.

Note: ``quantface_jax.evaluate`` is the `evaluate` function; the module's other names
(``synthetic_set``, ``folder_set``) import with ``from quantface_jax.evaluate import ...``.
"""

from quantface_jax.alloc import allocate
from quantface_jax.checkpoint import load, save_model
from quantface_jax.evaluate import evaluate
from quantface_jax.inference import make_restore_fn
from quantface_jax.models import (
  MINI,
  PRESETS,
  SD21,
  TINY,
  OSDFace,
  OSDFaceConfig,
  RestoreOutput,
  UNetConfig,
  VAEConfig,
  VREConfig,
  abstract,
  build,
  parameter_counts,
  set_remat,
)
from quantface_jax.quant import (
  LayerQuantConfig,
  QuantizerConfig,
  Recipe,
  get_bits,
  get_recipe,
  load_quantized,
  quantize,
  save_quantized,
  set_bits,
  to_qdlora,
)
from quantface_jax.serve import export, load_served
from quantface_jax.version import __version__

__all__ = [
  # Models: presets and configs.
  "MINI",
  "PRESETS",
  "SD21",
  "TINY",
  "OSDFaceConfig",
  "UNetConfig",
  "VAEConfig",
  "VREConfig",
  # Build, load and run a model.
  "OSDFace",
  "RestoreOutput",
  "abstract",
  "build",
  "load",
  "make_restore_fn",
  "parameter_counts",
  "save_model",
  "set_remat",
  # Quantize, change widths, distil.
  "LayerQuantConfig",
  "QuantizerConfig",
  "Recipe",
  "get_bits",
  "get_recipe",
  "load_quantized",
  "quantize",
  "save_quantized",
  "set_bits",
  "to_qdlora",
  # Serve on integer kernels.
  "export",
  "load_served",
  # Allocate bit widths, evaluate.
  "allocate",
  "evaluate",
  "__version__",
]
