import jax.numpy as jnp
import numpy as np
import pytest

from quantface_jax.kernels.packing import pack_int4, pack_weight, unpack_int4, unpack_weight


@pytest.mark.parametrize("shape", [(5, 8), (3, 7), (1, 1), (4, 2, 33)])
def test_int4_round_trip(shape):
  codes = np.random.default_rng().integers(-8, 8, shape).astype(np.int8)
  packed = pack_int4(jnp.asarray(codes))
  assert packed.dtype == jnp.uint8
  assert packed.shape == (*shape[:-1], (shape[-1] + 1) // 2)
  np.testing.assert_array_equal(unpack_int4(packed, shape[-1]), codes)


def test_int4_nibble_order():
  # even index -> low nibble, odd index -> high nibble, two's complement; odd K pads a 0 nibble.
  packed = pack_int4(jnp.asarray([[1, -2, 7, -8, -1]], jnp.int8))
  np.testing.assert_array_equal(packed, [[0xE1, 0x87, 0x0F]])


@pytest.mark.parametrize("bits,k", [(4, 9), (6, 10), (8, 10)])
def test_pack_weight_layout(bits, k):
  lo = -(2 ** (bits - 1))
  codes_kn = np.random.default_rng().integers(lo, -lo, (k, 6)).astype(np.int8)
  stored = pack_weight(jnp.asarray(codes_kn), bits)
  assert stored.shape[0] == 6  # output-major [N, K] storage
  np.testing.assert_array_equal(unpack_weight(stored, k), codes_kn.T)
