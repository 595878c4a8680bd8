"""Full-precision training of a small OSDFace from scratch, in stages (`mini`, docs/design.md §4).

- ``vae``:  the autoencoder reconstructs HQ faces: L1 + Sobel L1 + a small KL on the posterior.
- ``vre``:  VRE encoder + quant_conv + codebook as a VQ autoencoder: LQ in, HQ out through a small
            training-only conv decoder; codebook + commitment losses with straight-through gradients,
            codebook initialised from encoder outputs of the first batch and every code pulled
            towards its nearest encoder output (`code_pull`), against codebook collapse.
- ``unet``: the one-step restorer: LQ -> encode (mean) -> UNet at t=399 with the VRE prompt ->
            z_H -> decode; latent MSE to scaled encode(HQ) + pixel L1 + Sobel L1 (+ VRE feature loss).
            UNet + embedding_change train (+ the VAE encoder if configured); decoder and VRE frozen.
- ``joint``: the ``unet`` stage's job with the VAE decoder unfrozen too (only the VRE stays frozen),
            weighted towards the pixel losses: end-to-end fine-tuning for fidelity (PSNR).

Images in batches are (B, R, R, 3) in [-1, 1] under keys ``lq`` and ``hq``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from quantface_jax.data import datasets as data_lib
from quantface_jax.data import io as image_io
from quantface_jax.data import pipeline
from quantface_jax.data.degrade import DegradationConfig
from quantface_jax.models.layers import Conv2d, GroupNorm, silu
from quantface_jax.models.osdface import OSDFace
from quantface_jax.models.unet import ResnetBlock2D, Upsample2D
from quantface_jax.models.vre import VRE
from quantface_jax.train import losses, trainer
from quantface_jax.train.trainer import Stage

STAGES = ("vae", "vre", "unet", "joint")


# ----------------------------------------------------------------------------------------------- data


class HQOnly:
  """A `HQFolderDataset` view that loads only the HQ face (no degradation work): items are (hq,)."""

  def __init__(self, dataset: data_lib.HQFolderDataset):
    self.dataset = dataset

  def __len__(self) -> int:
    return len(self.dataset)

  def load(self, index: int, epoch: int = 0) -> tuple[np.ndarray]:
    del epoch
    return (image_io.read_image(self.dataset.files[index], self.dataset.size),)


def _degrade_epoch_chunk(
  dataset: data_lib.HQFolderDataset, epoch: int, indices: list[int]
) -> np.ndarray:
  return np.stack([dataset.load(i, epoch)[0] for i in indices]).astype(np.float16)


class DegradedCache:
  """(lq, hq) pairs whose LQs are precomputed for `epochs` degradation epochs in worker processes.

  Item i of epoch e is `dataset.load(i, e % epochs)` (LQ stored as float16), so the pairs recycle
  `epochs` independent degradations of every face. Building starts at construction and runs in the
  background; the first `load` waits for it.
  """

  def __init__(
    self, dataset: data_lib.HQFolderDataset, *, epochs: int, workers: int, chunk: int = 64
  ):
    self.dataset = dataset
    self.epochs = epochs
    n = len(dataset)
    self._pool = concurrent.futures.ProcessPoolExecutor(
      max(1, workers), mp_context=multiprocessing.get_context("spawn")
    )
    self._futures = [
      [
        self._pool.submit(_degrade_epoch_chunk, dataset, e, list(range(s, min(s + chunk, n))))
        for s in range(0, n, chunk)
      ]
      for e in range(epochs)
    ]
    self._lq: np.ndarray | None = None
    self._hq: np.ndarray | None = None
    self._lock = threading.Lock()  # loader threads call load() concurrently; one of them gathers

  def _ready(self) -> None:
    with self._lock:
      if self._hq is None:
        self._lq = np.stack(
          [np.concatenate([f.result() for f in per_epoch]) for per_epoch in self._futures]
        )
        self._pool.shutdown()
        self._hq = np.stack([image_io.read_image(f, self.dataset.size) for f in self.dataset.files])

  def __len__(self) -> int:
    return len(self.dataset)

  def load(self, index: int, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
    self._ready()
    return self._lq[epoch % self.epochs, index].astype(np.float32), self._hq[index]


def degradation_config(cfg: ml_collections.ConfigDict) -> DegradationConfig:
  return DegradationConfig(
    blur_sigma=tuple(cfg.blur_sigma),
    downsample=tuple(cfg.downsample),
    noise_sigma=tuple(cfg.noise_sigma),
    jpeg_quality=tuple(cfg.jpeg_quality),
  )


def pair_dataset(
  config: ml_collections.ConfigDict, indices, *, hflip: bool = False
) -> data_lib.HQFolderDataset:
  """(lq, hq) pairs of `indices`, mirrored at random when `hflip`."""
  return data_lib.HQFolderDataset(
    config.data.root,
    config.model_resolution,
    indices=list(indices),
    degradation=degradation_config(config.data.degradation),
    seed=config.data.degradation_seed,
    hflip=hflip,
  )


def train_dataset(config: ml_collections.ConfigDict) -> data_lib.HQFolderDataset:
  """The training pairs (`data.train_range`) with the config's augmentation."""
  return pair_dataset(config, range(*config.data.train_range), hflip=config.data.hflip)


