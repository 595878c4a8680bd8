"""Where a program's time goes, read in Python: `jax.profiler` traces and optimized HLO text.

- `trace_calls` / `summarize_trace`: the heaviest ops of a traced call (device kernels on a GPU, XLA's
  thunks on the CPU backend's host threads), per call, heaviest first.
- `hlo_summary`, `op_kinds`, `time_by_kind`: what a compiled program runs (which convolutions run on
  integer operands, which fusions write integer codes), so that a trace's per-op times add up by
  kind of op.
- `StepProfiler`: the trainer's tracer of chosen steps (``train.profile_steps``), which writes
  ``profile_summary.json`` beside the trace. No TensorBoard needed: the trace itself is still there
  for it (or Perfetto) when a row needs a closer look.
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


def summarize_trace(
  trace_dir: str, *, steps: int, top: int | None = 40, device_only: bool = False
) -> list[dict]:
  """Rows {plane, op, ms_per_step, calls_per_step, share[, source]} of the newest trace under `trace_dir`.

  Device planes (``/device:...``) count their stream lines (kernels; an ``hlo_op`` stat names the
  XLA op); host planes count XLA's ops on every thread but Python's, leaving out the runtime's
  C++ scopes (``ThunkExecutor::Execute`` and the like, which enclose the ops and would count them
  twice). ``share`` is the op's fraction of its plane's counted time; ``source``, where the trace
  has it, is the JAX operation the op came from (its ``tf_op`` or ``long_name`` stat). `steps`: how
  many steps the trace holds (the per-step divisor); `top` None keeps every row; `device_only` drops
  the host planes when the trace has a device plane.
  """
  paths = sorted(
    glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime
  )
  if not paths:
    raise FileNotFoundError(f"no *.xplane.pb trace under {trace_dir}")
  profile = jax.profiler.ProfileData.from_file(paths[-1])
  rows = []
  planes = list(profile.planes)
  if device_only and any(p.name.startswith("/device:") for p in planes):
    planes = [p for p in planes if p.name.startswith("/device:")]
  for plane in planes:
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
    rows += [
      dict(
        plane=plane.name,
        op=op,
        ms_per_step=ns / 1e6 / steps,
        calls_per_step=calls[op] / steps,
        share=ns / total,
        **({"source": sources[op]} if sources[op] else {}),
      )
      for op, ns in time_ns.most_common()
    ]
  device_first = lambda row: (not row["plane"].startswith("/device:"), -row["ms_per_step"])
  return sorted(rows, key=device_first)[:top]


def trace_calls(call, *, calls: int, top: int | None, device_only: bool = False) -> list[dict]:
  """The `top` (None: all) heaviest ops ({op, ms_per_step[, source]}, device first) of ``calls`` runs of
  ``call()`` (each waited for), traced into a temporary directory. On a GPU, ops that XLA runs
  inside CUDA graphs appear as ``command_buffer_N``: ``XLA_FLAGS=--xla_gpu_enable_command_buffer=``
  names them."""
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(calls):
      jax.block_until_ready(call())
    jax.profiler.stop_trace()
    rows = summarize_trace(trace_dir, steps=calls, top=top, device_only=device_only)
  return [{k: r[k] for k in ("op", "ms_per_step", "source") if k in r} for r in rows]


_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(
  r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>.*?) (?P<op>[a-z][a-z0-9\-]*)\((?P<args>.*)$"
)
_DTYPE = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+)\[")
_SIGMOID_OPS = {
  "logistic",
  "exponential",
}  # SiLU's sigmoid: XLA's GPU keeps `logistic`, its CPU expands it


def _parse_hlo(hlo_text: str):
  """(bodies: computation -> its opcodes, dtypes: instruction -> its first result dtype,
  instructions: [(computation, name, result dtype, opcode, args)], called: computations that are
  fusion bodies or reducers) of an optimized HLO module's text."""
  bodies: dict[str, set[str]] = {}
  dtypes: dict[str, str] = {}
  instructions: list[tuple[str, str, str, str, str]] = []
  current = None
  for line in hlo_text.splitlines():
    if (m := _COMPUTATION.match(line)) is not None:
      current = m.group(1)
      bodies[current] = set()
    elif current is not None and (m := _INSTRUCTION.match(line)) is not None:
      result = _DTYPE.search(m.group("shape"))
      dtypes[m.group("name")] = result.group(1) if result else "?"
      bodies[current].add(m.group("op"))
      instructions.append(
        (current, m.group("name"), dtypes[m.group("name")], m.group("op"), m.group("args"))
      )
  called = {
    c for *_, args in instructions for c in re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", args)
  }
  return bodies, dtypes, instructions, called


def _operands(args: str) -> list[str]:
  """The instruction names an HLO instruction's argument list starts with."""
  return re.findall(r"%([\w.\-]+)", args.split(")")[0])


def _is_integer(dtype: str) -> bool:
  return dtype[0] in "su" and dtype[1:].isdigit()


def _custom_call_target(args: str) -> str | None:
  target = re.search(r'custom_call_target="([^"]+)"', args)
  return target.group(1) if target else None


