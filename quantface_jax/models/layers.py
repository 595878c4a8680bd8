"""Leaf layers shared by the UNet, the VAE and the VRE (Flax NNX, NHWC).

Parameter names and layouts are chosen so that a PyTorch state dict maps onto them by rule:
``Linear.kernel`` is torch ``weight.T`` (in, out); ``Conv2d.kernel`` is torch ``weight`` OIHW
transposed to HWIO; norms hold ``scale``/``bias`` (torch ``weight``/``bias``). Module attribute names
mirror diffusers' (``down_blocks.0.resnets.1.conv1``) so that a torch key is the NNX path joined by
dots with the last component renamed.

Compute dtype follows the input: parameters are cast to ``x.dtype`` at use, so one float32
parameter set serves float32 and bfloat16 inference. Normalisations compute their statistics in
float32 whatever the input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Padding = int | tuple[tuple[int, int], tuple[int, int]]


def _fan_in_normal(rngs: nnx.Rngs, shape: Sequence[int], fan_in: int) -> jax.Array:
  return jax.random.normal(rngs.params(), shape, jnp.float32) / math.sqrt(max(fan_in, 1))


class Linear(nnx.Module):
  """y = x @ kernel + bias. kernel: (in_features, out_features) float32."""

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True, rngs: nnx.Rngs):
    self.in_features = in_features
    self.out_features = out_features
    self.kernel = nnx.Param(_fan_in_normal(rngs, (in_features, out_features), in_features))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x, self.kernel[...].astype(x.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(x.dtype)
    return y


class Conv2d(nnx.Module):
  """2-D convolution on NHWC input. kernel: (kh, kw, in_channels, out_channels) float32.

  ``padding`` is symmetric (an int) or explicit ((top, bottom), (left, right)); the latter carries
  the VQGAN/VAE downsampler's asymmetric (0, 1, 0, 1) pad.
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: Padding = 0,
    use_bias: bool = True,
    rngs: nnx.Rngs,
  ):
    self.in_channels = in_channels
    self.out_channels = out_channels
    self.kernel_size = kernel_size
    self.stride = stride
    self.padding = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    fan_in = in_channels * kernel_size * kernel_size
    self.kernel = nnx.Param(
      _fan_in_normal(rngs, (kernel_size, kernel_size, in_channels, out_channels), fan_in)
    )
    self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    return conv2d(
      x,
      self.kernel[...].astype(x.dtype),
      self.stride,
      self.padding,
      None if self.bias is None else self.bias[...].astype(x.dtype),
    )


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding, bias: jax.Array | None = None):
  """NHWC x HWIO convolution; a 1x1 stride-1 kernel runs as a matmul."""
  if kernel.shape[:2] == (1, 1) and stride == 1 and padding == ((0, 0), (0, 0)):
    y = jnp.dot(x, kernel[0, 0])
  else:
    y = jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(stride, stride),
      padding=padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
  return y if bias is None else y + bias


class GroupNorm(nnx.Module):
  """GroupNorm over the channel (last) axis; statistics in float32."""

  def __init__(self, num_groups: int, num_channels: int, *, eps: float):
    if num_channels % num_groups:
      raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
    self.num_groups = num_groups
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((num_channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_channels,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    *lead, c = x.shape
    g = x.astype(jnp.float32).reshape(lead[0], -1, self.num_groups, c // self.num_groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(g - mean).mean(axis=(1, 3), keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + self.eps)
    y = g.reshape(x.shape) * self.scale[...] + self.bias[...]
    return y.astype(x.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis; statistics in float32."""

  def __init__(self, dim: int, *, eps: float = 1e-5):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
    return y.astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int) -> jax.Array:
  """Multi-head scaled dot-product attention.

  q: (B, Lq, H·D), k and v: (B, Lk, H·D) -> (B, Lq, H·D). On GPU with 16-bit inputs this takes the
  cuDNN flash path where it applies (4x faster than XLA's at 4096 tokens, docs/design.md §6);
  otherwise XLA's.
  """
  b, lq, hd = q.shape
  heads = lambda t: t.reshape(t.shape[0], t.shape[1], num_heads, hd // num_heads)
  implementation = None
  # cuDNN's flash kernels need 16-bit inputs, sequence lengths in multiples of 64 and head dims
  # <= 256 in multiples of 8: the 77-token cross-attention and the VAE's 512-wide single head stay
  # on XLA.
  head_dim = hd // num_heads
  if (
    q.dtype in (jnp.bfloat16, jnp.float16)
    and jax.default_backend() == "gpu"
    and lq % 64 == 0
    and k.shape[1] % 64 == 0
    and head_dim <= 256
    and head_dim % 8 == 0
  ):
    implementation = "cudnn"
  out = jax.nn.dot_product_attention(heads(q), heads(k), heads(v), implementation=implementation)
  return out.reshape(b, lq, hd)


def silu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(x)


class Rematerialized(nnx.Module):
  """A block whose activations can be recomputed in the backward pass instead of kept (`set_remat`):
  memory for about one more forward pass of the block. Off by default; the flag is static, so
  a model compiles once per setting."""

  remat = False

  def _run(self, forward, *args):
    """forward(self, *args); with the flag set, under `jax.checkpoint` on a functional copy of the
    block (so it also works inside a plain `jax.grad` of `nnx.merge`d state, where `nnx.remat`
    would write the state back across trace levels). `forward` must not update the block's state."""
    if not self.remat:
      return forward(self, *args)
    graphdef, state = nnx.split(self)
    return jax.checkpoint(lambda s, *a: forward(nnx.merge(graphdef, s), *a))(state, *args)


def set_remat(model: nnx.Module, enabled: bool) -> int:
  """Sets the remat flag of every `Rematerialized` block in `model`; returns how many there are."""
  blocks = [m for _, m in nnx.iter_modules(model) if isinstance(m, Rematerialized)]
  for block in blocks:
    block.remat = enabled
  return len(blocks)
