"""Our batched VRE against the PyTorch reference run one image at a time (DESIGN §1 token rule)."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from reference.models import load_vre, numpy_nchw, randomize_, rel_err
from reference.vre import VRE as ReferenceVRE

from quantface_jax.models import TINY, VRE

CFG = dataclasses.replace(TINY.vre, n_embed=256)  # 256 codes: enough for 77 unique winners


def _pair(codebook):
  """(reference, ours) sharing random encoder weights and ``codebook(latents (N, D))``."""
  torch.manual_seed(0)
  ref = randomize_(ReferenceVRE(CFG), seed=3)
  with torch.no_grad():
    latents = ref.latents(torch.from_numpy(numpy_nchw(_images(seed=1)))).reshape(-1, CFG.embed_dim)
    ref.quantize.embedding.weight.copy_(codebook(latents))
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
