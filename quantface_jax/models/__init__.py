"""Flax NNX models: UNet, VAE, VRE and the one-step OSDFace restorer."""

from quantface_jax.models.configs import (
  MINI,
  PRESETS,
  SD21,
  TINY,
  OSDFaceConfig,
  UNetConfig,
  VAEConfig,
  VREConfig,
)
from quantface_jax.models.layers import Conv2d, GroupNorm, LayerNorm, Linear, set_remat
from quantface_jax.models.osdface import (
  OSDFace,
  RestoreOutput,
  abstract,
  alpha_cumprod,
  build,
  parameter_counts,
)
from quantface_jax.models.unet import UNet2DConditionModel
from quantface_jax.models.vae import AutoencoderKL
from quantface_jax.models.vre import VRE, EmbeddingChange, select_tokens
