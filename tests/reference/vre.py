"""A PyTorch VRE with the structure of OSDFace's release (``lq_embed``): `MultiHeadEncoder` with
`MultiHeadAttnBlock` (two GroupNorms, ``norm1`` used, ``norm2`` unused in self-attention),
``quant_conv``, the codebook, and the per-image token rule. Test-only code, written to the published
structure: the class and key names and the order of operations are OSDFace's, so a state dict of
these modules has the keys of ``associate_2.ckpt``.

Keys under ``vqvae_LQ.``: ``encoder.*``, ``quant_conv.*``, ``quantize.embedding.weight``; the full
checkpoint also holds the LQ ``decoder.*``, ``post_quant_conv.*`` and the HQ branch (`LightningVQ`).
"""

import torch
from torch import nn
from torch.nn import functional as F


def _norm(channels, groups):
  return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


def _swish(x):
  return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
  """taming's resnet without a time embedding (OSDFace builds it with temb_channels=0)."""

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


class MultiHeadAttnBlock(nn.Module):
  """OSDFace's attention block: ``norm1`` normalizes x; with a second input y (the decoder's
  cross-attention) ``norm2`` normalizes y, which gives the queries. Self-attention (y=None) takes
  q, k and v from norm1(x), so ``norm2`` is a checkpoint entry that the VRE never reads."""

  def __init__(self, c, groups, head_size=1):
    super().__init__()
    self.head_size, self.att_size = head_size, c // head_size
    self.norm1 = _norm(c, groups)
    self.norm2 = _norm(c, groups)
    self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

  def forward(self, x, y=None):
    h = self.norm1(x)
    y = h if y is None else self.norm2(y)
    q, k, v = self.q(y), self.k(h), self.v(h)
    b, c, hh, ww = q.shape
    heads = lambda t: t.reshape(b, self.head_size, self.att_size, hh * ww).permute(0, 1, 3, 2)
    q, k, v = heads(q) * self.att_size**-0.5, heads(k), heads(v)
    w_ = torch.softmax(q @ k.transpose(2, 3), dim=3)
    out = (w_ @ v).permute(0, 2, 1, 3).reshape(b, hh, ww, c).permute(0, 3, 1, 2)
    return x + self.proj_out(out)


class Downsample(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.conv = nn.Conv2d(c, c, 3, 2, 0)

  def forward(self, x):
    return self.conv(F.pad(x, (0, 1, 0, 1)))


class MultiHeadEncoder(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    groups, ch = cfg.norm_num_groups, cfg.ch
    self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
    in_mult = (1,) + tuple(cfg.ch_mult)
    res = cfg.resolution
    self.down = nn.ModuleList()
    for i, mult in enumerate(cfg.ch_mult):
      level = nn.Module()
      level.block, level.attn = nn.ModuleList(), nn.ModuleList()
      cin = ch * in_mult[i]
      for _ in range(cfg.num_res_blocks):
        level.block.append(ResnetBlock(cin, ch * mult, groups))
        cin = ch * mult
        if res in cfg.attn_resolutions:
          level.attn.append(MultiHeadAttnBlock(cin, groups))
      if i != len(cfg.ch_mult) - 1:
        level.downsample = Downsample(cin)
        res //= 2
      self.down.append(level)
    self.mid = nn.Module()
    self.mid.block_1 = ResnetBlock(cin, cin, groups)
    self.mid.attn_1 = MultiHeadAttnBlock(cin, groups)
    self.mid.block_2 = ResnetBlock(cin, cin, groups)
    self.norm_out = _norm(cin, groups)
    self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, 1, 1)

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
  def __init__(self, n_embed, embed_dim, num_tokens):
    super().__init__()
    self.num_tokens = num_tokens
    self.embedding = nn.Embedding(n_embed, embed_dim)
    self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

  def inference(self, z):
    """OSDFace's token rule for one image: z (1, D, h, w) -> (1, num_tokens, D).

    Positions sorted by the distance to their nearest code; walking that list, each code is kept the
    first time it appears until num_tokens are kept; rows past the unique codes stay zero.
    """
    z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    e = self.embedding.weight
    d = (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * z @ e.t()
    dist, idx = d.min(1)
    codes = []
    for p in torch.sort(dist, stable=True).indices.tolist():
      if int(idx[p]) not in codes:
        codes.append(int(idx[p]))
      if len(codes) == self.num_tokens:
        break
    one_hot = torch.zeros(self.num_tokens, e.shape[0], dtype=e.dtype)
    one_hot[torch.arange(len(codes)), codes] = 1.0
    return (one_hot @ e)[None]


class VQVAEencoder(nn.Module):
  """``encoder`` -> ``quant_conv`` -> ``quantize.inference``; the input is already normalized."""

  def __init__(self, cfg):
    super().__init__()
    self.encoder = MultiHeadEncoder(cfg)
    self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.num_tokens)
    self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)

  def latents(self, x):
    return self.quant_conv(self.encoder(x))

  def forward(self, x):
    return self.quantize.inference(self.latents(x))


