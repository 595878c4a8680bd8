"""benchmarks.gpu: suites expand into parts, each part runs in its own process under a timeout, and a
rerun skips what finished."""

import argparse
import os
import shlex
import sys
import time

import pytest

from benchmarks import gpu, results

WRITES = "import sys; from benchmarks import results; results.write(sys.argv[1], [dict(x=1)])"
# The same file without importing the package (a second instead of ten on two busy cores).
QUICK = (
  "import json, sys; json.dump(dict(command='python -c quick', commit='c', date='d', machine='m', "
  "versions={}, rows=[dict(x=1)]), open(sys.argv[1], 'w'))"
)


def fake(name, code, **kwargs):
  return gpu.Part(name, (sys.executable, "-c", code, "{rows}"), **kwargs)


def run(part, folder, *, budget_s=1e9, min_part_s=0):
  args = argparse.Namespace(part_timeout_s=None, min_part_s=min_part_s)
  return gpu.run_part(part, folder, dict(os.environ), time.monotonic() + budget_s, args)


def test_a_finished_part_is_skipped_on_rerun(tmp_path):
  assert run(fake("a", WRITES), tmp_path) == "done"
  assert results.read(tmp_path / "a.json")["rows"] == [dict(x=1)]
  assert run(fake("a", "raise SystemExit(3)"), tmp_path) == "done"  # not run again


def test_a_part_cut_by_its_timeout_keeps_its_rows_and_runs_again(tmp_path):
  slow = QUICK + "; import time; time.sleep(300)"
  start = time.monotonic()
  assert run(fake("b:compile", slow, timeout_s=10), tmp_path) == "cut"
  assert time.monotonic() - start < 60
  assert results.read(tmp_path / "b_compile.cut.json")["rows"] == [dict(x=1)]
  assert not (tmp_path / "b_compile.json").exists()
  assert run(fake("b:compile", QUICK), tmp_path) == "done"
  assert not (tmp_path / "b_compile.cut.json").exists()


def test_failed_skipped_and_rowless_parts(tmp_path):
  assert run(fake("fails", "raise SystemExit(3)"), tmp_path) == "failed"
  assert "SystemExit" not in (tmp_path / "fails.log").read_text()  # the part's own output only
  assert run(fake("late", QUICK), tmp_path, budget_s=30, min_part_s=60) == "skipped"
  assert run(fake("refused", QUICK, before=lambda: "no PTQ start"), tmp_path) == "skipped"
  assert run(fake("setup", "pass"), tmp_path) == "done"  # a stage that leaves a cache, not rows
  assert results.read(tmp_path / "setup.json")["rows"] == []


def test_a_part_whose_outputs_are_gone_runs_again(tmp_path):
  output = tmp_path / "serve_dirs"
  assert run(fake("export", QUICK, outputs=(output,)), tmp_path) == "done"
  assert run(fake("export", "raise SystemExit(3)", outputs=(output,)), tmp_path) == "failed"


def plan(*specs, options=()):
  args = gpu.arguments().parse_args([*specs, *options])
  return {suite: [p.name for p in parts] for suite, parts in gpu.plan(args.suites, args)}


def test_suites_expand_into_parts_and_qdlora_into_stages():
  assert plan("fp:jax_bf16,torch_compile_fp16") == {"fp": ["jax_bf16", "torch_compile_fp16"]}
  assert plan("sd21") == {"sd21": ["sweep", "qdlora_b8:setup", "qdlora_b8:compile", "qdlora_b8"]}
  assert plan("sd21:qdlora_remat_b4", options=["--qdlora-args=--student structure"]) == {
    "sd21": ["qdlora_remat_b4:compile", "qdlora_remat_b4"]
  }
  assert plan("sd21:qdlora_b4:compile") == {"sd21": ["qdlora_b4:compile"]}
  assert list(plan("serve", "kernels", "qdlora", "train_mini")) == [
    "serve",
    "kernels",
    "qdlora",
    "train_mini",
  ]


@pytest.mark.parametrize(
  "spec, message",
  [("gpu", "unknown suite 'gpu'"), ("fp:jax", "fp: unknown part 'jax'"), ("sd21:qdlora_b8:go", "")],
)
def test_unknown_suites_and_parts_are_refused(spec, message):
  with pytest.raises(SystemExit, match=message or "unknown part"):
    plan(spec)


def test_the_driver_merges_each_suites_parts_into_one_results_file(tmp_path, monkeypatch):
  def build(names, args):
    return [fake(n, QUICK.replace("quick", n)) for n in names]

  suite = gpu.Suite(("a", "b"), build, {"a", "b"}.__contains__, "a, b")
  monkeypatch.setitem(gpu.SUITES, "fake", suite)
  empty = str(tmp_path / "absent")
  common = ["--out", str(tmp_path), "--cache", str(tmp_path / "cache")]
  gpu.main(["fake", *common, "--wheels", empty, "--autotune", empty])
  doc = results.read(tmp_path / "fake.json")
  assert [r["command"] for r in doc["rows"]] == ["python -c a", "python -c b"]
  argv = ["fake", *common, "--wheels", empty, "--autotune", empty]
  assert doc["command"] == shlex.join(["python", "-m", "benchmarks.gpu", *argv])
