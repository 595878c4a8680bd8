"""Metric writers: `metrics.jsonl` always, TensorBoard event files when tensorboardX is importable."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from quantface_jax.fileio import atomic_open

try:
  import tensorboardX
except ImportError:  # jsonl only
  tensorboardX = None


class MetricsWriter:
  """Appends one JSON line per (stage, step) to ``workdir/metrics.jsonl``; mirrors scalars to TensorBoard
  under ``workdir/tensorboard/<stage>`` when tensorboardX is installed."""

  def __init__(self, workdir: str, stage: str):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.stage = stage
    self._tb = (
      tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard", stage))
      if tensorboardX is not None
      else None
    )

  def truncate_after(self, step: int) -> None:
    """Drops this stage's records past `step` (written after the checkpoint a resumed run restarts from)."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      records = [json.loads(line) for line in f if line.strip()]
    kept = [r for r in records if r["stage"] != self.stage or r["step"] <= step]
    with atomic_open(self.path) as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    record = {"stage": self.stage, "step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str, stage: str | None = None) -> list[dict]:
  """The records of `metrics.jsonl`, optionally of one stage."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if stage is None or r["stage"] == stage]
