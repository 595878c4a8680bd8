"""OSDFace's visual representation embedder (VRE): a VQGAN LQ encoder, its codebook, 77-token selection.

Module names follow OSDFace's `MultiHeadEncoder` (taming-transformers' layout:
``encoder.down.0.block.1.conv1``, ``encoder.mid.attn_1.q``) so `associate_2.ckpt` keys map by rule
(`quantface_jax.convert.release.VRE_RENAMES`): its ``nin_shortcut`` is our ``conv_shortcut`` (the resnet
is shared with the UNet and VAE), and its attention block's ``norm1`` is our ``norm``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from quantface_jax.models.configs import VREConfig
from quantface_jax.models.layers import Conv2d, GroupNorm, Linear, silu
from quantface_jax.models.unet import Downsample2D, ResnetBlock2D


class AttnBlock(nnx.Module):
  """OSDFace's `MultiHeadAttnBlock` with one head, as self-attention: GroupNorm, 1x1-conv q/k/v from
  the normalized input, softmax(q·kᵀ/√C)·v, 1x1-conv proj_out, residual.

  OSDFace's block holds a second GroupNorm (``norm2``) for the queries of a cross-attention input; the
  VRE only self-attends, so that norm is never read and has no parameter here (conversion lists it).
  """

  def __init__(self, channels: int, *, cfg: VREConfig, rngs: nnx.Rngs):
    self.norm = GroupNorm(cfg.norm_num_groups, channels, eps=cfg.norm_eps)
    self.q = Conv2d(channels, channels, 1, rngs=rngs)
    self.k = Conv2d(channels, channels, 1, rngs=rngs)
    self.v = Conv2d(channels, channels, 1, rngs=rngs)
    self.proj_out = Conv2d(channels, channels, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    t = self.norm(x)
    q, k, v = (f(t).reshape(b, h * w, c) for f in (self.q, self.k, self.v))
    out = jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None])
    return x + self.proj_out(out.reshape(b, h, w, c))


class EncoderLevel(nnx.Module):
  def __init__(
    self, cin: int, cout: int, *, with_attn: bool, downsample: bool, cfg: VREConfig, rngs: nnx.Rngs
  ):
    kw = dict(temb_channels=None, groups=cfg.norm_num_groups, eps=cfg.norm_eps, rngs=rngs)
    self.block = nnx.List(
      [ResnetBlock2D(cin if j == 0 else cout, cout, **kw) for j in range(cfg.num_res_blocks)]
    )
    self.attn = (
      nnx.List([AttnBlock(cout, cfg=cfg, rngs=rngs) for _ in range(cfg.num_res_blocks)])
      if with_attn
      else None
    )
    self.downsample = Downsample2D(cout, asymmetric_pad=True, rngs=rngs) if downsample else None

  def __call__(self, x):
    for j, block in enumerate(self.block):
      x = block(x)
      if self.attn is not None:
        x = self.attn[j](x)
    return x if self.downsample is None else self.downsample(x)


class MidLevel(nnx.Module):
  def __init__(self, channels: int, *, cfg: VREConfig, rngs: nnx.Rngs):
    kw = dict(temb_channels=None, groups=cfg.norm_num_groups, eps=cfg.norm_eps, rngs=rngs)
    self.block_1 = ResnetBlock2D(channels, channels, **kw)
    self.attn_1 = AttnBlock(channels, cfg=cfg, rngs=rngs)
    self.block_2 = ResnetBlock2D(channels, channels, **kw)

  def __call__(self, x):
    return self.block_2(self.attn_1(self.block_1(x)))


class VQEncoder(nnx.Module):
  """(B, R, R, 3) -> (B, R/2^L, R/2^L, z_channels), L = len(ch_mult) - 1."""

  def __init__(self, cfg: VREConfig, *, rngs: nnx.Rngs):
    widths = [cfg.ch * m for m in (1,) + tuple(cfg.ch_mult)]
    n = len(cfg.ch_mult)
    self.conv_in = Conv2d(cfg.in_channels, cfg.ch, 3, padding=1, rngs=rngs)
    self.down = nnx.List(
      [
        EncoderLevel(
          widths[i],
          widths[i + 1],
          with_attn=(cfg.resolution >> i) in cfg.attn_resolutions,
          downsample=i < n - 1,
          cfg=cfg,
          rngs=rngs,
        )
        for i in range(n)
      ]
    )
    self.mid = MidLevel(widths[-1], cfg=cfg, rngs=rngs)
    self.norm_out = GroupNorm(cfg.norm_num_groups, widths[-1], eps=cfg.norm_eps)
    self.conv_out = Conv2d(widths[-1], cfg.z_channels, 3, padding=1, rngs=rngs)

  def __call__(self, x: jax.Array, *, return_features: bool = False):
    x = self.conv_in(x)
    features = []
    for level in self.down:
      x = level(x)
      features.append(x)
    x = self.mid(x)
    z = self.conv_out(silu(self.norm_out(x)))
    return (z, features) if return_features else z


class Codebook(nnx.Module):
  """taming VectorQuantizer's ``embedding``: weight (n_embed, embed_dim)."""

  def __init__(self, n_embed: int, embed_dim: int, *, rngs: nnx.Rngs):
    self.embedding = nnx.Embed(n_embed, embed_dim, rngs=rngs)

  def nearest(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """z (B, P, D) float32 -> (code index (B, P) int32, squared distance (B, P) float32).

    Distances as taming computes them: |z|² + |e|² - 2 z·e.
    """
    e = self.embedding.embedding[...].astype(jnp.float32)
    d = (
      jnp.sum(z * z, -1, keepdims=True)
      + jnp.sum(e * e, -1)[None, None]
      - 2.0 * jnp.einsum("bpd,nd->bpn", z, e, precision=jax.lax.Precision.HIGHEST)
    )
    idx = jnp.argmin(d, axis=-1).astype(jnp.int32)
    return idx, jnp.take_along_axis(d, idx[..., None], axis=-1)[..., 0]


def select_tokens(idx: jax.Array, dist: jax.Array, num_tokens: int) -> tuple[jax.Array, jax.Array]:
  """The reference's token rule, batched.

  idx, dist: (B, P). Positions are sorted by distance (ascending, stable); walking that list, each
  code index is kept the first time it appears, until ``num_tokens`` are kept.
  Returns (codes (B, num_tokens) int32, valid (B, num_tokens) bool); rows past the number of unique
  codes are invalid (the reference leaves them zero).
  """
  order = jnp.argsort(dist, axis=-1, stable=True)
  sorted_idx = jnp.take_along_axis(idx, order, axis=-1)
  p = sorted_idx.shape[-1]
  earlier = jnp.tril(jnp.ones((p, p), bool), k=-1)
  seen_before = jnp.any((sorted_idx[:, :, None] == sorted_idx[:, None, :]) & earlier, axis=-1)
  first = ~seen_before
  rank = jnp.cumsum(first, axis=-1) - 1
  slot_hits = first[:, None, :] & (rank[:, None, :] == jnp.arange(num_tokens)[None, :, None])
  valid = jnp.any(slot_hits, axis=-1)
  codes = jnp.take_along_axis(sorted_idx, jnp.argmax(slot_hits, axis=-1), axis=-1)
  return codes, valid


class VRE(nnx.Module):
  """lq (B, R, R, 3) in [-1, 1] -> visual prompt (B, num_tokens, embed_dim) float32."""

  def __init__(self, cfg: VREConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.encoder = VQEncoder(cfg, rngs=rngs)
    self.quant_conv = Conv2d(cfg.z_channels, cfg.embed_dim, 1, rngs=rngs)
    self.quantize = Codebook(cfg.n_embed, cfg.embed_dim, rngs=rngs)

  def encode(self, lq: jax.Array) -> jax.Array:
    """Pre-quantization latents (B, P, embed_dim) float32, with the reference's second normalisation."""
    # Kept for weight compatibility: lq is already in [-1, 1].
    x = ((lq - 0.5) / 0.5).astype(jnp.float32)
    z = self.quant_conv(self.encoder(x))
    return z.reshape(z.shape[0], -1, z.shape[-1])

  def __call__(self, lq: jax.Array) -> jax.Array:
    idx, dist = self.quantize.nearest(self.encode(lq))
    codes, valid = select_tokens(idx, dist, self.config.num_tokens)
    vectors = self.quantize.embedding.embedding[...][codes]
    return jnp.where(valid[..., None], vectors, 0.0)


class EmbeddingChange(nnx.Module):
  """OSDFace TwoLayerConv1x1 per token: Linear(512->256), SiLU, Linear(256->1024), SiLU.

  Torch keys conv1/conv2 are Conv1d(k=1) weights (out, in, 1); here Linear kernels (in, out).
  """

  def __init__(self, in_dim: int, hidden: int, out_dim: int, *, rngs: nnx.Rngs):
    self.conv1 = Linear(in_dim, hidden, rngs=rngs)
    self.conv2 = Linear(hidden, out_dim, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return silu(self.conv2(silu(self.conv1(tokens))))
