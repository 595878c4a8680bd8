"""Model configs: frozen dataclasses, the presets `tiny`, `sd21` and `mini`, diffusers config readers."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class UNetConfig:
  """An SD-2.x `UNet2DConditionModel` (the subset OSDFace uses)."""

  in_channels: int = 4  # latent channels in
  out_channels: int = 4  # predicted-noise channels out
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # width of each resolution level
  down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + (
    "DownBlock2D",
  )  # encoder blocks
  up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3  # decoder blocks
  layers_per_block: int = 2  # resnets per down block (up blocks have one more)
  num_attention_heads: tuple[int, ...] = (
    5,
    10,
    20,
    20,
  )  # heads per level (diffusers' attention_head_dim)
  cross_attention_dim: int = 1024  # width of encoder_hidden_states
  transformer_layers_per_block: int = 1  # BasicTransformerBlocks per Transformer2DModel
  use_linear_projection: bool = True  # Linear proj_in/proj_out (SD-2) instead of 1x1 convs (SD-1)
  norm_num_groups: int = 32  # GroupNorm groups
  norm_eps: float = 1e-5  # GroupNorm epsilon of the resnets and the output norm
  flip_sin_to_cos: bool = True  # timestep embedding order (cos, sin)
  freq_shift: int = 0  # timestep embedding downscale_freq_shift

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.block_out_channels[0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAEConfig:
  """An SD `AutoencoderKL`."""

  in_channels: int = 3  # image channels
  out_channels: int = 3  # decoded image channels
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # width per level; len-1 downsamples
  layers_per_block: int = 2  # resnets per encoder block (decoder blocks have one more)
  latent_channels: int = 4  # latent channels
  norm_num_groups: int = 32  # GroupNorm groups
  norm_eps: float = 1e-6  # GroupNorm epsilon
  scaling_factor: float = 0.18215  # latent scale applied after encode / undone before decode
  mid_block_add_attention: bool = True  # single-head attention in the mid blocks

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VREConfig:
  """The LQ encoder of OSDFace's VQ autoencoder plus its codebook (the visual representation embedder)."""

  in_channels: int = 3  # image channels
  ch: int = 64  # base width
  ch_mult: tuple[int, ...] = (
    1,
    2,
    2,
    2,
    4,
    8,
  )  # width multiplier per level; len-1 stride-2 downsamples
  num_res_blocks: int = 2  # resnets per level
  attn_resolutions: tuple[int, ...] = (16,)  # feature-map sizes that get a self-attention block
  resolution: int = 512  # input size the attention placement is computed for
  z_channels: int = 512  # encoder output channels
  embed_dim: int = 512  # codebook vector width (quant_conv maps z_channels to it)
  n_embed: int = 1024  # codebook entries
  num_tokens: int = 77  # prompt tokens selected per image
  norm_eps: float = 1e-6  # GroupNorm epsilon
  norm_num_groups: int = 32  # GroupNorm groups

  @property
  def token_grid(self) -> int:
    return self.resolution // 2 ** (len(self.ch_mult) - 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OSDFaceConfig:
  """The whole one-step restorer."""

  name: str = "sd21"  # preset name, for reports
  resolution: int = 512  # face crop size the model runs at
  unet: UNetConfig = UNetConfig()  # denoiser
  vae: VAEConfig = VAEConfig()  # latent autoencoder
  vre: VREConfig = VREConfig()  # visual prompt embedder
  embedding_hidden: int = 256  # embedding_change hidden width (Conv1d 512->256->1024)
  timestep: int = 399  # the one fixed timestep
  beta_start: float = 0.00085  # scaled-linear schedule start
  beta_end: float = 0.012  # scaled-linear schedule end
  num_train_timesteps: int = 1000  # schedule length

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> OSDFaceConfig:
    subs = {"unet": UNetConfig, "vae": VAEConfig, "vre": VREConfig}
    kwargs = {}
    for key, value in d.items():
      if key in subs:
        kwargs[key] = _dataclass_from_dict(subs[key], value)
      else:
        kwargs[key] = value
    return _dataclass_from_dict(cls, kwargs)


