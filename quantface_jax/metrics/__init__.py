"""Image quality metrics: PSNR/SSIM (basicsr conventions), NIQE, optional dlib face metrics.

`faces` is not imported here: it needs the optional `faces` extra (import
`quantface_jax.metrics.faces` explicitly).
"""

from quantface_jax.metrics.color import rgb_to_y, to_255
from quantface_jax.metrics.evaluate import compute_metrics
from quantface_jax.metrics.fidelity import fidelity_psnr, psnr, ssim, traced_ssim
from quantface_jax.metrics.matlab_resize import imresize
from quantface_jax.metrics.niqe_metric import PristineModel, niqe, niqe_any_size, pristine_model

__all__ = [
  "PristineModel",
  "compute_metrics",
  "fidelity_psnr",
  "imresize",
  "niqe",
  "niqe_any_size",
  "pristine_model",
  "psnr",
  "rgb_to_y",
  "ssim",
  "to_255",
  "traced_ssim",
]
