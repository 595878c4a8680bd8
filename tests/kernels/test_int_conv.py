import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from quantface_jax.kernels import Epilogue, GemmBlocks, int_conv2d, int_conv2d_implicit
from quantface_jax.kernels.reference import int_conv2d_ref


@pytest.mark.parametrize(
  "backend", ["xla", "interpret"]
)  # interpret: implicit GEMM at stride 1, im2col at 2
@pytest.mark.parametrize("stride,padding,zero", [(1, 1, False), (2, 1, True), (1, 0, True)])
def test_int_conv2d_exact(backend, stride, padding, zero):
  rng = np.random.default_rng()
  xq = rng.integers(-128, 128, (2, 9, 11, 12)).astype(np.int8)
  wq = rng.integers(-8, 8, (3, 3, 12, 20)).astype(np.int8)
  epilogue = Epilogue(
    a_scale=np.float32(rng.uniform(0.01, 0.1)),
    w_scale=rng.uniform(0.001, 0.01, 20).astype(np.float32),
    bias=rng.standard_normal(20).astype(np.float32),
    a_zero=np.int32(rng.integers(-5, 6)) if zero else None,
  )
  ref = np.asarray(int_conv2d_ref(xq, wq, epilogue, stride=stride, padding=padding))
  got = np.asarray(
    int_conv2d(
      jnp.asarray(xq),
      jnp.asarray(wq),
      epilogue,
      stride=stride,
      padding=padding,
      backend=backend,
      blocks=GemmBlocks(block_m=64, block_n=32),
    )
  )
  assert got.shape == ref.shape
  np.testing.assert_array_equal(got, ref)


def test_xla_conv_has_the_cudnn_int8_idiom():
  """On GPU XLA runs an int8 conv only when its int32 result's one user is a convert to f32
  (anything else between them does not compile): check the traced program has that shape."""
  xq = jnp.zeros((1, 8, 8, 16), jnp.int8)
  wq = jnp.zeros((3, 3, 16, 8), jnp.int8)
  jaxpr = jax.make_jaxpr(
    lambda x, w: int_conv2d(
      x, w, Epilogue(a_scale=1.0, w_scale=jnp.ones(8), a_zero=jnp.int32(3)), backend="xla"
    )
  )(xq, wq).jaxpr

  def jaxprs(j):  # j and the jaxprs nested in its equations (jit, custom_vjp, ...)
    yield j
    for e in j.eqns:
      for sub in jax.extend.core.jaxprs_in_params(e.params):
        yield from jaxprs(sub)

  (eqns,) = [
    j.eqns for j in jaxprs(jaxpr) if any(e.primitive.name == "conv_general_dilated" for e in j.eqns)
  ]
  (conv,) = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
  assert conv.invars[0].aval.dtype == jnp.int8 and conv.invars[1].aval.dtype == jnp.int8
  users = [e for e in eqns if any(v is conv.outvars[0] for v in e.invars)]
  assert [(u.primitive.name, u.params.get("new_dtype")) for u in users] == [
    ("convert_element_type", jnp.float32)
  ]


@pytest.mark.parametrize(
  "b,h,w,c_in,c_out,k,padding",
  [
    (2, 9, 11, 12, 20, 3, 1),  # odd sizes: C_in and C_out padded to whole blocks
    (1, 16, 16, 64, 48, 3, 1),  # several C_in blocks per tap
    (3, 5, 7, 24, 40, 3, 0),  # no padding: Ho < H
    (1, 6, 6, 16, 16, 1, 0),  # 1x1: one tap, no shift
  ],
)
def test_implicit_conv_exact_with_full_epilogue(b, h, w, c_in, c_out, k, padding):
  """The implicit GEMM (outputs on the padded grid, cropped) equals the integer reference with
  every epilogue term, the low-rank branch included, at several block sizes."""
  rng = np.random.default_rng()
  xq = rng.integers(-128, 128, (b, h, w, c_in)).astype(np.int8)
  wq = rng.integers(-8, 8, (k, k, c_in, c_out)).astype(np.int8)
  ho, wo = h + 2 * padding - k + 1, w + 2 * padding - k + 1
  epilogue = Epilogue(
    a_scale=np.float32(0.05),
    w_scale=rng.uniform(0.001, 0.01, c_out).astype(np.float32),
    bias=rng.standard_normal(c_out).astype(np.float32),
    a_zero=np.int32(rng.integers(-5, 6)),
    lowrank_x=rng.standard_normal((b * ho * wo, 5)).astype(np.float32),
    lowrank_l2=rng.standard_normal((5, c_out)).astype(np.float32),
  )
  ref = np.asarray(int_conv2d_ref(xq, wq, epilogue, stride=1, padding=padding))
  for blocks in (GemmBlocks(block_m=32, block_n=16, block_k=16), GemmBlocks()):
    got = np.asarray(
      int_conv2d_implicit(
        jnp.asarray(xq), jnp.asarray(wq), epilogue, padding=padding, blocks=blocks, interpret=True
      )
    )
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)


def test_implicit_conv_refuses_inputs_beyond_int32_offsets():
  big = jax.ShapeDtypeStruct((1, 2**15, 2**14, 4), jnp.int8)  # 2**31 codes, never allocated
  with pytest.raises(ValueError, match="64-bit"):
    jax.eval_shape(
      lambda x: int_conv2d_implicit(
        x, jnp.zeros((3, 3, 4, 8), jnp.int8), Epilogue(a_scale=1.0, w_scale=jnp.ones(8))
      ),
      big,
    )
