"""Device mesh and shardings: one code path from one CPU to a multi-host pod.

The mesh has axes ("data", "fsdp"). A batch is split over both axes together; parameters (and their
optimizer state) are replicated, or, with fsdp > 1, each array is split over "fsdp" on its largest
axis that divides evenly (small or indivisible arrays stay replicated).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
# Arrays smaller than this stay replicated under FSDP: splitting them saves nothing and costs collectives.
MIN_FSDP_SIZE = 2**14

# Variables of launchers whose processes `jax.distributed.initialize()` finds by itself.
_CLUSTER_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
# How long a process waits for the others to start, and for a silent peer before failing the run.
DEFAULT_TIMEOUT_S = 300


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize` when the environment describes a multi-process run.

  Reads JAX_COORDINATOR_ADDRESS (host:port of process 0's coordinator), JAX_NUM_PROCESSES and
  JAX_PROCESS_ID (all three set: an explicit launch, e.g. on one machine), else lets JAX detect a
  cluster (Slurm, Cloud TPU). QUANTFACE_DISTRIBUTED_TIMEOUT_S (default 300) bounds the wait for the
  other processes at start and for a dead peer's heartbeat later. On CPU, collectives go through
  gloo. Returns whether it initialised; a no-op (False) on one process or when already initialised.
  """
  explicit = os.environ.get("JAX_COORDINATOR_ADDRESS") and os.environ.get("JAX_NUM_PROCESSES")
  if not explicit and not any(os.environ.get(k) for k in _CLUSTER_ENV):
    return False
  if jax.distributed.is_initialized():
    return False
  # CPU devices of different processes talk through gloo (GPU and TPU backends ignore it).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  timeout = int(os.environ.get("QUANTFACE_DISTRIBUTED_TIMEOUT_S", DEFAULT_TIMEOUT_S))
  kwargs = {}
  if explicit:
    try:
      kwargs = dict(
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]),
      )
    except (KeyError, ValueError) as e:
      raise ValueError(
        f"JAX_NUM_PROCESSES={os.environ.get('JAX_NUM_PROCESSES')!r} needs an integer "
        f"JAX_PROCESS_ID (got {os.environ.get('JAX_PROCESS_ID')!r})"
      ) from e
  jax.distributed.initialize(
    initialization_timeout=timeout, heartbeat_timeout_seconds=max(timeout // 10, 10), **kwargs
  )
  return True


def is_main_process() -> bool:
  """Process 0: the one that writes logs, metrics and the final model."""
  return jax.process_index() == 0


def wait_for_all_processes(name: str) -> None:
  """A barrier across the JAX processes (no-op in one): e.g. before others read what process 0
  wrote."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """A ("data", "fsdp") mesh over `devices` (default all); -1 on one axis takes what the other leaves."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  n = devices.size
  if data == -1 and fsdp == -1:
    raise ValueError("make_mesh: at most one axis may be -1")
  data = n // fsdp if data == -1 else data
  fsdp = n // data if fsdp == -1 else fsdp
  if data * fsdp != n:
    raise ValueError(f"make_mesh: data={data} x fsdp={fsdp} != {n} devices")
  return Mesh(devices.reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every mesh axis."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """Replicated, or split over "fsdp" on the largest axis it divides (ties: the last such axis)."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_FSDP_SIZE:
    return P()
  candidates = [(size, axis) for axis, size in enumerate(shape) if size % fsdp == 0]
  if not candidates:
    return P()
  _, axis = max(candidates)
  spec = [None] * len(shape)
  spec[axis] = "fsdp"
  return P(*spec)


def tree_shardings(mesh: Mesh, tree):
  """A NamedSharding per array leaf of `tree` (arrays or ShapeDtypeStructs), by `param_spec`."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp)), tree)
