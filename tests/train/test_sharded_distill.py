"""A QD-LoRA distillation step sharded over 8 fake CPU devices (data=4 x fsdp=2) equals the
single-device step (pure data parallelism: tests/train/test_sharded.py, on the generic trainer; each
mesh here is one more minute-long compile of the distillation step).

Fake quantization makes the step discontinuous: a different reduction order moves an activation by
one float32 ulp, which can flip its code by a whole quantization step. On one CPU model the
quantized step's loss differed by 4e-4 and its gradient norm by 0.9% between the meshes; on
another PTQ start of the same test, by 1.2% in the loss.
So the float32-tolerance check runs with fake quantization off (the balanced student, perturbed so
that it does not equal the teacher and the loss is no cancellation), and the quantized step, the
same compiled program with the `enabled` flags set (they are data), gets the tolerance of a few
flipped codes, which still catches a missing all-reduce or a wrong fsdp gather (errors of order 1)."""

import os
import subprocess
import sys
import textwrap

from test_distill import shared_quantized

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from flax import nnx
    from quantface_jax import checkpoint
    from quantface_jax.quant import qdlora, set_quant_enabled
    from quantface_jax.quant.export import load_quantized
    from quantface_jax.train import distill, mesh as mesh_lib, trainer
    from quantface_jax.train.config_utils import load_config_file

    assert len(jax.devices()) == 8
    config = load_config_file("configs/qdlora_tiny.py")
    quantized = load_quantized(sys.argv[1])
    rng = np.random.default_rng(0)
    batch = {"lq": rng.uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)}
    results = {}
    for data, fsdp in ((1, 1), (4, 2)):
      cfg = distill.trainer_config(config)
      student = qdlora.to_qdlora(quantized, rank=4, lora_rank=4, sigma=0.05)
      noise = np.random.default_rng(1)
      nnx.update(student, jax.tree.map(lambda v: v * (1 + 0.05 * noise.standard_normal(v.shape)).astype(v.dtype),
                                       nnx.state(student, nnx.Param)))
      set_quant_enabled(student, False)
      stage = distill.distill_stage(student, checkpoint.load("tiny"), config, None, [])
      cfg.steps = 4
      mesh = mesh_lib.make_mesh(data, fsdp, devices=jax.devices()[:data * fsdp])
      program = trainer.build_train_program(stage, cfg, mesh)
      state = program.state.replace(step=program.state.step + 2)  # past warmup: a non-zero learning rate
      frozen_sh, batch_sh = program.frozen_sharding, program.batch_sharding
      if fsdp > 1:  # the frozen teacher and residuals are split over "fsdp"
        assert any("fsdp" in s.spec for s in jax.tree.leaves(frozen_sh))
      quantized_frozen = jax.tree_util.tree_map_with_path(
          lambda path, x: np.ones_like(x) if "enabled" in jax.tree_util.keystr(path) else x, program.frozen)
      for mode, frozen in (("fp", program.frozen), ("quantized", quantized_frozen)):
        fresh = jax.tree.map(np.array, state)  # the step donates its state: new buffers each time
        new_state, metrics = program.step(jax.device_put(fresh, program.state_sharding),
                                          jax.device_put(frozen, frozen_sh), trainer.to_global(batch, batch_sh))
        results[(data, fsdp, mode)] = ({k: np.asarray(v[...]) for k, v in nnx.to_flat_state(new_state.params)},
                                       float(metrics["loss"]), float(metrics["grad_norm"]))
    # An Adam step moves every parameter by about ±lr whatever its gradient's size, so an entry whose
    # gradient is near zero may move differently by up to 2 lr: at most 0.1% of a tensor's entries
    # may lie further than 5% of lr from the single-device step, and none further than 2 lr.
    lr = config.train.lr
    ref_params, ref_loss, ref_norm = results[(1, 1, "fp")]
    params, loss, norm = results[(4, 2, "fp")]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(norm, ref_norm, rtol=1e-4)
    for k, v in params.items():
      gap = np.abs(v - ref_params[k])
      assert np.mean(gap > 0.05 * lr + 1e-4 * np.abs(ref_params[k])) <= 1e-3 and gap.max() <= 2 * lr, (k, gap.max())
    _, q_ref_loss, q_ref_norm = results[(1, 1, "quantized")]
    _, q_loss, q_norm = results[(4, 2, "quantized")]
    assert abs(q_ref_loss - ref_loss) > 1e-3 * ref_loss, (q_ref_loss, ref_loss)  # the flags took effect
    np.testing.assert_allclose(q_loss, q_ref_loss, rtol=2e-2)
    np.testing.assert_allclose(q_norm, q_ref_norm, rtol=3e-2)
    print("OK", ref_loss, loss, ref_norm, norm, "quantized", q_ref_loss, q_loss, q_ref_norm, q_norm)
""")


def test_sharded_distill_step_matches_single_device(tmp_path_factory):
  _, _, qdir = shared_quantized(tmp_path_factory)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT, str(qdir)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
