"""A QD-LoRA distillation step sharded over 8 fake CPU devices (data=4 x fsdp=2) equals the
single-device step to float32 tolerance (pure data parallelism: tests/train/test_sharded.py, on the
generic trainer; each mesh here is one more minute-long compile of the distillation step)."""

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
    from quantface_jax.quant import qdlora
    from quantface_jax.quant.export import load_quantized
    from quantface_jax.train import distill, mesh as mesh_lib, trainer
    from quantface_jax.train.config_utils import apply_overrides, load_config_file

    assert len(jax.devices()) == 8
    config = load_config_file("configs/qdlora_tiny.py")
    quantized = load_quantized(sys.argv[1])
    rng = np.random.default_rng(0)
    batch = {"lq": rng.uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)}
    results = {}
    for data, fsdp in ((1, 1), (4, 2)):
      cfg = distill.trainer_config(config)
      student = qdlora.to_qdlora(quantized, rank=4, lora_rank=4, sigma=0.05)
      stage = distill.distill_stage(student, checkpoint.load("tiny"), config, None, [])
      cfg.steps = 4
      mesh = mesh_lib.make_mesh(data, fsdp, devices=jax.devices()[:data * fsdp])
      program = trainer.build_train_program(stage, cfg, mesh)
      state = program.state.replace(step=program.state.step + 2)  # past warmup: a non-zero learning rate
      frozen_sh, batch_sh = program.frozen_sharding, program.batch_sharding
      if fsdp > 1:  # the frozen teacher and residuals are split over "fsdp"
        assert any("fsdp" in s.spec for s in jax.tree.leaves(frozen_sh))
      state, metrics = program.step(jax.device_put(state, program.state_sharding),
                                    jax.device_put(program.frozen, frozen_sh), trainer.to_global(batch, batch_sh))
      results[(data, fsdp)] = ({k: np.asarray(v[...]) for k, v in nnx.to_flat_state(state.params)},
                               float(metrics["loss"]), float(metrics["grad_norm"]))
    ref_params, ref_loss, ref_norm = results[(1, 1)]
    # A first Adam step moves every parameter by about ±lr whatever its gradient's size, so entries
    # with near-zero gradients may differ by a fraction of lr: params are compared to 5% of lr.
    atol = 0.05 * config.train.lr
    for key, (params, loss, norm) in results.items():
      np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
      np.testing.assert_allclose(norm, ref_norm, rtol=1e-4)
      for k, v in params.items():
        np.testing.assert_allclose(v, ref_params[k], rtol=1e-4, atol=atol, err_msg=f"{key} {k}")
    print("OK")
""")


def test_sharded_distill_step_matches_single_device(tmp_path_factory):
  _, _, qdir = shared_quantized(tmp_path_factory)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(qdir)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
