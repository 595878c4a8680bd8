"""A generic NNX trainer: trainable/frozen split, AdamW, sharded jitted step, Orbax checkpoints with
exact resume, jsonl/TensorBoard metrics, periodic validation.

A `Stage` says what trains (a module, an nnx filter over its parameters), on what (a batch iterator that
can start at any step) and against what (a loss function); `fit` runs it. The FP stages of the mini
model and the QD-LoRA distillation are both stages.

Exact resume: the state holds everything a step depends on (trainable params, optimizer state, step,
RNG key); the batch of step s is a function of s alone (`train_batches(start_step=s)`), so a run
restored at step k replays steps k, k+1, ... exactly as the uninterrupted run did (bit for bit on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.struct
import grain
import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from quantface_jax import profiling
from quantface_jax.train import mesh as mesh_lib
from quantface_jax.train.logging import MetricsWriter

log = logging.getLogger("quantface")

Batch = Mapping[str, np.ndarray]
LossFn = Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
EvalFn = Callable[[nnx.Module, Batch], dict[str, jax.Array]]


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes (frozen parameters travel separately)."""

  step: jax.Array  # () int32: optimizer steps taken == batches consumed (the data position)
  total_steps: jax.Array  # () int32: length of the LR schedule (data, so a time budget can set it)
  params: nnx.State  # the trainable nnx.Param leaves
  opt_state: optax.OptState  # optimizer state of `params` only
  rng: jax.Array  # (2,) uint32 PRNG key, split once per step


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
  """One training job on one module."""

  name: str  # sub-directory of the workdir and the `stage` field of every metric record
  module: nnx.Module  # what trains, at its initial state; `fit` returns it trained
  trainable: Any  # nnx filter selecting the parameters that train (intersected with nnx.Param)
  loss_fn: LossFn  # (module, batch, rng) -> (scalar loss, scalar metrics)
  eval_fn: EvalFn | None  # (module, batch) -> per-example (B,) metrics, averaged over `val_batches`
  # start_step -> this process's batches from that step on; an iterator with get_state/set_state
  # (grain's) also has its state checkpointed beside the model's and restored from there.
  train_batches: Callable[[int], Iterator[Batch]]
  val_batches: Sequence[Batch] = ()  # the fixed validation set, in batches


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitResult:
  """What `fit` hands back."""

  module: nnx.Module  # the trained module (trainable parameters updated in place)
  steps_run: int  # steps this call ran (0 when the stage had already finished)
  seconds: float  # wall time of the training loop, compile included
  train_metrics: dict[str, float]  # the last step's metrics
  val_metrics: dict[str, float]  # the final validation means (empty if no eval_fn)
  compile_profile: dict[str, float]  # `compile_train_step`'s phase times (empty when no step ran)
  step_profile: list[
    dict
  ]  # `profiling.summarize_trace` rows of config.profile_steps (empty if unset)


def make_optimizer(cfg: ml_collections.ConfigDict):
  """AdamW with linear warmup then cosine decay to ``lr * final_lr_fraction``, optional global-norm clip.

  Returns (tx, lr_fn): `tx` is optax's AdamW at unit learning rate (clip -> Adam -> decoupled weight
  decay); the train step scales its update by ``-lr_fn(step, total_steps)``, equal to optax's
  `warmup_cosine_decay_schedule` but with the schedule length as data, not a compiled constant.
  Reads cfg.lr, warmup_steps, final_lr_fraction, weight_decay, b1, b2, grad_clip (0: off).
  """
  tx = optax.chain(
    *([optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []),
    optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2),
    optax.add_decayed_weights(cfg.weight_decay),
  )
  peak, end, warmup = cfg.lr, cfg.lr * cfg.final_lr_fraction, cfg.warmup_steps

  def lr_fn(step: jax.Array, total_steps: jax.Array) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    decay_steps = jnp.maximum(jnp.asarray(total_steps, jnp.float32) - warmup, 1.0)
    progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup, peak * step / max(warmup, 1), cosine)

  return tx, lr_fn


