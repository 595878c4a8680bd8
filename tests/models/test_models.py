"""Shapes, parameter counts and the token rule of the Flax models (parity with PyTorch: test_parity_*)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantface_jax.models import (
  SD21,
  TINY,
  abstract,
  alpha_cumprod,
  parameter_counts,
  select_tokens,
)


def test_sd21_parameter_counts_match_release():
  counts = parameter_counts(abstract("sd21"))
  assert counts["unet"] == 865_910_724
  assert counts["vae"] == 83_653_863
  assert counts["vae_encoder"] == 34_163_592
  assert counts["vae_decoder"] == 49_490_179


def test_alpha_cumprod_at_399():
  assert alpha_cumprod(SD21) == pytest.approx(0.42609, abs=1e-5)


def test_tiny_restore_shapes_and_range(tiny_model):
  lq = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  out = jax.jit(lambda x: tiny_model.restore(x))(lq)
  r = TINY.vae.downsample_factor
  assert out.image.shape == (2, 32, 32, 3)
  assert out.z_high.shape == (2, 32 // r, 32 // r, TINY.vae.latent_channels)
  assert out.prompt.shape == (2, TINY.vre.num_tokens, TINY.unet.cross_attention_dim)
  assert float(out.image.min()) >= 0.0 and float(out.image.max()) <= 1.0


def _select_tokens_loop(idx, dist, k):
  """The reference rule for one image, as a plain loop."""
  codes = []
  for p in np.argsort(dist, kind="stable"):
    if idx[p] not in codes:
      codes.append(int(idx[p]))
    if len(codes) == k:
      break
  return codes


@pytest.mark.parametrize("n_codes", [3, 40, 500])
def test_select_tokens_matches_loop(n_codes):
  rng = np.random.default_rng(n_codes)
  idx = rng.integers(0, n_codes, size=(4, 256)).astype(np.int32)
  dist = rng.random((4, 256)).astype(np.float32)
  codes, valid = select_tokens(jnp.asarray(idx), jnp.asarray(dist), 77)
  for b in range(4):
    expected = _select_tokens_loop(idx[b], dist[b], 77)
    n = len(expected)
    assert np.asarray(valid[b]).sum() == n and bool(np.all(np.asarray(valid[b])[:n]))
    assert np.asarray(codes[b])[:n].tolist() == expected
