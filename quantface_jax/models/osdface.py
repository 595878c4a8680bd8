"""OSDFace: the one-step restore of docs/design.md §1 on Flax NNX modules."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantface_jax.models.configs import PRESETS, OSDFaceConfig
from quantface_jax.models.unet import UNet2DConditionModel
from quantface_jax.models.vae import AutoencoderKL
from quantface_jax.models.vre import VRE, EmbeddingChange


def alpha_cumprod(cfg: OSDFaceConfig) -> float:
  """ᾱ_t of the scaled-linear schedule at the model's fixed timestep, in float64."""
  betas = (
    np.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps, dtype=np.float64)
    ** 2
  )
  return float(np.cumprod(1.0 - betas)[cfg.timestep])


@dataclasses.dataclass(frozen=True)
class RestoreOutput:
  """Everything one restore computes; distillation and sensitivity sweeps read the intermediates."""

  image: jax.Array  # (B, R, R, 3) float32 in [0, 1]
  z_low: jax.Array  # (B, r, r, C) scaled LQ latent
  z_high: jax.Array  # (B, r, r, C) scaled restored latent, float32
  eps: jax.Array  # (B, r, r, C) UNet prediction
  prompt: jax.Array  # (B, num_tokens, cross_attention_dim)


jax.tree_util.register_dataclass(
  RestoreOutput, data_fields=["image", "z_low", "z_high", "eps", "prompt"], meta_fields=[]
)


class OSDFace(nnx.Module):
  """The restorer: ``model(lq)`` maps (B, R, R, 3) in [-1, 1] to restored images in [0, 1]."""

  def __init__(self, cfg: OSDFaceConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.vre = VRE(cfg.vre, rngs=rngs)
    self.embedding_change = EmbeddingChange(
      cfg.vre.embed_dim, cfg.embedding_hidden, cfg.unet.cross_attention_dim, rngs=rngs
    )
    self.vae = AutoencoderKL(cfg.vae, rngs=rngs)
    self.unet = UNet2DConditionModel(cfg.unet, rngs=rngs)

  def prompt(self, lq: jax.Array, dtype=jnp.float32) -> jax.Array:
    """VRE tokens through embedding_change; both stay in float32 (run once, small)."""
    return self.embedding_change(self.vre(lq)).astype(dtype)

  def restore(
    self, lq: jax.Array, *, dtype=jnp.float32, rng: jax.Array | None = None
  ) -> RestoreOutput:
    """One-step restore. ``dtype`` is the VAE/UNet compute dtype; ``rng`` samples the VAE posterior
    as the reference does (default: its mean)."""
    cfg = self.config
    lq = lq.astype(jnp.float32)
    prompt = self.prompt(lq, dtype)
    scale = cfg.vae.scaling_factor
    z_low = self.vae.encode(lq.astype(dtype), rng) * scale
    eps = self.unet(z_low, jnp.full((lq.shape[0],), cfg.timestep), prompt)
    a = alpha_cumprod(cfg)
    z_high = (z_low.astype(jnp.float32) - np.sqrt(1.0 - a) * eps.astype(jnp.float32)) / np.sqrt(a)
    decoded = self.vae.decode((z_high / scale).astype(dtype)).astype(jnp.float32)
    image = jnp.clip(decoded, -1.0, 1.0) * 0.5 + 0.5
    return RestoreOutput(image=image, z_low=z_low, z_high=z_high, eps=eps, prompt=prompt)

  def __call__(self, lq: jax.Array, *, dtype=jnp.float32) -> jax.Array:
    return self.restore(lq, dtype=dtype).image


def _random_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
  """Kernels and codebooks N(0, 1/fan_in), biases 0, norm scales 1."""
  if name in ("kernel", "embedding"):
    fan_in = shape[-1] if name == "embedding" else int(np.prod(shape[:-1]))
    return rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))
  if name == "scale":
    return np.ones(shape, np.float32)
  if name == "bias":
    return np.zeros(shape, np.float32)
  raise ValueError(f"no random initialiser for parameter {name!r}")


def _param_name(path) -> str:
  """The parameter's attribute name from a pytree key path (skipping the Variable's own `.value`)."""
  return [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)][-1]


def build(config: OSDFaceConfig | str, *, seed: int = 0) -> OSDFace:
  """A randomly initialised model for a config or a preset name (``tiny``, ``sd21``, ``mini``).

  Parameters are drawn on the host with numpy, deterministically per seed: tracing the modules'
  own initialisers costs one compile per parameter shape eagerly, and a jitted initialiser of all
  979 M `sd21` parameters compiles for minutes on GPU.
  """
  graphdef, state = nnx.split(abstract(config))
  rng = np.random.default_rng(seed)
  state = jax.tree_util.tree_map_with_path(
    lambda path, x: jnp.asarray(_random_value(_param_name(path), x.shape, rng)), state
  )
  return nnx.merge(graphdef, state)


def abstract(config: OSDFaceConfig | str) -> OSDFace:
  """The model with ShapeDtypeStructs for parameters: nothing is allocated."""
  cfg = PRESETS[config] if isinstance(config, str) else config
  return nnx.eval_shape(lambda: OSDFace(cfg, rngs=nnx.Rngs(0)))


def count_params(module: nnx.Module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def parameter_counts(model: OSDFace) -> dict[str, int]:
  """Parameter counts per component (works on abstract models)."""
  counts = {
    "unet": count_params(model.unet),
    "vae": count_params(model.vae),
    "vae_encoder": count_params(model.vae.encoder),
    "vae_decoder": count_params(model.vae.decoder),
    "vre": count_params(model.vre),
    "embedding_change": count_params(model.embedding_change),
  }
  counts["total"] = counts["unet"] + counts["vae"] + counts["vre"] + counts["embedding_change"]
  return counts