def split_trainable(module: nnx.Module, trainable) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, trainable params, everything else)."""
  return nnx.split(module, nnx.All(nnx.Param, trainable), ...)


def init_state(
  params: nnx.State, tx: optax.GradientTransformation, *, total_steps: int, seed: int
) -> TrainState:
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    total_steps=jnp.asarray(total_steps, jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=jax.random.PRNGKey(seed),
  )


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def make_train_step(
  graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation, lr_fn
):
  """(state, frozen, batch) -> (state, metrics): one AdamW step on the trainable parameters."""

  def train_step(state: TrainState, frozen: nnx.State, batch: Batch):
    rng, step_rng = jax.random.split(state.rng)

    def objective(params):
      return loss_fn(nnx.merge(graphdef, params, frozen), batch, step_rng)

    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    lr = lr_fn(state.step, state.total_steps)
    params = optax.apply_updates(state.params, jax.tree.map(lambda u: -lr * u, updates))
    metrics = {**metrics, "loss": loss, "grad_norm": _global_norm(grads), "lr": lr}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, eval_fn: EvalFn):
  def eval_step(params: nnx.State, frozen: nnx.State, batch: Batch):
    return eval_fn(nnx.merge(graphdef, params, frozen), batch)

  return eval_step


def state_shardings(mesh, state: TrainState) -> TrainState:
  return TrainState(
    step=mesh_lib.replicated(mesh),
    total_steps=mesh_lib.replicated(mesh),
    params=mesh_lib.tree_shardings(mesh, state.params),
    opt_state=mesh_lib.tree_shardings(mesh, state.opt_state),
    rng=mesh_lib.replicated(mesh),
  )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainProgram:
  """A stage's jitted train step on a mesh, with its initial state and every sharding it takes."""

  graphdef: nnx.GraphDef  # the module's structure; params and frozen merge back into it
  state: TrainState  # the initial state (step 0, fresh optimizer), not yet placed on the mesh
  frozen: nnx.State  # everything that does not train (teacher, quantized residuals, buffers)
  state_sharding: TrainState  # a NamedSharding per leaf of `state`
  frozen_sharding: (
    nnx.State
  )  # a NamedSharding per leaf of `frozen` (split over "fsdp" when it has one)
  batch_sharding: jax.sharding.NamedSharding  # batch axis over the mesh's data axes
  replicated: jax.sharding.NamedSharding  # scalars and metrics
  step: Any  # jax.jit of (state, frozen, batch) -> (state, metrics); donates `state`

  def abstract_args(self, batch: Batch) -> tuple:
    """(state, frozen, global batch) as sharded ShapeDtypeStructs: what `step.trace` takes without
    data. `batch` is this process's share (`to_global` stacks every process's along axis 0)."""
    rows = jax.process_count()
    return (
      sharded_abstract(self.state, self.state_sharding),
      sharded_abstract(self.frozen, self.frozen_sharding),
      {
        k: jax.ShapeDtypeStruct(
          (rows * np.shape(v)[0], *np.shape(v)[1:]), v.dtype, sharding=self.batch_sharding
        )
        for k, v in batch.items()
      },
    )


