import jax.numpy as jnp
import numpy as np
import pytest

from quantface_jax.kernels import Epilogue, GemmBlocks, int_matmul, pack_weight
from quantface_jax.kernels.reference import int_matmul_ref

SMALL = GemmBlocks(block_m=32, block_n=32, block_k=32)
VARIANT_BITS = {"w8a8": (8, 8), "w4a8": (4, 8), "w4a4": (4, 4), "w6a6": (6, 6)}


def _codes(rng, bits, shape):
  half = 2 ** (bits - 1)
  return rng.integers(-half, half, shape).astype(np.int8)


def _problem(m, k, n, variant, *, per_token=True, zero=False, bias=False, rank=0):
  rng = np.random.default_rng()
  w_bits, a_bits = VARIANT_BITS[variant]
  w_codes = _codes(rng, w_bits, (k, n))
  kw = dict(
    a_scale=rng.uniform(0.01, 0.1, m if per_token else ()).astype(np.float32),
    w_scale=rng.uniform(0.001, 0.01, n).astype(np.float32),
  )
  if zero:
    kw.update(
      a_zero=rng.integers(-3, 4, m if per_token else ()).astype(np.int32),
      w_colsum=w_codes.astype(np.int32).sum(0),
    )
  if bias:
    kw.update(bias=rng.standard_normal(n).astype(np.float32))
  if rank:
    kw.update(
      lowrank_x=rng.standard_normal((m, rank)).astype(np.float32),
      lowrank_l2=rng.standard_normal((rank, n)).astype(np.float32),
    )
  return _codes(rng, a_bits, (m, k)), pack_weight(jnp.asarray(w_codes), w_bits), Epilogue(**kw)


def _check(xq, w, epilogue, backend, blocks=SMALL):
  ref = np.asarray(int_matmul_ref(xq, w, epilogue))
  got = np.asarray(int_matmul(jnp.asarray(xq), w, epilogue, backend=backend, blocks=blocks))
  np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("backend", ["interpret", "xla"])
@pytest.mark.parametrize("variant", ["w8a8", "w4a8", "w4a4", "w6a6"])
@pytest.mark.parametrize("m,k,n", [(77, 96, 48), (130, 99, 80)])
def test_variants_full_epilogue_exact(backend, variant, m, k, n):
  """Odd M, K and N not multiples of the blocks (padded), zero points, bias, low-rank branch."""
  xq, w, epilogue = _problem(m, k, n, variant, zero=True, bias=True, rank=5)
  _check(xq, w, epilogue, backend)


@pytest.mark.parametrize(
  "epilogue",
  [
    dict(),
    dict(zero=True),
    dict(bias=True),
    dict(rank=16),
    dict(per_token=False),
    dict(per_token=False, zero=True),
  ],
)
def test_epilogue_terms_exact(epilogue):
  xq, w, epilogue = _problem(40, 64, 64, "w4a8", **epilogue)
  _check(xq, w, epilogue, "interpret")


@pytest.mark.parametrize("k,n", [(320, 640), (640, 1280), (1024, 320)])
@pytest.mark.parametrize("variant", ["w8a8", "w4a4"])
def test_unet_shapes_exact(variant, k, n):
  xq, w, epilogue = _problem(16, k, n, variant, bias=True)
  _check(xq, w, epilogue, "interpret", GemmBlocks(block_m=16, block_n=128, block_k=64))


def test_auto_backend_matches_reference():
  xq, w, epilogue = _problem(33, 70, 24, "w4a8", zero=True, bias=True)
  _check(xq, w, epilogue, "auto")