def _to_model_range(fields: tuple[np.ndarray, ...], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  return {k: v * 2.0 - 1.0 for k, v in zip(keys, fields)}


def training_pairs(config: ml_collections.ConfigDict, train: data_lib.HQFolderDataset):
  """(pairs, processes): the (lq, hq) training pairs, precomputed for `data.lq_epochs` degradation
  epochs (`DegradedCache`, served from memory by threads) or, with 0, degraded on the fly by loader
  processes (threads degrading beside the training loop would slow its dispatch, and so would the
  loop's own thread: benchmarks/bench_loader.py)."""
  if config.data.lq_epochs:
    return DegradedCache(train, epochs=config.data.lq_epochs, workers=config.data.workers), False
  return train, True


def batch_stream(
  dataset,
  keys: tuple[str, ...],
  batch_size: int,
  *,
  seed: int,
  workers: int,
  processes: bool = False,
) -> Callable[[int], object]:
  """start_step -> grain iterator of {key: (b, R, R, 3) in [-1, 1]}: this process's rows of each
  global batch of `batch_size` (`pipeline.batch_dataset`), loaded by `workers` grain worker
  processes with `processes`, else by as many threads."""
  ds = pipeline.batch_dataset(
    dataset,
    batch_size,
    seed=seed,
    workers=workers,
    processes=processes,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    transform=functools.partial(_to_model_range, keys=keys),
  )
  return functools.partial(pipeline.iterator_from_step, ds)


def val_batches(config: ml_collections.ConfigDict) -> list[dict[str, np.ndarray]]:
  """The fixed validation set (epoch-0 degradations), in batches, in memory (all of it in every
  process)."""
  start = config.data.val_start
  dataset = pair_dataset(config, range(start, start + config.data.num_val))
  ds = pipeline.batch_dataset(
    dataset,
    config.data.val_batch_size,
    shuffle=False,
    drop_remainder=False,
    num_epochs=1,
    workers=config.data.workers,
    transform=functools.partial(_to_model_range, keys=("lq", "hq")),
  )
  return list(ds)


# --------------------------------------------------------------------------------------------- stages


def _dtype(cfg) -> jnp.dtype:
  return jnp.dtype(cfg.compute_dtype)


def _to_unit(x: jax.Array) -> jax.Array:
  return jnp.clip(x.astype(jnp.float32), -1.0, 1.0) * 0.5 + 0.5


def _pixel_terms(pred: jax.Array, hq: jax.Array) -> dict[str, jax.Array]:
  return {
    "l1": losses.l1(pred, hq),
    "mse": losses.mse(pred, hq),
    "sobel": losses.sobel_l1(pred, hq),
  }


def vae_stage(model: OSDFace, config, train_stream, val) -> Stage:
  w, dtype = config.stage.vae.weights, _dtype(config)

  def loss_fn(model: OSDFace, batch, rng):
    mean, logvar = model.vae.encode_moments(batch["hq"].astype(dtype))
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    recon = model.vae.decode(z.astype(dtype)).astype(jnp.float32)
    terms = {
      **_pixel_terms(recon, batch["hq"]),
      "kl": 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar),
    }
    return losses.weighted_sum(terms, w), terms

  def eval_fn(model: OSDFace, batch):
    recon = model.vae.decode(model.vae.encode(batch["hq"].astype(dtype))).astype(jnp.float32)
    return {"psnr": losses.psnr(_to_unit(recon), _to_unit(batch["hq"]))}

  return Stage(
    name="vae",
    module=model,
    trainable=nnx.PathContains("vae"),
    loss_fn=loss_fn,
    eval_fn=eval_fn,
    train_batches=train_stream,
    val_batches=val,
  )