def _is_conv(op: str, target: str | None) -> bool:
  """An HLO convolution or a library call that runs one (cuDNN's)."""
  return op == "convolution" or (target is not None and "conv" in target.lower())


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
  bodies, dtypes, instructions, called = _parse_hlo(hlo_text)
  summary = dict(
    fusions=0,
    custom_calls=collections.Counter(),
    convolutions=collections.Counter(),
    integer_fusions=0,
    integer_fusions_with_sigmoid=0,
    float_fusions_with_sigmoid=0,
  )
  for computation, _, dtype, op, args in instructions:
    if computation in called:  # fusion bodies and reducers count through their callers
      continue
    target = _custom_call_target(args)
    if op == "custom-call":
      summary["custom_calls"][target] += 1
    if _is_conv(op, target):
      operands = [dtypes.get(name, "?") for name in _operands(args)[:2]]
      summary["convolutions"][f"{target or op} {','.join(operands)} -> {dtype}"] += 1
    if op == "fusion":
      summary["fusions"] += 1
      body = re.search(r"calls=%([\w.\-]+)", args)
      sigmoid = body is not None and bool(bodies.get(body.group(1), set()) & _SIGMOID_OPS)
      if _is_integer(dtype):
        summary["integer_fusions"] += 1
        summary["integer_fusions_with_sigmoid"] += sigmoid
      elif dtype in ("bf16", "f16", "f32"):
        summary["float_fusions_with_sigmoid"] += sigmoid
  return {k: dict(v) if isinstance(v, collections.Counter) else v for k, v in summary.items()}


def op_kinds(hlo_text: str) -> dict[str, str]:
  """A kind for each op a compiled program runs (instruction name -> kind), so that a trace's
  per-op times (`trace_calls`) add up to where the time goes:

  - ``conv <operand dtypes> -> <result>``: a convolution (an HLO one or a cuDNN call);
  - ``gemm <operand dtypes> -> <result>``: a cuBLAS call, an HLO dot, or a fusion around one
    (XLA's Triton GEMMs);
  - ``attention``: a fused attention call (cuDNN's flash attention);
  - ``quantize -> <int>``: any other fusion that writes integer codes;
  - ``dequantize (reads an integer op's output)``: a fusion fed by an integer conv or GEMM, the
    epilogue a float layer does not have;
  - ``reduction -> <dtype>``: a fusion with a reduce (GroupNorm's statistics, softmax);
  - ``elementwise -> <dtype>``: the other fusions;
  - otherwise the opcode (``copy``, ``transpose``, a custom call's target...).
  """
  bodies, dtypes, instructions, called = _parse_hlo(hlo_text)
  kinds: dict[str, str] = {}
  source: dict[str, str] = {}  # get-tuple-element -> the instruction it unpacks
  integer_ops: set[str] = set()  # convs and GEMMs on integer operands
  for computation, name, dtype, op, args in instructions:
    if computation in called:
      continue
    operands = _operands(args)
    operand_dtypes = ",".join(dtypes.get(o, "?") for o in operands[:2])
    target = _custom_call_target(args)
    body = re.search(r"calls=%([\w.\-]+)", args)
    body_ops = bodies.get(body.group(1), set()) if body else set()
    is_conv = _is_conv(op, target)
    is_gemm = not is_conv and (
      op == "dot"
      or bool(body_ops & {"dot", "convolution"})
      or (target is not None and ("cublas" in target or "gemm" in target.lower()))
    )
    if (is_conv or is_gemm) and operands and _is_integer(dtypes.get(operands[0], "?")):
      integer_ops.add(name)
    if op == "get-tuple-element":
      source[name] = source.get(operands[0], operands[0])
      kind = "get-tuple-element"
    elif is_conv:
      kind = f"conv {operand_dtypes} -> {dtype}"
    elif is_gemm:
      kind = f"gemm {operand_dtypes} -> {dtype}"
    elif target and ("fmha" in target or "attention" in target.lower()):
      kind = "attention"
    elif op == "fusion":
      if _is_integer(dtype):
        kind = f"quantize -> {dtype}"
      elif any(source.get(o, o) in integer_ops for o in operands):
        kind = "dequantize (reads an integer op's output)"
      elif "reduce" in body_ops:
        kind = f"reduction -> {dtype}"
      else:
        kind = f"elementwise -> {dtype}"
    else:
      kind = target or op
    kinds[name] = kind
  return kinds


def time_by_kind(ops: list[dict], kinds: dict[str, str]) -> list[dict]:
  """Rows {kind, ms_per_step, ops} of the traced ``ops`` (`trace_calls` rows) summed by `op_kinds`,
  heaviest first; ops the program's text does not name (a trace's runtime events) are ``other``."""
  ms, count = collections.Counter(), collections.Counter()
  for row in ops:
    kind = kinds.get(row["op"], "other")
    ms[kind] += row["ms_per_step"]
    count[kind] += 1
  return [dict(kind=k, ms_per_step=round(v, 4), ops=count[k]) for k, v in ms.most_common()]


def _is_op(name: str) -> bool:
  """Not a Python frame ($file:line), a C++ runtime scope (A::B) or an end marker."""
  return not (name.startswith(("$", "end: ")) or "::" in name)


class StepProfiler:
  """Traces steps [first, last] of a loop: call `before(step)` and `after(step, outputs)` around each
  step (1-based) and `close()` at the end; the summary is written after `last` (see module doc).
  On a multi-host run only process 0 traces (its devices run the same program as the others')."""

  def __init__(self, steps: tuple[int, int] | None, directory: str):
    if steps and not 1 <= steps[0] <= steps[1]:
      raise ValueError(
        f"profile_steps must be (first, last) with 1 <= first <= last, got {tuple(steps)}"
      )
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
    atomic_write_text(
      os.path.join(self.directory, "profile_summary.json"), json.dumps(self.summary, indent=1)
    )
    log.info(
      "profile of steps %d-%d in %s; per step: %s",
      *self.steps,
      self.directory,
      "; ".join(f"{r['op']} {r['ms_per_step']:.1f} ms" for r in self.summary[:5]),
    )

  def close(self) -> None:
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
