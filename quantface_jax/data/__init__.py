"""Image I/O, the synthetic degradation pipeline and face datasets (NumPy; no model code).

Note: `quantface_jax.data.degrade` is the `degrade` function; import other names of that module
from here or with `from quantface_jax.data.degrade import ...`.
"""

from quantface_jax.data.datasets import (
  Dataset,
  HQFolderDataset,
  LQFolderDataset,
  iterate_batches,
  make_eval_set,
  pack_faces,
)
from quantface_jax.data.degrade import (
  DegradationConfig,
  DegradationParams,
  apply_degradation,
  degrade,
  degrade_batch,
  sample_degradation,
)
from quantface_jax.data.io import (
  ImageError,
  image_grid,
  list_images,
  read_image,
  read_image_with_notes,
  write_image,
)

__all__ = [
  "Dataset",
  "DegradationConfig",
  "DegradationParams",
  "HQFolderDataset",
  "ImageError",
  "LQFolderDataset",
  "apply_degradation",
  "degrade",
  "degrade_batch",
  "image_grid",
  "iterate_batches",
  "list_images",
  "make_eval_set",
  "pack_faces",
  "read_image",
  "read_image_with_notes",
  "sample_degradation",
  "write_image",
]