class TokenDecoder(nnx.Module):
  """Training-only decoder of the VRE stage: (B, g, g, embed_dim) codes -> (B, g·2^L, g·2^L, 3)."""

  def __init__(self, embed_dim: int, widths: tuple[int, ...], *, groups: int, rngs: nnx.Rngs):
    self.conv_in = Conv2d(embed_dim, widths[0], 3, padding=1, rngs=rngs)
    kw = dict(temb_channels=None, groups=groups, eps=1e-6, rngs=rngs)
    self.blocks = nnx.List(
      [ResnetBlock2D(widths[max(i - 1, 0)], w, **kw) for i, w in enumerate(widths)]
    )
    self.upsamplers = nnx.List([Upsample2D(w, rngs=rngs) for w in widths[:-1]])
    self.norm_out = GroupNorm(groups, widths[-1], eps=1e-6)
    self.conv_out = Conv2d(widths[-1], 3, 3, padding=1, rngs=rngs)

  def __call__(self, codes: jax.Array) -> jax.Array:
    x = self.conv_in(codes)
    for i, block in enumerate(self.blocks):
      x = block(x)
      if i < len(self.upsamplers):
        x = self.upsamplers[i](x)
    return self.conv_out(silu(self.norm_out(x)))


class VQAutoencoder(nnx.Module):
  """The VRE as a VQ autoencoder for its training stage: vre (kept) + decoder (dropped after)."""

  def __init__(self, vre: VRE, *, decoder_widths: tuple[int, ...], rngs: nnx.Rngs):
    cfg = vre.config
    if 2 ** (len(decoder_widths) - 1) * cfg.token_grid != cfg.resolution:
      raise ValueError(
        f"decoder_widths {decoder_widths}: need {len(cfg.ch_mult)} levels to reach {cfg.resolution} px"
      )
    self.vre = vre
    self.decoder = TokenDecoder(
      cfg.embed_dim, decoder_widths, groups=cfg.norm_num_groups, rngs=rngs
    )

  def __call__(self, lq: jax.Array, dtype=jnp.float32):
    """(reconstruction (B, R, R, 3), encoder latents z (B, P, D), chosen codes (B, P, D), code ids (B, P))."""
    z = self.vre.encode(lq)
    idx, _ = self.vre.quantize.nearest(z)
    codes = self.vre.quantize.embedding.embedding[...][idx]
    quantized = z + jax.lax.stop_gradient(codes - z)  # straight-through
    g = self.vre.config.token_grid
    recon = self.decoder(quantized.reshape(z.shape[0], g, g, z.shape[-1]).astype(dtype))
    return recon.astype(jnp.float32), z, codes, idx


def init_codebook(vre: VRE, lq: jax.Array, seed: int) -> None:
  """Sets the codebook to distinct encoder outputs of `lq` (B·P >= n_embed vectors, drawn without replacement)."""
  z = np.asarray(jax.jit(lambda m, x: m.encode(x))(vre, jnp.asarray(lq)))
  z = z.reshape(-1, z.shape[-1])
  n = vre.config.n_embed
  picks = np.random.default_rng(seed).choice(len(z), size=n, replace=len(z) < n)
  vre.quantize.embedding.embedding[...] = jnp.asarray(z[picks], jnp.float32)