class LQEmbedder(nn.Module):
  """OSDFace's ``vqvae_encoder`` wrapper: resize to the model's resolution (bilinear; the identity
  for aligned crops of that size), normalize once more, ``(x - 0.5) / 0.5``, although the input is
  already in [-1, 1], and run the encoder one image at a time (its token rule is per image)."""

  def __init__(self, cfg):
    super().__init__()
    self.resolution = cfg.resolution
    self.encoder = VQVAEencoder(cfg)

  def _normalized(self, lq):
    lq = F.interpolate(lq, size=(self.resolution,) * 2, mode="bilinear", align_corners=False)
    return (lq - 0.5) / 0.5

  def latents(self, lq):
    """(B, P, embed_dim) pre-quantization latents, positions in row-major order."""
    z = self.encoder.latents(self._normalized(lq))
    return z.permute(0, 2, 3, 1).reshape(z.shape[0], -1, z.shape[1])

  def load_release(self, state_dict):
    """OSDFace's loading: keys under ``vqvae_LQ.`` except its decoder, prefix stripped, strict=False."""
    kept = {
      k[len("vqvae_LQ.") :]: v
      for k, v in state_dict.items()
      if k.startswith("vqvae_LQ.") and not k.startswith("vqvae_LQ.decoder")
    }
    return self.encoder.load_state_dict(kept, strict=False)

  def forward(self, lq):
    x = self._normalized(lq)
    return torch.cat([self.encoder(x[i : i + 1]) for i in range(x.shape[0])])


class MultiHeadDecoder(nn.Module):
  """The part of the LQ branch's decoder that fixes its key names (the VRE never runs it)."""

  def __init__(self, cfg, width=32):
    super().__init__()
    groups = cfg.norm_num_groups
    self.conv_in = nn.Conv2d(cfg.embed_dim, width, 3, 1, 1)
    self.mid = nn.Module()
    self.mid.block_1 = ResnetBlock(width, width, groups)
    self.mid.attn_1 = MultiHeadAttnBlock(width, groups)
    self.mid.block_2 = ResnetBlock(width, width, groups)
    self.norm_out = _norm(width, groups)
    self.conv_out = nn.Conv2d(width, cfg.in_channels, 3, 1, 1)


class VQVAE(nn.Module):
  """One branch of the associate checkpoint: encoder, codebook, decoder."""

  def __init__(self, cfg):
    super().__init__()
    self.encoder = MultiHeadEncoder(cfg)
    self.decoder = MultiHeadDecoder(cfg)
    self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.num_tokens)
    self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
    self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)


class LightningVQ(nn.Module):
  """The Lightning module whose ``state_dict`` is saved in ``associate_2.ckpt``: an LQ and an HQ
  branch. ``from_lq_embedder`` puts a `LQEmbedder`'s weights into the LQ branch."""

  def __init__(self, cfg):
    super().__init__()
    self.vqvae_LQ = VQVAE(cfg)
    self.vqvae_HQ = VQVAE(cfg)

  @classmethod
  def from_lq_embedder(cls, cfg, embedder, seed=1):
    torch.manual_seed(seed)
    module = cls(cfg)
    missing, unexpected = module.vqvae_LQ.load_state_dict(
      embedder.encoder.state_dict(), strict=False
    )
    assert not unexpected and all(k.startswith(("decoder.", "post_quant_conv.")) for k in missing)
    return module.eval()