def sharded_abstract(tree, shardings):
  """`tree`'s leaves as ShapeDtypeStructs placed by `shardings` (a matching tree, or one sharding for a leaf)."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
  )


def build_train_program(stage: Stage, config: ml_collections.ConfigDict, mesh) -> TrainProgram:
  """The train step `fit` runs: AdamW on `stage.trainable` (config as in `fit`), jit over `mesh`."""
  tx, lr_fn = make_optimizer(config)
  graphdef, params, frozen = split_trainable(stage.module, stage.trainable)
  state = init_state(params, tx, total_steps=config.steps, seed=config.seed)
  state_sh = state_shardings(mesh, state)
  frozen_sh = mesh_lib.tree_shardings(mesh, frozen)
  batch_sh = mesh_lib.batch_sharding(mesh)
  repl = mesh_lib.replicated(mesh)
  step = jax.jit(
    make_train_step(graphdef, stage.loss_fn, tx, lr_fn),
    in_shardings=(state_sh, frozen_sh, batch_sh),
    out_shardings=(state_sh, repl),
    donate_argnums=(0,),
  )
  return TrainProgram(
    graphdef=graphdef,
    state=state,
    frozen=frozen,
    state_sharding=state_sh,
    frozen_sharding=frozen_sh,
    batch_sharding=batch_sh,
    replicated=repl,
    step=step,
  )


def _count_equations(jaxpr) -> int:
  """Equations of a jaxpr, those of its sub-jaxprs (pjit, custom_vjp, remat, scan bodies) included."""
  return sum(
    1 + sum(_count_equations(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params))
    for eqn in jaxpr.eqns
  )


def describe_program(program: TrainProgram, batch: Batch, *, top: int = 8) -> str:
  """What `program` will run, before anything compiles: processes and mesh, the global, per-process
  and per-device batch (`batch` is this process's), and the `top` largest arrays of the state and
  the frozen part with their sharding and size per device."""
  mesh = program.batch_sharding.mesh
  devices = mesh.devices.size
  rows = next(iter(batch.values())).shape[0]
  lines = [
    f"processes: {jax.process_count()} (this one: {jax.process_index()}), devices: {devices} "
    f"({jax.local_device_count()} local, {jax.devices()[0].platform})",
    "mesh: " + " x ".join(f"{name}={size}" for name, size in mesh.shape.items()),
    f"batch: {rows * jax.process_count()} global = {rows} per process = "
    f"{rows * jax.process_count() / devices:g} per device; "
    + ", ".join(f"{k} {tuple(np.shape(v)[1:])} {np.asarray(v).dtype}" for k, v in batch.items()),
  ]
  leaves = []
  for part, tree, shardings in (
    ("state", program.state, program.state_sharding),
    ("frozen", program.frozen, program.frozen_sharding),
  ):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    for (path, x), sharding in zip(flat, jax.tree.leaves(shardings)):
      itemsize = np.dtype(x.dtype).itemsize
      size = itemsize * int(np.prod(np.shape(x)))
      per_device = itemsize * int(np.prod(sharding.shard_shape(np.shape(x))))
      leaves.append((size, per_device, part + jax.tree_util.keystr(path), x, sharding.spec))
  total = sum(per_device for _, per_device, *_ in leaves)
  lines.append(
    f"state + frozen: {len(leaves)} arrays, {total / 2**20:.1f} MiB per device; largest:"
  )
  for size, per_device, name, x, spec in sorted(leaves, key=lambda r: -r[0])[:top]:
    lines.append(
      f"  {name} {tuple(np.shape(x))} {np.dtype(x.dtype).name} {spec} "
      f"{size / 2**20:.2f} MiB, {per_device / 2**20:.2f} MiB per device"
    )
  return "\n".join(lines)


def describe_stage(stage: Stage, config: ml_collections.ConfigDict) -> str:
  """`describe_program` of the step `fit(stage, config, ...)` would run, on its first batch."""
  program = build_train_program(
    stage, config, mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp)
  )
  batches = stage.train_batches(0)
  try:
    batch = next(batches)
  finally:
    if hasattr(batches, "close"):  # a generator or grain's worker processes
      batches.close()
  return f"stage {stage.name}:\n" + describe_program(program, batch)


def compile_train_step(program: TrainProgram, batch: Batch, *, compile: bool = True):
  """Ahead-of-time compiles `program.step` for batches shaped like `batch`, timing each phase.

  Returns (the compiled step, or None with compile=False; {trace_s, lower_s[, compile_s,
  temp_gb, argument_gb], jaxpr_equations}). Runs on abstract values: nothing is placed on a device.
  The compiled step takes exactly the shardings of `program` (what `fit` feeds it). temp_gb and
  argument_gb are XLA's buffer assignment per device (scratch, and the inputs), so a step's memory
  is known before it runs.
  """
  t0 = time.perf_counter()
  traced = program.step.trace(*program.abstract_args(batch))
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  profile = dict(
    trace_s=t1 - t0, lower_s=t2 - t1, jaxpr_equations=_count_equations(traced.jaxpr.jaxpr)
  )
  if not compile:
    return None, profile
  compiled = lowered.compile()
  profile["compile_s"] = time.perf_counter() - t2
  memory = compiled.memory_analysis()
  if memory is not None:  # None where a backend does not report it
    profile.update(
      temp_gb=memory.temp_size_in_bytes / 2**30, argument_gb=memory.argument_size_in_bytes / 2**30
    )
  return compiled, profile


def to_global(batch: Batch, sharding) -> dict[str, jax.Array]:
  """This process's numpy batch -> global arrays split over the mesh's batch axes."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def prefetch(iterator: Iterator, size: int) -> Iterator:
  """Runs `iterator` in a background thread, `size` items ahead; re-raises its exceptions in order."""
  q: queue.Queue = queue.Queue(maxsize=max(size, 1))
  done = object()
  stop = threading.Event()

  def produce():
    try:
      for item in iterator:
        if stop.is_set():
          return
        q.put(item)
      q.put(done)
    except BaseException as e:  # handed to the consumer
      q.put(e)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while (item := q.get()) is not done:
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:  # closed early: unblock the producer so it (and the iterator's resources) can end
    stop.set()
    while thread.is_alive():
      try:
        q.get(timeout=0.05)
      except queue.Empty:
        pass


def _mean_metrics(per_batch: list[dict[str, jax.Array]]) -> dict[str, float]:
  keys = per_batch[0].keys()
  return {
    k: float(np.mean(np.concatenate([np.asarray(m[k]).reshape(-1) for m in per_batch])))
    for k in keys
  }


def validate(eval_step, params, frozen, batches: Sequence[Batch], sharding) -> dict[str, float]:
  """Means of the per-example metrics over the validation set, keys prefixed with ``val_``."""
  if not batches:
    return {}
  per_batch = [eval_step(params, frozen, to_global(b, sharding)) for b in batches]
  return {f"val_{k}": v for k, v in _mean_metrics(per_batch).items()}


class _DataState:
  """A data iterator's state as of the last batch the loop took (the iterator runs ahead in the
  prefetch thread), in the form grain's Orbax handler saves."""

  def __init__(self, state: dict):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()


def _data_state_file(manager: ocp.CheckpointManager, step: int) -> str:
  """Where grain's handler keeps this process's iterator state in checkpoint `step`."""
  name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
  return os.path.join(str(manager.directory), str(step), "data", name)


def _train_batches(stage: Stage, manager: ocp.CheckpointManager, start: int):
  """(iterator of (batch, iterator state after it or None), the iterator) from step `start`.

  A stateful (grain) iterator resumes from the state saved beside checkpoint `start` when this
  process layout wrote one; otherwise (a fresh run, another process count) it is positioned by step.
  """
  it = stage.train_batches(start)
  if not hasattr(it, "get_state"):
    return ((batch, None) for batch in it), it
  saved = _data_state_file(manager, start)
  if start and os.path.exists(saved):
    manager.restore(start, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it)))
  elif start:
    log.info("%s: no data-iterator state at %s; resuming the input by step", stage.name, saved)
  return ((batch, it.get_state()) for batch in it), it


