"""OSDFace's one-step pipeline in PyTorch (its ``OSDFace_test.forward``; docs/design.md §1):
diffusers UNet/VAE, the OSDFace-structured VRE of `reference.vre`, embedding_change. One departure:
the VAE latent is the distribution's mean where OSDFace draws a sample, so outputs are comparable."""

import torch
from torch import nn
from torch.nn import functional as F


class EmbeddingChange(nn.Module):
  """OSDFace's TwoLayerConv1x1 over (B, tokens, C): Conv1d(k=1) -> SiLU -> Conv1d(k=1) -> SiLU."""

  def __init__(self, cin, hidden, cout):
    super().__init__()
    self.conv1 = nn.Conv1d(cin, hidden, 1)
    self.conv2 = nn.Conv1d(hidden, cout, 1)

  def forward(self, tokens):
    x = F.silu(self.conv2(F.silu(self.conv1(tokens.permute(0, 2, 1)))))
    return x.permute(0, 2, 1)


def alpha_cumprod(cfg):
  betas = (
    torch.linspace(
      cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps, dtype=torch.float64
    )
    ** 2
  )
  return torch.cumprod(1.0 - betas, 0)[cfg.timestep]


@torch.no_grad()
def restore(cfg, vre, embedding_change, vae, unet, lq):
  """lq (B, 3, R, R) in [-1, 1] -> (image (B, 3, R, R) in [0, 1], tokens (B, 77, embed_dim))."""
  tokens = vre(lq)
  prompt = embedding_change(tokens)
  scale = vae.config.scaling_factor
  z_low = vae.encode(lq).latent_dist.mean * scale
  eps = unet(z_low, cfg.timestep, encoder_hidden_states=prompt).sample
  a = alpha_cumprod(cfg)
  z_high = (z_low.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
  decoded = vae.decode((z_high / scale).float()).sample
  return decoded.clamp(-1, 1) * 0.5 + 0.5, tokens
