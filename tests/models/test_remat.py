"""`set_remat`: recomputing block activations in the backward pass changes neither values nor gradients."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quantface_jax.models import build, set_remat

pytestmark = pytest.mark.slow  # started first: see tests/conftest.py


def primitives(jaxpr) -> set[str]:
  """Names of every primitive in a jaxpr, sub-jaxprs included."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      names |= primitives(sub)
  return names


def test_remat_keeps_values_and_gradients():
  model = build("tiny", seed=0)
  rng = np.random.default_rng(0)
  latents = jnp.asarray(rng.normal(size=(2, 8, 8, model.config.unet.in_channels)), jnp.float32)
  context = jnp.asarray(rng.normal(size=(2, 5, model.config.unet.cross_attention_dim)), jnp.float32)

  def loss_and_grads(model):  # as the trainer differentiates: jax.grad of a merged state
    graphdef, state = nnx.split(model)

    def loss(state):
      m = nnx.merge(graphdef, state)
      eps = m.unet(latents, jnp.full((2,), 399), context)
      return jnp.mean(jnp.square(m.vae.decode(latents - eps)))

    fn = jax.value_and_grad(loss)
    return fn(state), primitives(jax.make_jaxpr(fn)(state).jaxpr)

  (loss, grads), plain = loss_and_grads(model)
  assert set_remat(model, True) > 0
  (loss_r, grads_r), remat = loss_and_grads(model)
  is_remat = lambda names: any(
    n.startswith(("remat", "checkpoint")) for n in names
  )  # "remat2" in jax 0.10
  assert not is_remat(plain) and is_remat(remat)  # the flag reaches the program
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  for (path, g), (_, g_r) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(grads_r)):
    np.testing.assert_allclose(g_r[...], g[...], rtol=1e-5, atol=1e-7, err_msg=str(path))
