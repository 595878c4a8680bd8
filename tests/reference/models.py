"""Tiny PyTorch twins of our configs (diffusers UNet/VAE, the OSDFace-structured VRE and
embedding_change), their weights moved into our models, and a fake OSDFace release on disk in the real
layout and key names."""

import argparse
import copy
import functools
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from flax import nnx
from safetensors.torch import save_file

from quantface_jax.convert import load_torch_state_dict
from quantface_jax.convert.release import VRE_PREFIX, VRE_RENAMES, vre_unused_reason
from quantface_jax.models import abstract
from reference.osdface import EmbeddingChange
from reference.vre import LightningVQ, LQEmbedder


def unet_diffusers_config(c):
  return dict(
    sample_size=8,
    in_channels=c.in_channels,
    out_channels=c.out_channels,
    down_block_types=list(c.down_block_types),
    up_block_types=list(c.up_block_types),
    block_out_channels=list(c.block_out_channels),
    layers_per_block=c.layers_per_block,
    attention_head_dim=list(c.num_attention_heads),
    cross_attention_dim=c.cross_attention_dim,
    use_linear_projection=c.use_linear_projection,
    norm_num_groups=c.norm_num_groups,
    norm_eps=c.norm_eps,
    flip_sin_to_cos=c.flip_sin_to_cos,
    freq_shift=c.freq_shift,
    transformer_layers_per_block=c.transformer_layers_per_block,
  )


def vae_diffusers_config(c):
  n = len(c.block_out_channels)
  return dict(
    in_channels=c.in_channels,
    out_channels=c.out_channels,
    down_block_types=["DownEncoderBlock2D"] * n,
    up_block_types=["UpDecoderBlock2D"] * n,
    block_out_channels=list(c.block_out_channels),
    layers_per_block=c.layers_per_block,
    latent_channels=c.latent_channels,
    norm_num_groups=c.norm_num_groups,
    scaling_factor=c.scaling_factor,
    sample_size=32,
  )


def randomize_(module, seed):
  """Norm scales 1 + N(0, 0.1²) and biases N(0, 0.1²), so that no parameter sits at a trivial init."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = 0.1 * torch.randn(p.shape, generator=gen)
      if name.endswith("bias"):
        p.copy_(noise)
      elif p.ndim == 1:
        p.copy_(1.0 + noise)
  return module.eval()


@functools.cache
def torch_models(cfg, seed=0):
  """dict(unet, vae, vre, embedding_change) of torch modules for an OSDFaceConfig, randomized, eval."""
  torch.manual_seed(seed)
  models = dict(
    unet=UNet2DConditionModel(**unet_diffusers_config(cfg.unet)),
    vae=AutoencoderKL(**vae_diffusers_config(cfg.vae)),
    vre=LQEmbedder(cfg.vre),
    embedding_change=EmbeddingChange(
      cfg.vre.embed_dim, cfg.embedding_hidden, cfg.unet.cross_attention_dim
    ),
  )
  for i, m in enumerate(models.values()):
    randomize_(m, seed + i)
  return models


def random_ours(cfg, seed=0):
  """Our model with N(0, 0.1²) parameters, filled into the abstract model (no slow eager init)."""
  model = abstract(cfg)
  rng = np.random.default_rng(seed)
  for _, variable in nnx.iter_graph(model):
    if isinstance(variable, nnx.Param):
      shape = variable.get_value().shape
      variable.set_value(jnp.asarray(0.1 * rng.standard_normal(shape), jnp.float32))
  return model


def load_vre(ours, ref):
  """Our VRE (in place) from the reference `LQEmbedder`, keyed as in associate_2.ckpt; the attention
  blocks' unused ``norm2`` is left out (the release converter accounts for it)."""
  state = {
    VRE_PREFIX + k: v
    for k, v in ref.encoder.state_dict().items()
    if vre_unused_reason(VRE_PREFIX + k) is None
  }
  return load_torch_state_dict(ours, state, prefix=VRE_PREFIX, renames=VRE_RENAMES)


def ours_from_torch(cfg, models):
  """Our OSDFace with the torch modules' weights, through the generic mapping."""
  model = abstract(cfg)
  for name in ("unet", "vae", "embedding_change"):
    load_torch_state_dict(getattr(model, name), models[name].state_dict())
  load_vre(model.vre, models["vre"])
  return model


def lora_unet(base, *, rank, alpha, targets, seed=0):
  """(a copy of ``base`` with an active peft LoRA whose A and B are both random, the LoRA as
  ``pytorch_lora_weights.safetensors`` holds it: ``unet.<module>.lora_A.weight`` ...)."""
  from peft import LoraConfig
  from peft.utils import get_peft_model_state_dict

  unet = copy.deepcopy(base)
  unet.add_adapter(
    LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights="gaussian")
  )
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in unet.named_parameters():
      if "lora_B" in name:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
  lora = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}
  return unet.eval(), lora


class HyperParameters(dict):
  """Stands in for Lightning's AttributeDict (a class the loader must not need)."""


def write_release(root, cfg, models, lora, *, weights="safetensors", lora_metadata=None):
  """Writes (sd_dir, osdface_dir) under ``root``: ``models`` as in `torch_models` (the UNet without
  LoRA), ``lora`` in the peft file format (`lora_unet`), diffusers weights as safetensors or .bin."""
  root = pathlib.Path(root)
  sd, osd = root / "sd21", root / "osdface"
  for name in ("unet", "vae"):
    (sd / name).mkdir(parents=True)
    (sd / name / "config.json").write_text(json.dumps(dict(models[name].config)))
    state = {k: v.contiguous() for k, v in models[name].state_dict().items()}
    if weights == "safetensors":
      save_file(state, str(sd / name / "diffusion_pytorch_model.safetensors"))
    else:
      torch.save(state, sd / name / "diffusion_pytorch_model.bin")
  (sd / "scheduler").mkdir()
  (sd / "scheduler" / "scheduler_config.json").write_text(
    json.dumps(
      dict(
        _class_name="DDPMScheduler",
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule="scaled_linear",
        num_train_timesteps=cfg.num_train_timesteps,
      )
    )
  )
  osd.mkdir()
  save_file(lora, str(osd / "pytorch_lora_weights.safetensors"), metadata=lora_metadata)
  vre_state = LightningVQ.from_lq_embedder(cfg.vre, models["vre"]).state_dict()
  torch.save(
    {
      "state_dict": vre_state,
      "hyper_parameters": HyperParameters(
        lr=1e-4, args=argparse.Namespace(use_pos_embedding=False, cat_prompt_embedding=False)
      ),
      "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}}],
      "epoch": 2,
    },
    osd / "associate_2.ckpt",
  )
  torch.save(models["embedding_change"].state_dict(), osd / "embedding_change_weights.pth")
  return sd, osd


def numpy_nchw(x):
  return np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2))


def rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
