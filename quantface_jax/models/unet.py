"""SD-2.x `UNet2DConditionModel` in Flax NNX, NHWC, with diffusers' module names."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from quantface_jax.models.configs import UNetConfig
from quantface_jax.models.layers import (
  Conv2d,
  GroupNorm,
  LayerNorm,
  Linear,
  Rematerialized,
  attention,
  silu,
)


class ResnetBlock2D(Rematerialized):
  """diffusers ResnetBlock2D: GN-SiLU-conv, + time embedding, GN-SiLU-conv, residual (1x1 if widths differ)."""

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    *,
    temb_channels: int | None,
    groups: int,
    eps: float,
    rngs: nnx.Rngs,
  ):
    self.norm1 = GroupNorm(groups, in_channels, eps=eps)
    self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, rngs=rngs)
    self.time_emb_proj = Linear(temb_channels, out_channels, rngs=rngs) if temb_channels else None
    self.norm2 = GroupNorm(groups, out_channels, eps=eps)
    self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, rngs=rngs)
    self.conv_shortcut = (
      Conv2d(in_channels, out_channels, 1, rngs=rngs) if in_channels != out_channels else None
    )

  def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
    return self._run(ResnetBlock2D._forward, x, temb)

  def _forward(self, x: jax.Array, temb: jax.Array | None) -> jax.Array:
    h = self.conv1(silu(self.norm1(x)))
    if self.time_emb_proj is not None:
      h = h + self.time_emb_proj(silu(temb))[:, None, None, :]
    h = self.conv2(silu(self.norm2(h)))
    shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
    return shortcut + h


class Attention(nnx.Module):
  """diffusers Attention: to_q/to_k/to_v (no bias) and to_out.0."""

  def __init__(self, query_dim: int, *, heads: int, context_dim: int | None = None, rngs: nnx.Rngs):
    context_dim = context_dim or query_dim
    self.heads = heads
    self.to_q = Linear(query_dim, query_dim, use_bias=False, rngs=rngs)
    self.to_k = Linear(context_dim, query_dim, use_bias=False, rngs=rngs)
    self.to_v = Linear(context_dim, query_dim, use_bias=False, rngs=rngs)
    self.to_out = nnx.List([Linear(query_dim, query_dim, rngs=rngs)])

  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    context = x if context is None else context
    out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
    return self.to_out[0](out)


class GEGLU(nnx.Module):
  """proj to 2·inner, hidden · gelu(gate) (exact gelu, as torch's default)."""

  def __init__(self, dim: int, inner: int, *, rngs: nnx.Rngs):
    self.proj = Linear(dim, 2 * inner, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    hidden, gate = jnp.split(self.proj(x), 2, axis=-1)
    return hidden * jax.nn.gelu(gate, approximate=False)


class FeedForward(nnx.Module):
  """diffusers FeedForward: net.0 = GEGLU, net.1 = dropout (identity at inference), net.2 = Linear."""

  def __init__(self, dim: int, *, mult: int = 4, rngs: nnx.Rngs):
    self.net = nnx.List(
      [GEGLU(dim, mult * dim, rngs=rngs), None, Linear(mult * dim, dim, rngs=rngs)]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.net[2](self.net[0](x))


class BasicTransformerBlock(nnx.Module):
  def __init__(self, dim: int, *, heads: int, context_dim: int, rngs: nnx.Rngs):
    self.norm1 = LayerNorm(dim)
    self.attn1 = Attention(dim, heads=heads, rngs=rngs)
    self.norm2 = LayerNorm(dim)
    self.attn2 = Attention(dim, heads=heads, context_dim=context_dim, rngs=rngs)
    self.norm3 = LayerNorm(dim)
    self.ff = FeedForward(dim, rngs=rngs)

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    x = x + self.attn1(self.norm1(x))
    x = x + self.attn2(self.norm2(x), context)
    return x + self.ff(self.norm3(x))


class Transformer2DModel(Rematerialized):
  """GroupNorm, proj_in, transformer blocks over H·W tokens, proj_out, residual."""

  def __init__(
    self,
    channels: int,
    *,
    heads: int,
    context_dim: int,
    num_layers: int,
    groups: int,
    linear_projection: bool,
    rngs: nnx.Rngs,
  ):
    self.norm = GroupNorm(groups, channels, eps=1e-6)
    proj = (
      (lambda: Linear(channels, channels, rngs=rngs))
      if linear_projection
      else (lambda: Conv2d(channels, channels, 1, rngs=rngs))
    )
    self.proj_in = proj()
    self.transformer_blocks = nnx.List(
      [
        BasicTransformerBlock(channels, heads=heads, context_dim=context_dim, rngs=rngs)
        for _ in range(num_layers)
      ]
    )
    self.proj_out = proj()

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    return self._run(Transformer2DModel._forward, x, context)

  def _forward(self, x: jax.Array, context: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    tokens = self.proj_in(self.norm(x)).reshape(b, h * w, c)
    for block in self.transformer_blocks:
      tokens = block(tokens, context)
    return x + self.proj_out(tokens.reshape(b, h, w, c))


class Downsample2D(nnx.Module):
  """Stride-2 3x3 conv; ``asymmetric_pad`` is the VAE's (0, 1, 0, 1) pad instead of pad 1."""

  def __init__(self, channels: int, *, asymmetric_pad: bool = False, rngs: nnx.Rngs):
    padding = ((0, 1), (0, 1)) if asymmetric_pad else 1
    self.conv = Conv2d(channels, channels, 3, stride=2, padding=padding, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(x)


class Upsample2D(nnx.Module):
  """Nearest x2 then 3x3 conv."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv = Conv2d(channels, channels, 3, padding=1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


def _transformer(channels: int, heads: int, cfg, rngs: nnx.Rngs) -> Transformer2DModel:
  """A block's cross-attention transformer, configured as the UNet's config says."""
  return Transformer2DModel(
    channels,
    heads=heads,
    context_dim=cfg.cross_attention_dim,
    num_layers=cfg.transformer_layers_per_block,
    groups=cfg.norm_num_groups,
    linear_projection=cfg.use_linear_projection,
    rngs=rngs,
  )


class UNetBlock(nnx.Module):
  """One down or up block: resnets, optional attentions after each, optional resampler.

  Down blocks return every intermediate for the skips; up blocks consume ``len(resnets)`` skips.
  """

  def __init__(
    self,
    resnet_io: list[tuple[int, int]],
    *,
    cfg: UNetConfig,
    heads: int | None,
    resample: str | None,
    rngs: nnx.Rngs,
  ):
    kw = dict(
      temb_channels=cfg.time_embed_dim, groups=cfg.norm_num_groups, eps=cfg.norm_eps, rngs=rngs
    )
    self.resnets = nnx.List([ResnetBlock2D(i, o, **kw) for i, o in resnet_io])
    self.attentions = (
      nnx.List([_transformer(o, heads, cfg, rngs) for _, o in resnet_io]) if heads else None
    )
    out = resnet_io[-1][1]
    self.downsamplers = nnx.List([Downsample2D(out, rngs=rngs)]) if resample == "down" else None
    self.upsamplers = nnx.List([Upsample2D(out, rngs=rngs)]) if resample == "up" else None

  def _layer(self, i: int, x, temb, context):
    x = self.resnets[i](x, temb)
    return x if self.attentions is None else self.attentions[i](x, context)

  def down(self, x, temb, context) -> tuple[jax.Array, list[jax.Array]]:
    skips = []
    for i in range(len(self.resnets)):
      x = self._layer(i, x, temb, context)
      skips.append(x)
    if self.downsamplers is not None:
      x = self.downsamplers[0](x)
      skips.append(x)
    return x, skips

  def up(self, x, skips: list[jax.Array], temb, context) -> jax.Array:
    for i in range(len(self.resnets)):
      x = self._layer(i, jnp.concatenate([x, skips.pop()], axis=-1), temb, context)
    if self.upsamplers is not None:
      x = self.upsamplers[0](x)
    return x


class UNetMidBlock2DCrossAttn(nnx.Module):
  def __init__(self, channels: int, *, cfg: UNetConfig, heads: int, rngs: nnx.Rngs):
    kw = dict(
      temb_channels=cfg.time_embed_dim, groups=cfg.norm_num_groups, eps=cfg.norm_eps, rngs=rngs
    )
    self.resnets = nnx.List([ResnetBlock2D(channels, channels, **kw) for _ in range(2)])
    self.attentions = nnx.List([_transformer(channels, heads, cfg, rngs)])

  def __call__(self, x, temb, context):
    x = self.resnets[0](x, temb)
    return self.resnets[1](self.attentions[0](x, context), temb)


class TimestepEmbedding(nnx.Module):
  def __init__(self, in_dim: int, dim: int, *, rngs: nnx.Rngs):
    self.linear_1 = Linear(in_dim, dim, rngs=rngs)
    self.linear_2 = Linear(dim, dim, rngs=rngs)

  def __call__(self, x):
    return self.linear_2(silu(self.linear_1(x)))


def timestep_features(
  t: jax.Array, dim: int, *, flip_sin_to_cos: bool, freq_shift: float
) -> jax.Array:
  """diffusers `get_timestep_embedding`: (B,) -> (B, dim) float32."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  sin, cos = jnp.sin(args), jnp.cos(args)
  return jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)


class UNet2DConditionModel(nnx.Module):
  """eps = unet(latents (B, h, w, C), timesteps (B,), context (B, L, cross_attention_dim))."""

  def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    ch = cfg.block_out_channels
    n = len(ch)
    heads = cfg.num_attention_heads
    self.conv_in = Conv2d(cfg.in_channels, ch[0], 3, padding=1, rngs=rngs)
    self.time_embedding = TimestepEmbedding(ch[0], cfg.time_embed_dim, rngs=rngs)

    def block(i, kind, io, block_heads, resample):
      # Cross-attention only in CrossAttn* blocks; every level but the innermost resamples.
      attn_heads = block_heads if kind.startswith("CrossAttn") else None
      return UNetBlock(
        io, cfg=cfg, heads=attn_heads, resample=resample if i < n - 1 else None, rngs=rngs
      )

    down = []
    for i, kind in enumerate(cfg.down_block_types):
      io = [(ch[max(i - 1, 0)] if j == 0 else ch[i], ch[i]) for j in range(cfg.layers_per_block)]
      down.append(block(i, kind, io, heads[i], "down"))
    self.down_blocks = nnx.List(down)
    self.mid_block = UNetMidBlock2DCrossAttn(ch[-1], cfg=cfg, heads=heads[-1], rngs=rngs)

    rch, rheads = ch[::-1], heads[::-1]
    up = []
    for i, kind in enumerate(cfg.up_block_types):
      prev, out, skip_in = rch[max(i - 1, 0)], rch[i], rch[min(i + 1, n - 1)]
      layers = cfg.layers_per_block + 1
      io = [
        ((prev if j == 0 else out) + (skip_in if j == layers - 1 else out), out)
        for j in range(layers)
      ]
      up.append(block(i, kind, io, rheads[i], "up"))
    self.up_blocks = nnx.List(up)
    self.conv_norm_out = GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
    self.conv_out = Conv2d(ch[0], cfg.out_channels, 3, padding=1, rngs=rngs)

  def __call__(self, latents: jax.Array, timesteps: jax.Array, context: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = latents.dtype
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (latents.shape[0],))
    t_feat = timestep_features(
      timesteps,
      cfg.block_out_channels[0],
      flip_sin_to_cos=cfg.flip_sin_to_cos,
      freq_shift=cfg.freq_shift,
    )
    temb = self.time_embedding(t_feat.astype(dtype))
    context = context.astype(dtype)

    x = self.conv_in(latents)
    skips = [x]
    for block in self.down_blocks:
      x, block_skips = block.down(x, temb, context)
      skips += block_skips
    x = self.mid_block(x, temb, context)
    for block in self.up_blocks:
      x = block.up(x, skips, temb, context)
    return self.conv_out(silu(self.conv_norm_out(x)))
