"""Multi-process training on one machine: 2 JAX processes of 2 CPU devices each, on a loopback
coordinator (`mesh.maybe_initialize_distributed` reads the launch variables, gloo collectives).

The toy stage of test_trainer trains on a grain pipeline (`pipeline.batch_dataset`) sharded by
process; one run on 2 processes is checked against the same run on 1 process (losses and
parameters at the tolerance of test_sharded.py), for disjoint data shares that cover each global
batch, for outputs written by process 0 alone, and for its Orbax checkpoint, restored exactly in 1
process and in 2 with another mesh, where training resumes. A process that dies fails the run within
a bounded time instead of hanging.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # started first: see tests/conftest.py

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEVICES_PER_PROCESS = 2
STEPS, CHECKPOINT_AT = 6, 3

WORKER = textwrap.dedent("""
    import json, os, sys
    scenario, workdir, results, data, fsdp = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    writes = []  # what this process opens for writing / creates under workdir, outside checkpoints/

    def audit(event, args):
      if event == "open" and isinstance(args[0], str) and args[1] and any(c in args[1] for c in "wax+"):
        path = args[0]
      elif event in ("os.mkdir", "os.rename", "os.replace") and isinstance(args[0], str):
        path = args[0]
      else:
        return
      path = os.path.abspath(path)
      if path.startswith(os.path.join(os.path.abspath(workdir), "")) and "/checkpoints" not in path:
        writes.append(path)

    sys.addaudithook(audit)
    import logging
    logging.basicConfig(level=logging.INFO)
    sys.path.insert(0, "tests/train")
    from quantface_jax.train import mesh as mesh_lib
    initialized = mesh_lib.maybe_initialize_distributed()
    import jax, numpy as np
    from flax import nnx
    from quantface_jax.data import pipeline
    from quantface_jax.train import trainer
    import test_trainer as toy

    pid, count = jax.process_index(), jax.process_count()
    assert initialized == (count > 1) and jax.device_count() == count * int(os.environ["DEVICES_PER_PROCESS"])
    if scenario == "crash":
      if pid == 1:
        os._exit(3)  # dies without a word, as a killed process does
      mesh = mesh_lib.make_mesh()
      x = jax.make_array_from_process_local_data(mesh_lib.batch_sharding(mesh), np.ones((2, 4), np.float32))
      while True:  # collectives with the dead peer must fail, not wait forever
        float(jax.jit(lambda a: a.sum(), out_shardings=mesh_lib.replicated(mesh))(x))

    if scenario == "distill":  # one QD-LoRA step of the tiny model on this run's mesh
      from quantface_jax import checkpoint
      from quantface_jax.quant import qdlora, set_quant_enabled
      from quantface_jax.quant.export import load_quantized
      from quantface_jax.train import distill
      from quantface_jax.train.config_utils import load_config_file

      # test_distill.py's configuration, student and batch: process 0 of 1 finds its compiled step
      # in the persistent compilation cache.
      from quantface_jax.train.config_utils import apply_overrides
      config = apply_overrides(load_config_file("configs/qdlora_tiny.py"), json.loads(os.environ["OVERRIDES"]))
      q = config.qdlora
      student = qdlora.to_qdlora(load_quantized(os.environ["QDIR"]), rank=q.rank, lora_rank=q.lora_rank,
                                 sigma=q.sigma, seed=q.seed, learn_scales=q.learn_scales)
      noise = np.random.default_rng(1)  # perturbed, fake quantization off: see the test below
      nnx.update(student, jax.tree.map(
          lambda v: v * (1 + 0.05 * noise.standard_normal(v.shape)).astype(v.dtype),
          nnx.state(student, nnx.Param)))
      set_quant_enabled(student, False)
      stage = distill.distill_stage(student, checkpoint.load("tiny"), config, None, [])
      cfg = distill.trainer_config(config)
      cfg.steps = 4
      program = trainer.build_train_program(stage, cfg, mesh_lib.make_mesh(data, fsdp))
      state = program.state.replace(step=program.state.step + 2)  # past warmup: lr > 0
      rows = config.train.batch_size
      pair = np.random.default_rng(0).uniform(-1, 1, (2, rows, 32, 32, 3)).astype(np.float32)
      share = {k: v[pid * rows // count:(pid + 1) * rows // count] for k, v in zip(("lq", "hq"), pair)}
      if fsdp > 1:  # the frozen teacher and residuals are split over "fsdp"
        assert any("fsdp" in str(s.spec) for s in jax.tree.leaves(program.frozen_sharding))
      # The same compiled step with fake quantization on: the `enabled` flags are data.
      quantized_frozen = jax.tree_util.tree_map_with_path(
          lambda path, x: np.ones_like(x) if "enabled" in jax.tree_util.keystr(path) else x, program.frozen)
      batch = trainer.to_global(share, program.batch_sharding)
      host_state = jax.tree.map(np.array, state)  # the step donates its state: fresh buffers per call
      args = lambda frozen: (jax.device_put(host_state, program.state_sharding),
                             jax.device_put(frozen, program.frozen_sharding), batch)
      step = program.step.lower(*args(program.frozen)).compile()
      if count > 1:  # gloo gives a late peer 30 s: start the step together, once both compiled
        from jax._src import distributed as jax_distributed
        jax_distributed.global_state.client.wait_at_barrier("distill_compiled", 600_000)
      state, metrics = step(*args(program.frozen))
      _, q_metrics = step(*args(quantized_frozen))
      params = jax.jit(lambda p: p, out_shardings=program.replicated)(state.params)
      os.makedirs(results, exist_ok=True)
      np.savez(os.path.join(results, f"params_{pid}.npz"), loss=float(metrics["loss"]),
               grad_norm=float(metrics["grad_norm"]), lr=float(metrics["lr"]),
               q_loss=float(q_metrics["loss"]), q_grad_norm=float(q_metrics["grad_norm"]),
               **{"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(params)})
      print("OK", pid)
      sys.exit(0)

    class ToyData:
      # Item i: the toy regression pair of input rng(i), and i itself (which process read what).
      def __len__(self):
        return 48

      def load(self, index, epoch=0):
        target = np.random.default_rng(123).normal(size=(toy.DIM, toy.DIM)).astype(np.float32) / 8
        x = np.random.default_rng(index).normal(size=(toy.DIM,)).astype(np.float32)
        return x, np.sin(x @ target), np.asarray(index, np.float32)

    read = []

    def as_batch(fields):
      read.append(fields[2].astype(int).tolist())
      return {"x": fields[0], "y": fields[1]}

    ds = pipeline.batch_dataset(ToyData(), 8, seed=7, workers=1, process_index=pid,
                                process_count=count, transform=as_batch)
    stage = toy.toy_stage(lambda start: pipeline.iterator_from_step(ds, start))
    cfg = toy.toy_config(steps=%(steps)d, checkpoint_every=%(every)d, keep_checkpoints=3,
                         eval_every=0, prefetch=1, mesh=dict(data=data, fsdp=fsdp))
    # What --dry-run prints (on a twin input: its prefetching must not touch `read`).
    twin = pipeline.batch_dataset(ToyData(), 8, seed=7, workers=1, process_index=pid,
                                  process_count=count, transform=lambda f: {"x": f[0], "y": f[1]})
    print(trainer.describe_stage(toy.toy_stage(lambda start: iter(twin)), cfg), flush=True)
    restored = {}
    if scenario == "resume":  # the last checkpoint, restored onto this run's mesh, before training
      import orbax.checkpoint as ocp
      program = trainer.build_train_program(stage, cfg, mesh_lib.make_mesh(data, fsdp))
      with ocp.CheckpointManager(os.path.join(workdir, "toy", "checkpoints")) as manager:
        latest = manager.latest_step()
        target = trainer.sharded_abstract(program.state, program.state_sharding)
        state = manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
      gathered = jax.jit(lambda p: p, out_shardings=program.replicated)(state.params)
      restored = {f"restored/{'/'.join(map(str, k))}": np.asarray(v[...]) for k, v in nnx.to_flat_state(gathered)}
      restored["restored_step"] = np.asarray(int(state.step))
    result = trainer.fit(stage, cfg, workdir)
    final = {"/".join(map(str, k)): np.asarray(v) for k, v in toy.flat(result.module).items()}
    os.makedirs(results, exist_ok=True)
    np.savez(os.path.join(results, f"params_{pid}.npz"), **final, **restored)
    with open(os.path.join(results, f"process_{pid}.json"), "w") as f:
      json.dump({"read": read, "writes": sorted(set(writes)), "steps_run": result.steps_run}, f)
    print("OK", pid)
""") % dict(steps=STEPS, every=CHECKPOINT_AT)


def launch(
  tmp_path,
  scenario,
  workdir,
  results,
  *,
  processes,
  data,
  fsdp,
  devices=DEVICES_PER_PROCESS,
  timeout=240,
  **env_vars,
):
  """Runs the worker on `processes` local JAX processes; returns their (returncode, output)s.

  Every process leads its own process group and is killed with it when the run ends, fails or
  outlive `timeout`; once one process fails, the others get 60 s to fail by themselves.
  """
  with socket.socket() as probe:  # a free loopback port for the coordinator
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    DEVICES_PER_PROCESS=str(devices),
    QUANTFACE_DISTRIBUTED_TIMEOUT_S="60",
  )
  env.update(env_vars)
  if processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes))
  args = [scenario, str(workdir), str(results), str(data), str(fsdp)]
  procs, logs = [], []
  try:
    for pid in range(processes):
      log = open(tmp_path / f"{scenario}_{port}_{pid}.log", "w+")
      logs.append(log)
      procs.append(
        subprocess.Popen(
          [sys.executable, "-c", WORKER, *args],
          cwd=REPO,
          env=dict(env, JAX_PROCESS_ID=str(pid)),
          stdout=log,
          stderr=subprocess.STDOUT,
          start_new_session=True,
        )
      )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, 0) for p in procs):
        deadline = min(deadline, time.monotonic() + 60)
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
      p.wait()
  outputs = []
  for p, log in zip(procs, logs):
    log.seek(0)
    outputs.append((p.returncode, log.read()))
    log.close()
  return outputs


def check_ok(outputs):
  for pid, (code, out) in enumerate(outputs):
    assert code == 0 and f"OK {pid}" in out, f"process {pid} exited with {code}:\n{out[-4000:]}"


def load_params(results, pid=0):
  with np.load(results / f"params_{pid}.npz") as f:
    return {k: f[k] for k in f.files}


def assert_params_close(params, ref):
  """test_sharded.py's float32 tolerance: the same step under another reduction order."""
  for k, v in ref.items():
    if not k.startswith("restored"):
      np.testing.assert_allclose(params[k], v, rtol=1e-4, atol=1e-6, err_msg=k)


def losses(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line)["loss"] for line in f]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The reference run on 1 process (2 devices) and the same run on 2 (mesh data=4)."""
  tmp = tmp_path_factory.mktemp("multiprocess")
  ref = launch(tmp, "fit", tmp / "ref", tmp / "ref_results", processes=1, data=-1, fsdp=1)
  check_ok(ref)
  two = launch(tmp, "fit", tmp / "two", tmp / "two_results", processes=2, data=4, fsdp=1)
  check_ok(two)
  (tmp / "two_process_0.log").write_text(two[0][1])
  return tmp


def test_two_processes_train_as_one(runs):
  described = (runs / "two_process_0.log").read_text()
  assert "processes: 2 (this one: 0), devices: 4" in described, described
  assert "batch: 8 global = 4 per process = 2 per device" in described, described
  ref, two = load_params(runs / "ref_results"), load_params(runs / "two_results")
  np.testing.assert_allclose(losses(runs / "two"), losses(runs / "ref"), rtol=1e-5)
  assert len(losses(runs / "two")) == STEPS
  assert_params_close(two, ref)
  # Every process ends with the whole trained model (gathered from the mesh), the same bits.
  for k, v in load_params(runs / "two_results", 1).items():
    np.testing.assert_array_equal(v, two[k], err_msg=k)


def test_processes_read_disjoint_shares_covering_each_global_batch(runs):
  from quantface_jax.data.pipeline import BatchPlan

  reads = [
    json.loads((runs / "two_results" / f"process_{p}.json").read_text())["read"] for p in (0, 1)
  ]
  plan = BatchPlan(
    48,
    8,
    shuffle=True,
    seed=7,
    num_epochs=None,
    drop_remainder=True,
    process_index=0,
    process_count=1,
  )
  assert len(reads[0]) >= STEPS and len(reads[1]) >= STEPS
  for step in range(STEPS):
    first, second = reads[0][step], reads[1][step]
    assert len(first) == len(second) == 4 and not set(first) & set(second), (step, first, second)
    assert first + second == [i for i, _ in plan[step]], step  # rows in global-batch order


def test_only_process_zero_writes_outputs(runs):
  workers = [json.loads((runs / "two_results" / f"process_{p}.json").read_text()) for p in (0, 1)]
  assert workers[1]["writes"] == [], workers[1]["writes"]
  written = {os.path.relpath(p, runs / "two") for p in workers[0]["writes"]}
  assert any(p.endswith("metrics.jsonl") for p in written), written
  assert any(p.startswith("tensorboard") for p in written), written


def test_checkpoint_restores_exactly_and_training_resumes(runs, tmp_path):
  """From step 3 of the 2-process run: in 1 process (mesh data=2 x fsdp=2) and in 2 (fsdp=4)."""
  final = load_params(runs / "two_results")
  for processes, devices, data, fsdp in ((1, 4, 2, 2), (2, 2, 1, 4)):
    workdir = tmp_path / f"resume_{processes}"
    shutil.copytree(runs / "two", workdir)
    shutil.rmtree(workdir / "toy" / "checkpoints" / str(STEPS))  # as if it stopped after step 3
    results = tmp_path / f"resume_{processes}_results"
    outputs = launch(
      tmp_path,
      "resume",
      workdir,
      results,
      processes=processes,
      data=data,
      fsdp=fsdp,
      devices=devices,
    )
    check_ok(outputs)
    params = load_params(results)
    assert int(params["restored_step"]) == CHECKPOINT_AT
    ckpt = load_restored_reference(runs / "two" / "toy" / "checkpoints", CHECKPOINT_AT)
    for k, v in ckpt.items():
      np.testing.assert_array_equal(params[f"restored/{k}"], v, err_msg=k)
    worker = json.loads((results / "process_0.json").read_text())
    assert worker["steps_run"] == STEPS - CHECKPOINT_AT
    assert_params_close(params, final)
    np.testing.assert_allclose(losses(workdir), losses(runs / "two"), rtol=1e-5)
    if processes == 2:  # fsdp across both processes' devices; the input resumed from its state
      assert "mesh: data=1 x fsdp=4" in outputs[0][1] and "P(None, 'fsdp')" in outputs[0][1]
      assert all("no data-iterator state" not in out for _, out in outputs)
    else:  # written by 2 processes: positioned by step, which the matching losses show is exact
      assert "no data-iterator state" in outputs[0][1]
      saved = workdir / "toy" / "checkpoints" / str(CHECKPOINT_AT) / "data"
      states = sorted(f for f in os.listdir(saved) if f.startswith("process_"))
      assert states == ["process_0-of-2.json", "process_1-of-2.json"], states


def load_restored_reference(directory, step):
  """The checkpoint's trainable parameters restored here, in this single-device process."""
  import jax
  import orbax.checkpoint as ocp
  from flax import nnx
  from test_trainer import toy_config, toy_stage

  from quantface_jax.train import mesh as mesh_lib
  from quantface_jax.train import trainer

  program = trainer.build_train_program(toy_stage(), toy_config(steps=STEPS), mesh_lib.make_mesh())
  target = trainer.sharded_abstract(program.state, program.state_sharding)
  with ocp.CheckpointManager(str(directory)) as manager:
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
    state = manager.restore(step, args=args)["state"]
  assert jax.device_count() == 1
  return {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(state.params)}


def test_a_dead_process_fails_the_run_within_bounded_time(tmp_path):
  start = time.monotonic()
  outputs = launch(tmp_path, "crash", tmp_path / "w", tmp_path / "r", processes=2, data=-1, fsdp=1)
  assert outputs[1][0] == 3
  code, out = outputs[0]
  assert code not in (0, None), out[-3000:]
  assert "another task died" in out or "stopped sending heartbeats" in out, out[-3000:]
  assert time.monotonic() - start < 200


def test_one_process_resumes_its_input_from_the_saved_iterator_state(tmp_path):
  """The grain iterator's state beside checkpoint 3 decides what a resumed run reads."""
  from test_trainer import flat, toy_config, toy_stage

  from quantface_jax.data import pipeline
  from quantface_jax.train import trainer

  class Pairs:
    def __len__(self):
      return 24

    def load(self, index, epoch=0):
      x = np.random.default_rng([index, epoch]).normal(size=(64,)).astype(np.float32)
      return x, np.tanh(x[::-1].copy())

  ds = pipeline.batch_dataset(
    Pairs(), 8, seed=3, workers=1, transform=lambda f: {"x": f[0], "y": f[1]}
  )
  stage = lambda: toy_stage(lambda start: pipeline.iterator_from_step(ds, start))
  cfg = toy_config(steps=STEPS, checkpoint_every=CHECKPOINT_AT, keep_checkpoints=3, eval_every=0)
  full = flat(trainer.fit(stage(), cfg, str(tmp_path / "full")).module)
  saved = tmp_path / "full" / "toy" / "checkpoints" / str(CHECKPOINT_AT) / "data"
  assert json.loads((saved / "process_0-of-1.json").read_text())["next_index"] == CHECKPOINT_AT
  for name, next_step in (("resumed", CHECKPOINT_AT), ("moved", CHECKPOINT_AT + 1)):
    workdir = tmp_path / name
    shutil.copytree(tmp_path / "full", workdir)
    shutil.rmtree(workdir / "toy" / "checkpoints" / str(STEPS))
    state_file = (
      workdir / "toy" / "checkpoints" / str(CHECKPOINT_AT) / "data" / "process_0-of-1.json"
    )
    state_file.write_text(json.dumps({"next_index": next_step}))
    resumed = flat(trainer.fit(stage(), cfg, str(workdir)).module)
    same = all(np.array_equal(resumed[k], v) for k, v in full.items())
    assert same == (next_step == CHECKPOINT_AT), name  # bit-exact, and the state is what is read


@pytest.mark.xdist_group("qdlora")  # with test_distill.py: the same PTQ model
def test_qdlora_step_on_two_processes_equals_one(tmp_path, tmp_path_factory):
  """One distillation step on 2 processes (mesh data=2 x fsdp=2, the frozen teacher split over
  fsdp) against 1 process on 1 device.

  Fake quantization makes the step discontinuous: another reduction order moves an activation by a
  float32 ulp, which can flip its code by a whole quantization step (the quantized loss has differed
  by up to 1.2% between meshes). So the float32-tolerance check runs with fake quantization off (the
  balanced student, perturbed so that it differs from the teacher and the loss is no cancellation),
  and the quantized step, the same compiled program with the `enabled` flags set, gets the tolerance
  of a few flipped codes, which still catches a missing all-reduce or a wrong fsdp gather (errors of
  order 1)."""
  from test_distill import TRAIN, shared_quantized

  from quantface_jax.train.config_utils import apply_overrides

  config, _, qdir = shared_quantized(tmp_path_factory)
  config = apply_overrides(config.copy_and_resolve_references(), TRAIN)
  runs = {}
  for processes, devices, data, fsdp in ((1, 1, 1, 1), (2, 2, 2, 2)):
    results = tmp_path / f"distill_{processes}"
    outputs = launch(
      tmp_path,
      "distill",
      tmp_path / "w",
      results,
      processes=processes,
      data=data,
      fsdp=fsdp,
      devices=devices,
      timeout=600,  # the distillation step's trace and compile: a minute or more per process
      QUANTFACE_DISTRIBUTED_TIMEOUT_S="600",  # heartbeats every 60 s through a loaded compile
      QDIR=str(qdir),
      OVERRIDES=json.dumps(TRAIN),
    )
    check_ok(outputs)
    runs[processes] = load_params(results)
  ref, two = runs[1], runs[2]
  assert float(ref["lr"]) > 0
  np.testing.assert_allclose(two["loss"], ref["loss"], rtol=1e-5)
  np.testing.assert_allclose(two["grad_norm"], ref["grad_norm"], rtol=1e-4)
  # An Adam step moves every parameter by about ±lr whatever its gradient's size, so an entry whose
  # gradient is near zero may move differently by up to 2 lr: at most 0.1% of a tensor's entries
  # may lie further than 5% of lr from the single-device step, and none further than 2 lr.
  lr = config.train.lr
  params = [k for k in ref if k not in ("loss", "grad_norm", "lr", "q_loss", "q_grad_norm")]
  assert len(params) > 10
  for k in params:
    v = ref[k]
    gap = np.abs(two[k] - v)
    far = np.mean(gap > 0.05 * lr + 1e-4 * np.abs(v))
    assert far <= 1e-3 and gap.max() <= 2 * lr, (k, gap.max())
  assert abs(ref["q_loss"] - ref["loss"]) > 1e-3 * ref["loss"]  # the flags took effect
  np.testing.assert_allclose(two["q_loss"], ref["q_loss"], rtol=2e-2)
  np.testing.assert_allclose(two["q_grad_norm"], ref["q_grad_norm"], rtol=3e-2)