def code_pull(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Mean over codes of the squared distance (per dim) to the nearest encoder output in the batch.

  z: (B, P, D), codebook: (K, D). Pulls every code, used or not, towards the data, so codes the
  encoder has drifted away from come back into use (against codebook collapse).
  """
  z = z.reshape(-1, z.shape[-1])
  d = (
    jnp.sum(codebook * codebook, -1)[:, None]
    + jnp.sum(z * z, -1)[None]
    - 2.0 * jnp.dot(codebook, z.T, precision=jax.lax.Precision.HIGHEST)
  )
  return jnp.mean(jnp.min(d, axis=1)) / z.shape[-1]


def vre_stage(model: OSDFace, config, train_stream, val, *, init_codes: bool = True) -> Stage:
  """`init_codes`: start the codebook from encoder outputs of the first batch (a compiled pass)."""
  scfg = config.stage.vre
  w, dtype = scfg.weights, _dtype(config)
  module = VQAutoencoder(
    model.vre, decoder_widths=tuple(scfg.decoder_widths), rngs=nnx.Rngs(config.seed + 1)
  )
  if init_codes:
    init_codebook(model.vre, next(train_stream(0))["lq"], config.seed)

  def loss_fn(module: VQAutoencoder, batch, rng):
    del rng
    recon, z, codes, idx = module(batch["lq"], dtype)
    counts = jnp.zeros((module.vre.config.n_embed,), jnp.float32).at[idx.reshape(-1)].add(1.0)
    p = counts / counts.sum()
    terms = {
      **_pixel_terms(recon, batch["hq"]),
      "codebook": losses.mse(jax.lax.stop_gradient(z), codes),
      "commit": losses.mse(z, jax.lax.stop_gradient(codes)),
      "code_pull": code_pull(
        jax.lax.stop_gradient(z), module.vre.quantize.embedding.embedding[...]
      ),
    }
    usage = {
      "codes_used": jnp.sum(counts > 0).astype(jnp.float32),
      "perplexity": jnp.exp(-jnp.sum(p * jnp.log(p + 1e-10))),
    }
    return losses.weighted_sum(terms, w), {**terms, **usage}

  def eval_fn(module: VQAutoencoder, batch):
    recon = module(batch["lq"], dtype)[0]
    return {"psnr": losses.psnr(_to_unit(recon), _to_unit(batch["hq"]))}

  return Stage(
    name="vre",
    module=module,
    trainable=nnx.Param,
    loss_fn=loss_fn,
    eval_fn=eval_fn,
    train_batches=train_stream,
    val_batches=val,
  )


def unet_stage(model: OSDFace, config, train_stream, val, *, name: str = "unet") -> Stage:
  """The one-step restorer's stage; `name` picks its config (``unet`` or ``joint``)."""
  scfg = config.stage[name]
  w, dtype = scfg.weights, _dtype(config)
  scale = model.config.vae.scaling_factor

  def loss_fn(model: OSDFace, batch, rng):
    del rng
    out = model.restore(batch["lq"], dtype=dtype)
    target = jax.lax.stop_gradient(
      model.vae.encode(batch["hq"].astype(dtype)).astype(jnp.float32) * scale
    )
    restored = out.image * 2.0 - 1.0
    terms = {"latent": losses.mse(out.z_high, target), **_pixel_terms(restored, batch["hq"])}
    if float(w.feature):
      terms["feature"] = losses.feature_loss(
        model.vre.encoder, restored, batch["hq"], kind=scfg.feature_kind
      )
    return losses.weighted_sum(terms, w), terms

  def eval_fn(model: OSDFace, batch):
    hq = _to_unit(batch["hq"])
    return {
      "psnr": losses.psnr(model.restore(batch["lq"], dtype=dtype).image, hq),
      "psnr_input": losses.psnr(_to_unit(batch["lq"]), hq),
    }

  parts = [nnx.PathContains("unet"), nnx.PathContains("embedding_change")]
  vae_parts = (["encoder", "quant_conv"] if scfg.train_vae_encoder else []) + (
    ["decoder", "post_quant_conv"] if scfg.get("train_vae_decoder", False) else []
  )
  if vae_parts:
    parts.append(nnx.All(nnx.PathContains("vae"), nnx.Any(*map(nnx.PathContains, vae_parts))))
  return Stage(
    name=name,
    module=model,
    trainable=nnx.Any(*parts),
    loss_fn=loss_fn,
    eval_fn=eval_fn,
    train_batches=train_stream,
    val_batches=val,
  )


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The trainer's view of one stage: config.train updated with config.stage[name]."""
  merged = ml_collections.ConfigDict(config.train.to_dict())
  merged.update(config.stage[name].to_dict())
  merged.seed = config.seed
  return merged


def describe_stages(model: OSDFace, config: ml_collections.ConfigDict) -> str:
  """`trainer.describe_stage` of every stage in config.stages, from `model`, with nothing compiled
  (the VRE codebook keeps its initial codes; pairs are degraded on the fly)."""
  train = train_dataset(config)
  stages = []
  for name in config.stages:
    scfg = stage_config(config, name)
    dataset, keys = (HQOnly(train), ("hq",)) if name == "vae" else (train, ("lq", "hq"))
    stream = batch_stream(dataset, keys, scfg.batch_size, seed=0, workers=config.data.workers)
    if name == "vre":
      stage = vre_stage(model, config, stream, [], init_codes=False)
    elif name == "vae":
      stage = vae_stage(model, config, stream, [])
    else:
      stage = unet_stage(model, config, stream, [], name=name)
    stages.append(trainer.describe_stage(stage, scfg))
  return "\n".join(stages)
