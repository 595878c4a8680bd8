"""Our batched VRE against an OSDFace-structured PyTorch VRE run one image at a time (its token rule)."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from reference.models import load_vre, numpy_nchw, randomize_, rel_err
from reference.vre import LQEmbedder

from quantface_jax.models import TINY, VRE

CFG = dataclasses.replace(TINY.vre, n_embed=256)  # 256 codes: enough for 77 unique winners


def _pair(codebook):
  """(reference, ours) sharing random encoder weights and ``codebook(latents (N, D))``."""
  torch.manual_seed(0)
  ref = randomize_(LQEmbedder(CFG), seed=3)
  with torch.no_grad():
    latents = ref.latents(torch.from_numpy(numpy_nchw(_images(seed=1)))).reshape(-1, CFG.embed_dim)
    ref.encoder.quantize.embedding.weight.copy_(codebook(latents))
  ours = nnx.eval_shape(lambda: VRE(CFG, rngs=nnx.Rngs(0)))
  load_vre(ours, ref)
  return ref, ours


def _images(seed=0):
  return (
    np.random.default_rng(seed)
    .uniform(-1, 1, (3, CFG.resolution, CFG.resolution, 3))
    .astype(np.float32)
  )


def _spread(latents):
  """Codes at other images' latents plus noise: many distinct winners, distances far from rounding."""
  gen = torch.Generator().manual_seed(5)
  picks = latents[torch.randperm(latents.shape[0], generator=gen)[: CFG.n_embed]]
  return picks + 0.3 * latents.std() * torch.randn(picks.shape, generator=gen)


def _few_winners(latents):
  """Five codes near the latents, the rest far away: fewer than 77 unique codes can win."""
  codes = torch.full((CFG.n_embed, CFG.embed_dim), 100.0 * float(latents.std()))
  codes[:5] = _spread(latents)[:5]
  return codes


@pytest.mark.parametrize("codebook,many", [(_spread, True), (_few_winners, False)])
def test_tokens_identical_to_reference_loop(codebook, many):
  ref, ours = _pair(codebook)
  lq = _images()
  with torch.no_grad():
    want = ref(torch.from_numpy(numpy_nchw(lq))).numpy()
    want_latents = torch.cat(
      [ref.latents(torch.from_numpy(numpy_nchw(lq[i : i + 1]))) for i in range(3)]
    )
  got_latents, got = jax.jit(lambda x: (ours.encode(x), ours(x)))(lq)
  assert rel_err(got_latents, want_latents) <= 1e-4
  filled = (np.abs(want).sum(-1) > 0).sum(-1)
  assert (filled == CFG.num_tokens).all() if many else (filled < 6).all(), (
    filled
  )  # the case is exercised
  np.testing.assert_array_equal(np.asarray(got), want)


def test_attention_normalizes_with_norm1_and_never_reads_norm2():
  ref, ours = _pair(_spread)
  lq = torch.from_numpy(numpy_nchw(_images()))
  attn = ref.encoder.encoder.mid.attn_1
  with torch.no_grad():
    before = ref.latents(lq)
    attn.norm2.weight.mul_(3.0)
    attn.norm2.bias.add_(1.0)
    assert torch.equal(ref.latents(lq), before)  # norm2 is dead in self-attention
    attn.norm1.bias.add_(0.5)
    after = ref.latents(lq)
  assert rel_err(after, before) > 1e-3  # norm1 is live
  load_vre(ours, ref)
  got = jax.jit(ours.encode)(_images())
  assert rel_err(got, after) <= 1e-4


def test_osdface_size_release_keys_map_one_to_one():
  """At OSDFace's own VRE size, every key of the LQ encoder maps to ours (shapes too), except the
  attention blocks' norm2, which the release converter reports as unused."""
  from quantface_jax.convert.release import VRE_PREFIX, VRE_RENAMES, vre_unused_reason
  from quantface_jax.convert.torch_to_nnx import key_mismatch, torch_shapes
  from quantface_jax.models.configs import VREConfig

  cfg = VREConfig()
  theirs = {VRE_PREFIX + k: tuple(v.shape) for k, v in LQEmbedder(cfg).encoder.state_dict().items()}
  unused = [k for k in theirs if vre_unused_reason(k)]
  assert len(unused) == 6 and all(".norm2." in k for k in unused)  # 3 blocks, weight + bias
  ours = torch_shapes(
    nnx.eval_shape(lambda: VRE(cfg, rngs=nnx.Rngs(0))), prefix=VRE_PREFIX, renames=VRE_RENAMES
  )
  assert key_mismatch(ours, {k: s for k, s in theirs.items() if k not in unused}) == []
