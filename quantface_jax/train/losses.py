"""Training losses on NHWC images. All return float32 scalars (means over every element)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from quantface_jax.models.vre import VQEncoder

_SOBEL_X = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], np.float32) / 4.0


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def sobel(images: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H, W, 2C): normalized Sobel x and y responses per channel (edge padding)."""
  c = images.shape[-1]
  kernel = np.stack([_SOBEL_X, _SOBEL_X.T], axis=-1)[:, :, None, :]  # (3, 3, 1, 2)
  kernel = jnp.asarray(np.tile(kernel, (1, 1, 1, c)).reshape(3, 3, 1, 2 * c))
  x = jnp.pad(images.astype(jnp.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c
  )


def sobel_l1(pred: jax.Array, target: jax.Array) -> jax.Array:
  """L1 between Sobel gradients, per RGB channel (so colour edges count as well as luminance edges)."""
  return l1(sobel(pred), sobel(target))


def vre_features(encoder: VQEncoder, images: jax.Array) -> list[jax.Array]:
  """Per-level features (B, h, w, C_l) of a VRE encoder on images in [-1, 1], with the VRE's own
  input normalisation, each unit-normalised over channels at every position (as LPIPS does)."""
  _, features = encoder(((images - 0.5) / 0.5).astype(jnp.float32), return_features=True)
  return [f * jax.lax.rsqrt(jnp.sum(jnp.square(f), -1, keepdims=True) + 1e-10) for f in features]


def feature_loss(
  encoder: VQEncoder, pred: jax.Array, target: jax.Array, *, kind: str = "l1"
) -> jax.Array:
  """Distance in a (frozen) VRE encoder's feature space: mean over levels of L1 or MSE between the
  channel-normalised features; the target branch carries no gradient."""
  distance = {"l1": l1, "mse": mse}[kind]
  target_features = jax.lax.stop_gradient(vre_features(encoder, target))
  pred_features = vre_features(encoder, pred)
  per_level = [distance(p, t) for p, t in zip(pred_features, target_features)]
  return sum(per_level) / len(per_level)


def weighted_sum(terms: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
  """Σ weights[k]·terms[k] over the terms whose weight is non-zero (a weight must exist for each)."""
  missing = sorted(set(terms) - set(weights))
  if missing:
    raise KeyError(f"no loss weight for {missing}")
  return sum(float(weights[k]) * v for k, v in terms.items() if float(weights[k]) != 0.0)


def psnr(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Per-image PSNR in dB, (B, H, W, C) images in [0, 1] -> (B,); RGB, no border crop."""
  err = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=(1, 2, 3))
  return 10.0 * jnp.log10(1.0 / jnp.maximum(err, 1e-10))
