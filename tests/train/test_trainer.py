"""The generic trainer on a toy two-layer model: learning, trainable/frozen split, exact resume."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from quantface_jax.models.layers import Linear, silu
from quantface_jax.train import trainer
from quantface_jax.train.logging import read_metrics

DIM = 64


class Toy(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    self.frozen_proj = Linear(DIM, DIM, rngs=rngs)
    self.body = Linear(DIM, 256, rngs=rngs)
    self.head = Linear(256, DIM, rngs=rngs)

  def __call__(self, x):
    return self.head(silu(self.body(self.frozen_proj(x))))


def toy_batches(start_step: int, batch_size: int = 8):
  target = np.random.default_rng(123).normal(size=(DIM, DIM)).astype(np.float32) / 8
  step = start_step
  while True:
    x = np.random.default_rng(step).normal(size=(batch_size, DIM)).astype(np.float32)
    yield {"x": x, "y": np.sin(x @ target)}
    step += 1


def toy_loss(model, batch, rng):
  noisy = batch["x"] + 0.01 * jax.random.normal(rng, batch["x"].shape)  # the state's RNG matters
  loss = jnp.mean(jnp.square(model(noisy) - batch["y"]))
  return loss, {"mse": loss}


def toy_eval(model, batch):
  return {"mse": jnp.mean(jnp.square(model(batch["x"]) - batch["y"]), axis=-1)}


def toy_stage(batches=toy_batches):
  return trainer.Stage(
    name="toy",
    module=Toy(rngs=nnx.Rngs(0)),
    trainable=nnx.Any(nnx.PathContains("body"), nnx.PathContains("head")),
    loss_fn=toy_loss,
    eval_fn=toy_eval,
    train_batches=batches,
    val_batches=[next(toy_batches(10_000))],
  )


def toy_config(steps=8, **kw):
  c = ml_collections.ConfigDict(
    dict(
      steps=steps,
      lr=3e-3,
      warmup_steps=2,
      final_lr_fraction=0.1,
      weight_decay=1e-4,
      b1=0.9,
      b2=0.99,
      grad_clip=1.0,
      seed=0,
      log_every=1,
      checkpoint_every=3,
      eval_every=4,
      prefetch=2,
      progress=False,
      time_budget_s=0.0,
      mesh=dict(data=-1, fsdp=1),
    )
  )
  c.update(kw)
  return c


def flat(module, filt=nnx.Param):
  return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(module, filt))}


def test_lr_schedule_matches_optax():
  cfg = toy_config(steps=50, lr=1e-3, warmup_steps=5)
  _, lr_fn = trainer.make_optimizer(cfg)
  ref = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 5, 50, end_value=1e-4)
  for s in (0, 1, 4, 5, 6, 20, 49, 50, 70):
    np.testing.assert_allclose(float(lr_fn(s, 50)), float(ref(s)), rtol=1e-5, atol=1e-9)


def test_loss_falls_and_only_trainables_change(tmp_path):
  stage = toy_stage()
  before = flat(stage.module)
  result = trainer.fit(stage, toy_config(steps=30, checkpoint_every=100), str(tmp_path))
  after = flat(result.module)
  records = read_metrics(str(tmp_path), "toy")
  assert records[-1]["loss"] < 0.7 * records[0]["loss"]
  for key in before:
    changed = not np.array_equal(before[key], after[key])
    assert changed == (key[0] in ("body", "head")), key
  assert "val_mse" in result.val_metrics


def test_optimizer_state_only_for_trainables():
  stage = toy_stage()
  tx, _ = trainer.make_optimizer(toy_config())
  _, params, frozen = trainer.split_trainable(stage.module, stage.trainable)
  state = trainer.init_state(params, tx, total_steps=8, seed=0)
  n_train = sum(x.size for x in jax.tree.leaves(params))
  n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
  assert {k[0] for k, _ in nnx.to_flat_state(params)} == {"body", "head"}
  assert {k[0] for k, _ in nnx.to_flat_state(frozen)} == {"frozen_proj"}
  assert n_opt <= 2 * n_train + 8  # Adam mu, nu (+ counters)


def test_equation_count_includes_sub_jaxprs():
  inner = jax.jit(lambda y: jnp.sin(y) * 2.0)
  closed = jax.make_jaxpr(lambda x: jax.checkpoint(inner)(x) + 1.0)(jnp.ones(3))
  assert len(closed.jaxpr.eqns) == 2  # checkpoint, add
  assert trainer._count_equations(closed.jaxpr) == 5  # + the inner jit, + sin and mul


def test_compiled_program_is_the_step_fit_runs(tmp_path):
  stage, cfg = toy_stage(), toy_config(steps=1)
  program = trainer.build_train_program(stage, cfg, trainer.mesh_lib.make_mesh())
  batch = next(toy_batches(0))
  compiled, profile = trainer.compile_train_step(program, batch)
  assert set(profile) == {
    "trace_s",
    "lower_s",
    "compile_s",
    "jaxpr_equations",
    "temp_gb",
    "argument_gb",
  }
  assert profile["jaxpr_equations"] > 20  # three layers' forward and backward, AdamW, metrics
  inputs = (program.state, program.frozen, batch)
  assert profile["argument_gb"] * 2**30 == sum(
    np.asarray(x).nbytes for x in jax.tree.leaves(inputs)
  )
  # The abstract arguments carry the shardings, so the AOT compile runs on the real, placed values
  # and computes what `fit`'s first step computes.
  state = jax.device_put(program.state, program.state_sharding)
  frozen = jax.device_put(program.frozen, program.frozen_sharding)
  _, metrics = compiled(state, frozen, trainer.to_global(batch, program.batch_sharding))
  trainer.fit(toy_stage(), cfg, str(tmp_path))  # a fresh module: the call above donated this one's
  assert float(metrics["loss"]) == read_metrics(str(tmp_path), "toy")[0]["loss"]


class Interrupted(Exception):
  pass


def interrupted_at(batches, step: int):
  """A `train_batches` like `batches` whose iterator raises `Interrupted` when asked for `step`."""

  def from_step(start_step: int):
    for i, batch in enumerate(batches(start_step)):
      if start_step + i == step:
        raise Interrupted
      yield batch

  return from_step


def test_resume_is_bit_exact(tmp_path):
  full = trainer.fit(toy_stage(), toy_config(), str(tmp_path / "full"))
  with pytest.raises(Interrupted):
    trainer.fit(toy_stage(interrupted_at(toy_batches, 6)), toy_config(), str(tmp_path / "cut"))
  resumed_stage = toy_stage()
  resumed = trainer.fit(resumed_stage, toy_config(), str(tmp_path / "cut"))
  assert resumed.steps_run == 2  # restored at step 6 (checkpoint_every=3)
  for key, value in flat(full.module).items():
    np.testing.assert_array_equal(value, flat(resumed.module)[key], err_msg=str(key))
  timing_free = lambda rs: [
    {k: v for k, v in r.items() if k not in ("steps_per_s", "data_wait_frac")} for r in rs
  ]
  assert timing_free(read_metrics(str(tmp_path / "cut"))) == timing_free(
    read_metrics(str(tmp_path / "full"))
  )


def test_time_budget_shortens_schedule(tmp_path, caplog):
  with caplog.at_level("WARNING", logger="quantface"):
    result = trainer.fit(
      toy_stage(),
      toy_config(
        steps=100_000, warmup_steps=5, time_budget_s=1e-3, calibrate_steps=2, checkpoint_every=10**6
      ),
      str(tmp_path),
    )
  assert result.steps_run == 4  # calibrated at step 3, budget already spent -> one more step
  # A schedule cut below twice its warmup says so (a stage cut to 22 steps once passed silently).
  assert "leaves 4 steps (warmup 5)" in caplog.text


def test_time_budget_retimes_at_warmup_end(tmp_path, monkeypatch):
  timed_at = []

  def record(done, rate, seconds_left, max_steps):
    timed_at.append(done)
    return done + 10

  monkeypatch.setattr(trainer, "_budgeted_total", record)
  result = trainer.fit(
    toy_stage(),
    toy_config(
      steps=100, warmup_steps=6, time_budget_s=60.0, calibrate_steps=2, checkpoint_every=10**6
    ),
    str(tmp_path),
  )
  assert timed_at == [3, 6]  # after the timed steps 2..3, then at the warmup's end
  assert result.steps_run == 16  # the second length wins


def test_profiled_steps_are_summarized(tmp_path):
  result = trainer.fit(toy_stage(), toy_config(steps=4, profile_steps=(2, 3)), str(tmp_path))
  summary = json.loads((tmp_path / "toy" / "profile" / "profile_summary.json").read_text())
  assert summary == result.step_profile and summary
  assert all(row["ms_per_step"] > 0 and 0 < row["share"] <= 1 for row in summary)
  # The CPU backend runs the step's XLA ops on host threads: the step's own work is in the rows.
  assert any("fusion" in row["op"] or "dot" in row["op"] for row in summary)
  with pytest.raises(ValueError, match="profile_steps"):
    trainer.fit(toy_stage(), toy_config(steps=4, profile_steps=(3, 2)), str(tmp_path / "bad"))


def test_trace_calls_names_the_heaviest_ops():
  from quantface_jax import profiling

  x = jnp.ones((256, 256))
  fn = jax.jit(lambda a: jnp.tanh(a @ a) @ a)
  fn(x).block_until_ready()
  rows = profiling.trace_calls(lambda: fn(x), calls=2, top=3)
  assert 1 <= len(rows) <= 3 and all(set(r) <= {"op", "ms_per_step", "source"} for r in rows)
  assert [r["ms_per_step"] for r in rows] == sorted((r["ms_per_step"] for r in rows), reverse=True)
  assert any("dot" in r["op"] or "fusion" in r["op"] for r in rows)
