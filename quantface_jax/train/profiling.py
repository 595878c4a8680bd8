"""Where a training step's time goes: a `jax.profiler` trace of chosen steps, summarized in Python.

`fit` traces steps ``config.profile_steps = (first, last)`` (1-based, inclusive; usually after the
compiling first step) into ``workdir/<stage>/profile/`` and writes ``profile_summary.json`` beside
it: one row per operation with its time per traced step, heaviest first. On a GPU the rows are the
device's kernels, named by the XLA op that launched them when the trace says so; on the CPU backend
they are XLA's thunks on the host's threads. No TensorBoard needed: the trace itself is still
there for it (or Perfetto) when a row needs a closer look.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
import re
import tempfile

import jax

from quantface_jax.fileio import atomic_write_text

log = logging.getLogger("quantface")


def summarize_trace(trace_dir: str, *, steps: int, top: int = 40) -> list[dict]:
  """Rows {plane, op, ms_per_step, calls_per_step, share[, source]} of the newest trace under `trace_dir`.

  Device planes (``/device:...``) count their stream lines (kernels; an ``hlo_op`` stat names the
  XLA op); host planes count XLA's ops on every thread but Python's, leaving out the runtime's
  C++ scopes (``ThunkExecutor::Execute`` and the like, which enclose the ops and would count them
  twice). ``share`` is the op's fraction of its plane's counted time; ``source``, where the trace
  has it, is the JAX operation the op came from (its ``tf_op`` or ``long_name`` stat). `steps`: how
  many steps the trace holds (the per-step divisor).
  """
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"no *.xplane.pb trace under {trace_dir}")
  profile = jax.profiler.ProfileData.from_file(paths[-1])
  rows = []
  for plane in profile.planes:
    lines = list(plane.lines)
    if plane.name.startswith("/device:"):
      lines = [line for line in lines if line.name.startswith("Stream")] or lines
    else:
      lines = [line for line in lines if line.name != "python"]
    time_ns, calls, sources = collections.Counter(), collections.Counter(), {}
    for line in lines:
      for event in line.events:
        if event.duration_ns <= 0 or not _is_op(event.name):
          continue
        stats = dict(event.stats)
        op = stats.get("hlo_op") or event.name
        time_ns[op] += event.duration_ns
        calls[op] += 1
        sources.setdefault(op, stats.get("tf_op") or stats.get("long_name"))
    total = sum(time_ns.values())
    rows += [dict(plane=plane.name, op=op, ms_per_step=ns / 1e6 / steps, calls_per_step=calls[op] / steps,
                  share=ns / total, **({"source": sources[op]} if sources[op] else {}))
             for op, ns in time_ns.most_common()]
  device_first = lambda row: (not row["plane"].startswith("/device:"), -row["ms_per_step"])
  return sorted(rows, key=device_first)[:top]


def trace_calls(call, *, calls: int, top: int) -> list[dict]:
  """The `top` heaviest ops ({op, ms_per_step[, source]}, device first) of ``calls`` runs of
  ``call()`` (each waited for), traced into a temporary directory. On a GPU, ops that XLA runs
  inside CUDA graphs appear as ``command_buffer_N``: ``XLA_FLAGS=--xla_gpu_enable_command_buffer=``
  names them."""
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(calls):
      jax.block_until_ready(call())
    jax.profiler.stop_trace()
    rows = summarize_trace(trace_dir, steps=calls, top=top)
  return [{k: r[k] for k in ("op", "ms_per_step", "source") if k in r} for r in rows]


_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>.*?) (?P<op>[a-z][a-z0-9\-]*)\((?P<args>.*)$")
_DTYPE = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+)\[")
_SIGMOID_OPS = {"logistic", "exponential"}  # SiLU's sigmoid: XLA's GPU keeps `logistic`, its CPU expands it


def hlo_summary(hlo_text: str) -> dict:
  """What an optimized HLO module (``jax.jit(f).lower(...).compile().as_text()``) runs, for
  questions a timing cannot answer: which convolutions run on integer operands and through which
  library call, and whether the SiLU before an integer layer is fused into the op that writes its
  integer codes (the GroupNorm + SiLU + quantize prologue) or written out in float first.

  Returns {"fusions": n, "custom_calls": {target: n}, "convolutions": {"<kind> <operand dtypes> ->
  <result dtype>": n}, "integer_fusions": n (fusions writing integer data), "integer_fusions_with_
  sigmoid": n (of those, bodies with a logistic/exponential), "float_fusions_with_sigmoid": n}, over
  the module's non-fused computations (a fusion's body counts through its fusion instruction).
  """
  bodies: dict[str, set[str]] = {}  # computation -> its opcodes
  dtypes: dict[str, str] = {}  # instruction -> its (first) result dtype
  instructions: list[tuple[str, str, str, str]] = []  # (computation, result dtype, opcode, args)
  current = None
  for line in hlo_text.splitlines():
    if (m := _COMPUTATION.match(line)) is not None:
      current = m.group(1)
      bodies[current] = set()
    elif current is not None and (m := _INSTRUCTION.match(line)) is not None:
      result = _DTYPE.search(m.group("shape"))
      dtypes[m.group("name")] = result.group(1) if result else "?"
      bodies[current].add(m.group("op"))
      instructions.append((current, dtypes[m.group("name")], m.group("op"), m.group("args")))
  called = {c for *_, args in instructions for c in re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", args)}
  summary = dict(fusions=0, custom_calls=collections.Counter(), convolutions=collections.Counter(),
                 integer_fusions=0, integer_fusions_with_sigmoid=0, float_fusions_with_sigmoid=0)
  for computation, dtype, op, args in instructions:
    if computation in called:  # fusion bodies and reducers count through their callers
      continue
    target = re.search(r'custom_call_target="([^"]+)"', args)
    if op == "custom-call":
      summary["custom_calls"][target.group(1)] += 1
    if op == "convolution" or (target and "conv" in target.group(1).lower()):
      operands = [dtypes.get(name, "?") for name in re.findall(r"%([\w.\-]+)", args.split(")")[0])[:2]]
      summary["convolutions"][f"{target.group(1) if target else op} {','.join(operands)} -> {dtype}"] += 1
    if op == "fusion":
      summary["fusions"] += 1
      body = re.search(r"calls=%([\w.\-]+)", args)
      sigmoid = body is not None and bool(bodies.get(body.group(1), set()) & _SIGMOID_OPS)
      if dtype[0] in "su" and dtype[1:].isdigit():
        summary["integer_fusions"] += 1
        summary["integer_fusions_with_sigmoid"] += sigmoid
      elif dtype in ("bf16", "f16", "f32"):
        summary["float_fusions_with_sigmoid"] += sigmoid
  return {k: dict(v) if isinstance(v, collections.Counter) else v for k, v in summary.items()}


def _is_op(name: str) -> bool:
  """Not a Python frame ($file:line), a C++ runtime scope (A::B) or an end marker."""
  return not (name.startswith(("$", "end: ")) or "::" in name)


class StepProfiler:
  """Traces steps [first, last] of a loop: call `before(step)` and `after(step, outputs)` around each
  step (1-based) and `close()` at the end; the summary is written after `last` (see module doc).
  On a multi-host run only process 0 traces (its devices run the same program as the others')."""

  def __init__(self, steps: tuple[int, int] | None, directory: str):
    if steps and not 1 <= steps[0] <= steps[1]:
      raise ValueError(f"profile_steps must be (first, last) with 1 <= first <= last, got {tuple(steps)}")
    self.steps = tuple(steps) if steps and jax.process_index() == 0 else None
    self.directory = directory
    self.summary: list[dict] = []
    self._tracing = False

  def before(self, step: int) -> None:
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.directory)
      self._tracing = True

  def after(self, step: int, outputs) -> None:
    if not (self._tracing and step == self.steps[1]):
      return
    jax.block_until_ready(outputs)
    self.close()
    self.summary = summarize_trace(self.directory, steps=self.steps[1] - self.steps[0] + 1)
    atomic_write_text(os.path.join(self.directory, "profile_summary.json"), json.dumps(self.summary, indent=1))
    log.info("profile of steps %d-%d in %s; per step: %s", *self.steps, self.directory,
             "; ".join(f"{r['op']} {r['ms_per_step']:.1f} ms" for r in self.summary[:5]))

  def close(self) -> None:
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
