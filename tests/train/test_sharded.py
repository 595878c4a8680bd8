"""A train step sharded over 8 fake CPU devices equals the single-device step (float32 tolerance)."""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests/train")
    import jax, numpy as np
    from flax import nnx
    from quantface_jax.train import mesh as mesh_lib, trainer
    import test_trainer as toy

    assert len(jax.devices()) == 8
    results = {}
    for data, fsdp in ((1, 1), (4, 2), (8, 1)):
      devices = jax.devices()[:data * fsdp]
      cfg = toy.toy_config(steps=3, checkpoint_every=100, mesh=dict(data=data, fsdp=fsdp))
      stage = toy.toy_stage()
      program = trainer.build_train_program(stage, cfg, mesh_lib.make_mesh(data, fsdp, devices=devices))
      state = jax.device_put(program.state, program.state_sharding)
      frozen = jax.device_put(program.frozen, program.frozen_sharding)
      batch_sh, state_sh = program.batch_sharding, program.state_sharding
      batches = toy.toy_batches(0)
      for _ in range(3):
        state, metrics = program.step(state, frozen, trainer.to_global(next(batches), batch_sh))
      if fsdp > 1:
        specs = {s.spec for s in jax.tree.leaves(state_sh.params)}
        assert any("fsdp" in spec for spec in specs), specs
      results[(data, fsdp)] = ({k: np.asarray(v[...]) for k, v in nnx.to_flat_state(state.params)},
                               float(metrics["loss"]))
    ref_params, ref_loss = results[(1, 1)]
    for key, (params, loss) in results.items():
      np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
      for k, v in params.items():
        np.testing.assert_allclose(v, ref_params[k], rtol=1e-4, atol=1e-6, err_msg=f"{key} {k}")
    print("OK")
""")


def test_sharded_steps_match_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=170
  )
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_param_spec_splits_largest_divisible_axis():
  from jax.sharding import PartitionSpec as P

  from quantface_jax.train.mesh import param_spec

  assert param_spec((64, 256), 2) == P(None, "fsdp")
  assert param_spec((3, 3, 64, 128), 2) == P(None, None, None, "fsdp")
  assert param_spec((255, 129), 2) == P()  # nothing divides
  assert param_spec((8,), 2) == P()  # too small to split
  assert param_spec((64, 256), 1) == P()