def _dataclass_from_dict(cls, d: Mapping[str, Any]):
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def unet_config_from_diffusers(d: Mapping[str, Any]) -> UNetConfig:
  """Reads a diffusers `unet/config.json` dict (attention_head_dim is the head count there)."""
  heads = d.get("num_attention_heads") or d["attention_head_dim"]
  n = len(d["block_out_channels"])
  heads = tuple(heads) if isinstance(heads, (list, tuple)) else (heads,) * n
  tlayers = d.get("transformer_layers_per_block", 1)
  if not isinstance(tlayers, int):
    raise ValueError(
      f"transformer_layers_per_block={tlayers!r}: only one value for all blocks is supported"
    )
  unsupported = {
    k: d[k]
    for k in ("class_embed_type", "addition_embed_type", "encoder_hid_dim")
    if d.get(k) is not None
  }
  if unsupported:
    raise ValueError(f"unet config: unsupported options {unsupported}")
  return UNetConfig(
    in_channels=d["in_channels"],
    out_channels=d["out_channels"],
    block_out_channels=tuple(d["block_out_channels"]),
    down_block_types=tuple(d["down_block_types"]),
    up_block_types=tuple(d["up_block_types"]),
    layers_per_block=d["layers_per_block"],
    num_attention_heads=heads,
    cross_attention_dim=d["cross_attention_dim"],
    transformer_layers_per_block=tlayers,
    use_linear_projection=d.get("use_linear_projection", False),
    norm_num_groups=d.get("norm_num_groups", 32),
    norm_eps=d.get("norm_eps", 1e-5),
    flip_sin_to_cos=d.get("flip_sin_to_cos", True),
    freq_shift=d.get("freq_shift", 0),
  )


def vae_config_from_diffusers(d: Mapping[str, Any]) -> VAEConfig:
  """Reads a diffusers `vae/config.json` dict."""
  return VAEConfig(
    in_channels=d["in_channels"],
    out_channels=d["out_channels"],
    block_out_channels=tuple(d["block_out_channels"]),
    layers_per_block=d["layers_per_block"],
    latent_channels=d["latent_channels"],
    norm_num_groups=d.get("norm_num_groups", 32),
    scaling_factor=d.get("scaling_factor", 0.18215),
    mid_block_add_attention=d.get("mid_block_add_attention", True),
  )


SD21 = OSDFaceConfig()

TINY = OSDFaceConfig(
  name="tiny",
  resolution=32,
  unet=UNetConfig(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    num_attention_heads=(2, 4),
    cross_attention_dim=48,
    norm_num_groups=8,
  ),
  vae=VAEConfig(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8),
  vre=VREConfig(
    ch=16,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(16,),
    resolution=32,
    z_channels=32,
    embed_dim=24,
    n_embed=64,
    norm_num_groups=8,
  ),
  embedding_hidden=16,
)

# A small OSDFace trained by this project on CelebA-HQ at 128 px (see configs/mini.py for training):
# 7.2 M parameters, so the fp16 weights (13.7 MiB) stay one file under 16 MiB. UNet 4.9 M on 32x32x4
# latents, VAE 1.7 M (f=4; narrow at full resolution, where its FLOPs are), VRE 0.56 M (16x16 token
# grid, 64-d codes), embedding_change 33 k.
MINI = OSDFaceConfig(
  name="mini",
  resolution=128,
  unet=UNetConfig(
    block_out_channels=(64, 96, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    num_attention_heads=(2, 3, 4),
    cross_attention_dim=192,
  ),
  vae=VAEConfig(block_out_channels=(32, 64, 96), layers_per_block=1, norm_num_groups=16),
  vre=VREConfig(
    ch=32,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(16,),
    resolution=128,
    z_channels=64,
    embed_dim=64,
    n_embed=512,
  ),
  embedding_hidden=128,
)

PRESETS: dict[str, OSDFaceConfig] = {"tiny": TINY, "sd21": SD21, "mini": MINI}
