"""SD `AutoencoderKL` in Flax NNX, NHWC, with diffusers' module names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from quantface_jax.models.configs import VAEConfig
from quantface_jax.models.layers import Conv2d, GroupNorm, Linear, attention, silu
from quantface_jax.models.unet import Downsample2D, ResnetBlock2D, Upsample2D


class SpatialSelfAttention(nnx.Module):
  """diffusers' VAE mid-block Attention: GroupNorm, one head over H·W tokens, residual."""

  def __init__(self, channels: int, *, groups: int, eps: float, rngs: nnx.Rngs):
    self.group_norm = GroupNorm(groups, channels, eps=eps)
    self.to_q = Linear(channels, channels, rngs=rngs)
    self.to_k = Linear(channels, channels, rngs=rngs)
    self.to_v = Linear(channels, channels, rngs=rngs)
    self.to_out = nnx.List([Linear(channels, channels, rngs=rngs)])

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    t = self.group_norm(x).reshape(b, h * w, c)
    out = self.to_out[0](attention(self.to_q(t), self.to_k(t), self.to_v(t), 1))
    return x + out.reshape(b, h, w, c)


class MidBlock(nnx.Module):
  def __init__(self, channels: int, *, cfg: VAEConfig, rngs: nnx.Rngs):
    kw = dict(temb_channels=None, groups=cfg.norm_num_groups, eps=cfg.norm_eps, rngs=rngs)
    self.resnets = nnx.List([ResnetBlock2D(channels, channels, **kw) for _ in range(2)])
    self.attentions = (
      nnx.List(
        [SpatialSelfAttention(channels, groups=cfg.norm_num_groups, eps=cfg.norm_eps, rngs=rngs)]
      )
      if cfg.mid_block_add_attention
      else None
    )

  def __call__(self, x):
    x = self.resnets[0](x)
    if self.attentions is not None:
      x = self.attentions[0](x)
    return self.resnets[1](x)


class CoderBlock(nnx.Module):
  """DownEncoderBlock2D / UpDecoderBlock2D: resnets then an optional resampler."""

  def __init__(
    self, io: list[tuple[int, int]], *, cfg: VAEConfig, resample: str | None, rngs: nnx.Rngs
  ):
    kw = dict(temb_channels=None, groups=cfg.norm_num_groups, eps=cfg.norm_eps, rngs=rngs)
    self.resnets = nnx.List([ResnetBlock2D(i, o, **kw) for i, o in io])
    out = io[-1][1]
    self.downsamplers = (
      nnx.List([Downsample2D(out, asymmetric_pad=True, rngs=rngs)]) if resample == "down" else None
    )
    self.upsamplers = nnx.List([Upsample2D(out, rngs=rngs)]) if resample == "up" else None

  def __call__(self, x):
    for resnet in self.resnets:
      x = resnet(x)
    if self.downsamplers is not None:
      x = self.downsamplers[0](x)
    if self.upsamplers is not None:
      x = self.upsamplers[0](x)
    return x


class Encoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    ch, n = cfg.block_out_channels, len(cfg.block_out_channels)
    self.conv_in = Conv2d(cfg.in_channels, ch[0], 3, padding=1, rngs=rngs)
    self.down_blocks = nnx.List(
      [
        CoderBlock(
          [(ch[max(i - 1, 0)] if j == 0 else ch[i], ch[i]) for j in range(cfg.layers_per_block)],
          cfg=cfg,
          resample="down" if i < n - 1 else None,
          rngs=rngs,
        )
        for i in range(n)
      ]
    )
    self.mid_block = MidBlock(ch[-1], cfg=cfg, rngs=rngs)
    self.conv_norm_out = GroupNorm(cfg.norm_num_groups, ch[-1], eps=cfg.norm_eps)
    self.conv_out = Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1, rngs=rngs)

  def __call__(self, x):
    x = self.conv_in(x)
    for block in self.down_blocks:
      x = block(x)
    x = self.mid_block(x)
    return self.conv_out(silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    rch, n = cfg.block_out_channels[::-1], len(cfg.block_out_channels)
    self.conv_in = Conv2d(cfg.latent_channels, rch[0], 3, padding=1, rngs=rngs)
    self.mid_block = MidBlock(rch[0], cfg=cfg, rngs=rngs)
    self.up_blocks = nnx.List(
      [
        CoderBlock(
          [
            (rch[max(i - 1, 0)] if j == 0 else rch[i], rch[i])
            for j in range(cfg.layers_per_block + 1)
          ],
          cfg=cfg,
          resample="up" if i < n - 1 else None,
          rngs=rngs,
        )
        for i in range(n)
      ]
    )
    self.conv_norm_out = GroupNorm(cfg.norm_num_groups, rch[-1], eps=cfg.norm_eps)
    self.conv_out = Conv2d(rch[-1], cfg.out_channels, 3, padding=1, rngs=rngs)

  def __call__(self, z):
    x = self.mid_block(self.conv_in(z))
    for block in self.up_blocks:
      x = block(x)
    return self.conv_out(silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
  """Images (B, H, W, 3) in [-1, 1] <-> unscaled latents (B, H/f, W/f, latent_channels)."""

  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.decoder = Decoder(cfg, rngs=rngs)
    c2 = 2 * cfg.latent_channels
    self.quant_conv = Conv2d(c2, c2, 1, rngs=rngs)
    self.post_quant_conv = Conv2d(cfg.latent_channels, cfg.latent_channels, 1, rngs=rngs)

  def encode_moments(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns the diagonal Gaussian's (mean, logvar), logvar clipped to [-30, 20] as diffusers does."""
    mean, logvar = jnp.split(self.quant_conv(self.encoder(images)), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def encode(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """The posterior mean, or a sample when ``rng`` is given (the OSDFace reference samples)."""
    mean, logvar = self.encode_moments(images)
    if rng is None:
      return mean
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)

  def decode(self, latents: jax.Array) -> jax.Array:
    return self.decoder(self.post_quant_conv(latents))
