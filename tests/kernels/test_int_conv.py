import numpy as np
import jax.numpy as jnp
import pytest

from quantface_jax.kernels import GemmBlocks, int_conv2d
from quantface_jax.kernels.reference import int_conv2d_ref


@pytest.mark.parametrize("backend", ["xla", "interpret"])
@pytest.mark.parametrize("stride,padding,zero", [(1, 1, False), (2, 1, True), (1, 0, True)])
def test_int_conv2d_exact(backend, stride, padding, zero):
    rng = np.random.default_rng()
    xq = rng.integers(-128, 128, (2, 9, 11, 12)).astype(np.int8)
    wq = rng.integers(-8, 8, (3, 3, 12, 20)).astype(np.int8)
    kw = dict(a_scale=np.float32(rng.uniform(0.01, 0.1)),
              w_scale=rng.uniform(0.001, 0.01, 20).astype(np.float32),
              bias=rng.standard_normal(20).astype(np.float32),
              a_zero=np.int32(rng.integers(-5, 6)) if zero else None)
    ref = np.asarray(int_conv2d_ref(xq, wq, stride=stride, padding=padding, **kw))
    got = np.asarray(int_conv2d(jnp.asarray(xq), jnp.asarray(wq), stride=stride, padding=padding,
                                backend=backend, blocks=GemmBlocks(block_m=64, block_n=32), **kw))
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