def _checkpoint_manager(directory: str, cfg) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=cfg.get("keep_checkpoints", 1), create=True, enable_async_checkpointing=True
  )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _budgeted_total(done: int, rate: float, seconds_left: float, max_steps: int) -> int:
  """Schedule length that spends `seconds_left` at `rate` steps/s, within [done + 1, max_steps]."""
  return int(min(max_steps, max(done + 1, done + rate * seconds_left)))


def fit(stage: Stage, config: ml_collections.ConfigDict, workdir: str) -> FitResult:
  """Trains `stage` for config.steps steps, resuming from ``workdir/<stage>/checkpoints`` if present.

  With config.time_budget_s > 0, a fresh run times steps 2..calibrate_steps+1 after compiling and then
  shortens its schedule (config.steps becomes the maximum) so the stage, compile included, takes about
  the budget; it re-times once more at the end of the warmup (the early rate misses the autotuner's
  tail; until then the learning rate does not depend on the length). The chosen length is part of the
  state, so a resumed run keeps it.
  Reads config: steps, lr, warmup_steps, final_lr_fraction, weight_decay, b1, b2, grad_clip, seed,
  log_every, checkpoint_every, eval_every (0: only at the end), prefetch, progress (tqdm on/off),
  time_budget_s, calibrate_steps, mesh.data, mesh.fsdp, profile_steps ((first, last) steps traced by
  `profiling.StepProfiler` into ``workdir/<stage>/profile``; unset or () traces nothing).
  """
  t_begin = time.perf_counter()
  mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp)
  program = build_train_program(stage, config, mesh)
  state, frozen = program.state, program.frozen
  state_sh, frozen_sh, batch_sh, repl = (
    program.state_sharding,
    program.frozen_sharding,
    program.batch_sharding,
    program.replicated,
  )
  budget = config.get("time_budget_s", 0)
  calibrate_at = config.get("calibrate_steps", 20) + 1
  calibrate_points = {calibrate_at, max(calibrate_at, config.get("warmup_steps", 0))}

  manager = _checkpoint_manager(os.path.join(workdir, stage.name, "checkpoints"), config)
  main_process = mesh_lib.is_main_process()
  writer = MetricsWriter(workdir, stage.name) if main_process else None
  profiler = profiling.StepProfiler(
    config.get("profile_steps", None), os.path.join(workdir, stage.name, "profile")
  )
  batches = source = None
  try:
    latest = manager.latest_step()
    if latest is not None:
      target = sharded_abstract(state, state_sh)
      state = manager.restore(
        latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
      )["state"]
      if writer is not None:
        writer.truncate_after(latest)
    else:
      state = jax.device_put(state, state_sh)
    frozen = jax.device_put(frozen, frozen_sh)
    start, total = int(state.step), int(state.total_steps)

    eval_step = (
      jax.jit(
        make_eval_step(program.graphdef, stage.eval_fn),
        in_shardings=(state_sh.params, frozen_sh, batch_sh),
        out_shardings=repl,
      )
      if stage.eval_fn is not None
      else None
    )

    train_metrics: dict[str, float] = {}
    val_metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    bar = tqdm(
      total=total,
      initial=start,
      desc=stage.name,
      unit="step",
      dynamic_ncols=True,
      disable=not config.get("progress", True) or not main_process,
    )
    batch_states, source = _train_batches(stage, manager, start)
    batches = prefetch(batch_states, config.get("prefetch", 2))
    done, t_first, data_wait, data_state = start, None, 0.0, None
    train_step, compile_profile = None, {}
    while done < total:
      t_wait = time.perf_counter()
      batch, data_state = next(batches)
      if done > start:  # waits after the first step fall in the timed window (from t_first)
        data_wait += time.perf_counter() - t_wait
      if train_step is None:  # compiled ahead of time, so the log can say where the time went
        train_step, compile_profile = compile_train_step(program, batch)
        log.info(
          "%s: step compiled in %.0f s (trace %.0f s, lower %.0f s, XLA %.0f s; %d jaxpr equations; "
          "XLA's memory plan per device: %.1f GB scratch + %.1f GB arguments)",
          stage.name,
          sum(v for k, v in compile_profile.items() if k.endswith("_s")),
          *(
            compile_profile.get(k, float("nan"))
            for k in (
              "trace_s",
              "lower_s",
              "compile_s",
              "jaxpr_equations",
              "temp_gb",
              "argument_gb",
            )
          ),
        )
      profiler.before(done + 1)
      state, metrics = train_step(state, frozen, to_global(batch, batch_sh))
      done += 1
      profiler.after(done, (state, metrics))
      bar.update(1)
      if done == start + 1:
        jax.block_until_ready(metrics)
        t_first = time.perf_counter()
        log.info(
          "%s: step %d compiled and ran in %.0f s (of %d steps)",
          stage.name,
          done,
          t_first - t_begin,
          total,
        )
      if budget and start == 0 and done in calibrate_points:
        jax.block_until_ready(metrics)
        rate = (done - 1) / (time.perf_counter() - t_first)
        total = _budgeted_total(
          done,
          rate,
          budget - (time.perf_counter() - t_begin) - config.get("reserve_s", 0),
          config.steps,
        )
        state = state.replace(total_steps=jax.device_put(jnp.asarray(total, jnp.int32), repl))
        bar.total = total
        if total < 2 * config.get("warmup_steps", 0):
          log.warning(
            "%s: the time budget of %.0f s leaves %d steps (warmup %d) after %.0f s to compile and "
            "calibrate: raise time_budget_s",
            stage.name,
            budget,
            total,
            config.warmup_steps,
            t_first - t_begin,
          )
      scalars = {}
      if done % config.log_every == 0 or done == total:
        train_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        scalars.update(train_metrics)
        # Rates after the first (compiling) step; data_wait_frac near 1 means input-bound.
        if done > start + 1:
          since_first = time.perf_counter() - t_first
          scalars["steps_per_s"] = (done - start - 1) / since_first
          scalars["data_wait_frac"] = data_wait / since_first
        bar.set_postfix(loss=f"{train_metrics['loss']:.4g}")
      if eval_step is not None and (
        (config.eval_every and done % config.eval_every == 0) or done == total
      ):
        val_metrics = validate(eval_step, state.params, frozen, stage.val_batches, batch_sh)
        scalars.update(val_metrics)
      if scalars and writer is not None:
        writer.write(done, scalars)
      if done % config.checkpoint_every == 0 or done == total:
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
          items["data"] = grain.checkpoint.CheckpointSave(_DataState(data_state))
        manager.save(done, args=ocp.args.Composite(**items))
    bar.close()
    seconds = time.perf_counter() - t0
  finally:
    profiler.close()
    if batches is not None:
      batches.close()
    if hasattr(source, "close"):  # grain's worker processes
      source.close()
    manager.wait_until_finished()
    manager.close()
    if writer is not None:
      writer.close()
  if jax.process_count() > 1:  # every process gets whole arrays, e.g. to save the model from
    state = state.replace(params=jax.jit(lambda p: p, out_shardings=repl)(state.params))
  nnx.update(stage.module, state.params)
  return FitResult(
    module=stage.module,
    steps_run=done - start,
    seconds=seconds,
    train_metrics=train_metrics,
    val_metrics=val_metrics,
    compile_profile=compile_profile,
    step_profile=profiler.summary,
  )
