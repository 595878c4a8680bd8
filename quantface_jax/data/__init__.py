"""Image I/O, the synthetic degradation pipeline and face datasets (NumPy; no model code).

Note: `quantface_jax.data.degrade` is the `degrade` function; import other names of that module
from here or with `from quantface_jax.data.degrade import ...`.
"""

from quantface_jax.data.datasets import Dataset
from quantface_jax.data.datasets import HQFolderDataset
from quantface_jax.data.datasets import iterate_batches
from quantface_jax.data.datasets import LQFolderDataset
from quantface_jax.data.datasets import make_eval_set
from quantface_jax.data.datasets import pack_faces
from quantface_jax.data.degrade import apply_degradation
from quantface_jax.data.degrade import degrade
from quantface_jax.data.degrade import degrade_batch
from quantface_jax.data.degrade import DegradationConfig
from quantface_jax.data.degrade import DegradationParams
from quantface_jax.data.degrade import sample_degradation
from quantface_jax.data.io import image_grid
from quantface_jax.data.io import ImageError
from quantface_jax.data.io import list_images
from quantface_jax.data.io import read_image
from quantface_jax.data.io import read_image_with_notes
from quantface_jax.data.io import write_image

__all__ = [
    'Dataset', 'DegradationConfig', 'DegradationParams', 'HQFolderDataset', 'ImageError',
    'LQFolderDataset', 'apply_degradation', 'degrade', 'degrade_batch', 'image_grid',
    'iterate_batches', 'list_images', 'make_eval_set', 'pack_faces', 'read_image',
    'read_image_with_notes', 'sample_degradation', 'write_image',
]
