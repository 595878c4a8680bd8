"""A PyTorch VRE written from DESIGN §1: taming-transformers' `Encoder`, `quant_conv`, the codebook, and
the reference's per-image token rule (batch 1 in a python loop). Test-only code.

Key names are those of `associate_2.ckpt` under `vqvae_LQ.`: ``encoder.*``, ``quant_conv.*``,
``quantize.embedding.weight``.
"""

import torch
from torch import nn
from torch.nn import functional as F


def _norm(channels, groups):
  return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


def _swish(x):
  return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
  def __init__(self, cin, cout, groups):
    super().__init__()
    self.norm1 = _norm(cin, groups)
    self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
    self.norm2 = _norm(cout, groups)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
    if cin != cout:
      self.nin_shortcut = nn.Conv2d(cin, cout, 1)

  def forward(self, x):
    h = self.conv1(_swish(self.norm1(x)))
    h = self.conv2(_swish(self.norm2(h)))
    return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
  def __init__(self, c, groups):
    super().__init__()
    self.norm = _norm(c, groups)
    self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

  def forward(self, x):
    h = self.norm(x)
    q, k, v = self.q(h), self.k(h), self.v(h)
    b, c, hh, ww = q.shape
    q = q.reshape(b, c, hh * ww).permute(0, 2, 1)
    w_ = torch.softmax(torch.bmm(q, k.reshape(b, c, hh * ww)) * c**-0.5, dim=2)
    h = torch.bmm(v.reshape(b, c, hh * ww), w_.permute(0, 2, 1)).reshape(b, c, hh, ww)
    return x + self.proj_out(h)


class Downsample(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.conv = nn.Conv2d(c, c, 3, 2, 0)

  def forward(self, x):
    return self.conv(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
  def __init__(
    self,
    *,
    in_channels,
    ch,
    ch_mult,
    num_res_blocks,
    attn_resolutions,
    resolution,
    z_channels,
    groups,
  ):
    super().__init__()
    self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
    in_mult = (1,) + tuple(ch_mult)
    res = resolution
    self.down = nn.ModuleList()
    for i, mult in enumerate(ch_mult):
      level = nn.Module()
      level.block, level.attn = nn.ModuleList(), nn.ModuleList()
      cin = ch * in_mult[i]
      for _ in range(num_res_blocks):
        level.block.append(ResnetBlock(cin, ch * mult, groups))
        cin = ch * mult
        if res in attn_resolutions:
          level.attn.append(AttnBlock(cin, groups))
      if i != len(ch_mult) - 1:
        level.downsample = Downsample(cin)
        res //= 2
      self.down.append(level)
    self.mid = nn.Module()
    self.mid.block_1, self.mid.attn_1, self.mid.block_2 = (
      ResnetBlock(cin, cin, groups),
      AttnBlock(cin, groups),
      ResnetBlock(cin, cin, groups),
    )
    self.norm_out = _norm(cin, groups)
    self.conv_out = nn.Conv2d(cin, z_channels, 3, 1, 1)

  def forward(self, x):
    h = self.conv_in(x)
    for level in self.down:
      for j, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
          h = level.attn[j](h)
      if hasattr(level, "downsample"):
        h = level.downsample(h)
    h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
    return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
  def __init__(self, n_embed, embed_dim):
    super().__init__()
    self.embedding = nn.Embedding(n_embed, embed_dim)
    self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)


class VRE(nn.Module):
  """lq (B, 3, R, R) in [-1, 1] -> tokens (B, num_tokens, embed_dim), one image at a time."""

  def __init__(self, cfg):
    super().__init__()
    self.num_tokens = cfg.num_tokens
    self.encoder = Encoder(
      in_channels=cfg.in_channels,
      ch=cfg.ch,
      ch_mult=cfg.ch_mult,
      num_res_blocks=cfg.num_res_blocks,
      attn_resolutions=cfg.attn_resolutions,
      resolution=cfg.resolution,
      z_channels=cfg.z_channels,
      groups=cfg.norm_num_groups,
    )
    self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
    self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)

  def latents(self, lq):
    """(1, P, embed_dim) pre-quantization latents, positions in row-major order."""
    z = self.quant_conv(self.encoder((lq - 0.5) / 0.5))
    return z.permute(0, 2, 3, 1).reshape(z.shape[0], -1, z.shape[1])

  def tokens_one(self, z):
    """The DESIGN §1 rule for one image: z (P, D) -> (num_tokens, D)."""
    e = self.quantize.embedding.weight
    d = (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * z @ e.t()
    dist, idx = d.min(1)
    codes = []
    for p in torch.argsort(dist, stable=True).tolist():
      if int(idx[p]) not in codes:
        codes.append(int(idx[p]))
      if len(codes) == self.num_tokens:
        break
    out = torch.zeros(self.num_tokens, e.shape[1], dtype=e.dtype, device=e.device)
    out[: len(codes)] = e[codes]
    return out

  def forward(self, lq):
    return torch.stack(
      [self.tokens_one(self.latents(lq[i : i + 1])[0]) for i in range(lq.shape[0])]
    )
