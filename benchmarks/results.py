"""The one schema of every results file (benchmarks/results/*.json and what the benchmarks write):

    {"command": "python -m benchmarks.bench_fp --impl jax ...",   # what produced the rows
     "commit": "e512aca",                                          # of the code that ran
     "date": "2026-12-03T15:04:05+00:00",                          # UTC, when written
     "machine": "1x NVIDIA H200; x86_64 host, 16 CPU cores",
     "versions": {"python": "3.12.3", "jax": "0.11.2", ...},
     "rows": [{...}, ...],                                          # one dict per measurement
     "summary": {...}}                                              # optional: derived figures

Rows carried over from another run (`append`, `merge`) keep that run's own ``command``, ``commit``
and ``date`` inside the row, so every row names the command that measured it. Files are written
atomically; a bad file is refused with a one-line error naming it and the key.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys

from quantface_jax.fileio import atomic_write_text

REQUIRED = {
  "command": str,
  "commit": str,
  "date": str,
  "machine": str,
  "versions": dict,
  "rows": list,
}
OPTIONAL = {"summary": dict}
PROVENANCE = ("command", "commit", "date")  # what a carried-over row keeps of its own run
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "optax", "torch", "diffusers")
REPO = pathlib.Path(__file__).resolve().parents[1]


class ResultsError(ValueError):
  """A results file that does not have the schema (the message names the file and the key)."""


def command_line() -> str:
  """How this process was started, as a shell command (``python -m benchmarks.x ...``)."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  start = (
    ["python", "-m", spec.name] if spec and spec.name != "__main__" else ["python", sys.argv[0]]
  )
  return shlex.join(start + sys.argv[1:])


def commit() -> str:
  """The checkout's commit (``-dirty`` with uncommitted changes); ``QUANTFACE_COMMIT`` when the
  tree travelled without its .git; else ``unknown``."""
  if os.environ.get("QUANTFACE_COMMIT"):
    return os.environ["QUANTFACE_COMMIT"]
  try:
    described = subprocess.run(
      ["git", "describe", "--always", "--dirty", "--abbrev=7"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=30,
    )
  except (OSError, subprocess.TimeoutExpired):
    return "unknown"
  return described.stdout.strip() if described.returncode == 0 else "unknown"


def machine() -> str:
  """The accelerators (when this process has already imported jax) and the host."""
  host = f"{platform.machine()} host, {os.cpu_count()} CPU cores"
  jax = sys.modules.get("jax")
  if jax is None or jax.default_backend() == "cpu":
    return host
  devices = jax.devices()
  return f"{len(devices)}x {devices[0].device_kind}; {host}"


def versions() -> dict[str, str]:
  """Python's and the installed versions of the libraries a measurement depends on."""
  found = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return found


def header(command: str | None = None) -> dict:
  """Everything but the rows: command (default: this process's), commit, date, machine, versions."""
  return dict(
    command=command or command_line(),
    commit=commit(),
    date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    machine=machine(),
    versions=versions(),
  )


def check(doc, source: os.PathLike | str) -> dict:
  """``doc`` if it has the schema, else `ResultsError` naming ``source`` and the key."""
  if not isinstance(doc, dict):
    raise ResultsError(f"{source}: not a JSON object with the results schema")
  for key, kind in REQUIRED.items():
    if not isinstance(doc.get(key), kind):
      raise ResultsError(f"{source}: key {key!r} missing or not a {kind.__name__}")
  for key in doc.keys() - REQUIRED.keys():
    if key not in OPTIONAL or not isinstance(doc[key], OPTIONAL[key]):
      raise ResultsError(f"{source}: unexpected key {key!r}")
  for i, row in enumerate(doc["rows"]):
    if not isinstance(row, dict):
      raise ResultsError(f"{source}: rows[{i}] is not an object")
  return doc


def read(path: os.PathLike | str) -> dict:
  """A results file, checked."""
  try:
    doc = json.loads(pathlib.Path(path).read_text())
  except (OSError, json.JSONDecodeError) as err:
    raise ResultsError(f"{path}: {err}") from None
  return check(doc, path)


def write(path, rows: list[dict], *, summary: dict | None = None, command: str | None = None):
  """Writes ``rows`` under a fresh `header` to ``path`` (atomically) and returns the document."""
  doc = dict(header(command), rows=list(rows))
  if summary is not None:
    doc["summary"] = summary
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  atomic_write_text(path, json.dumps(check(doc, path), indent=1) + "\n")
  return doc


def carried(doc: dict, into: dict) -> list[dict]:
  """``doc``'s rows, each stamped with ``doc``'s command, commit and date when ``doc`` is another
  run than ``into`` (another command or commit; a row that already names its own run keeps it)."""
  if all(doc[k] == into[k] for k in ("command", "commit")):
    return list(doc["rows"])
  return [{**{k: doc[k] for k in PROVENANCE}, **row} for row in doc["rows"]]


def append(path, rows: list[dict], *, summary: dict | None = None, command: str | None = None):
  """Adds ``rows`` to the results file ``path`` (created if absent), rewriting it atomically: a run
  cut short keeps every row it finished. Rows of an earlier run keep its provenance (`carried`)."""
  path = pathlib.Path(path)
  head = header(command)
  earlier = read(path) if path.exists() else None
  kept = carried(earlier, head) if earlier else []
  if summary is None and earlier is not None:
    summary = earlier.get("summary")
  return write(path, kept + list(rows), summary=summary, command=head["command"])


def merge(path, sources: list[os.PathLike | str], *, command: str | None = None) -> dict:
  """One results file at ``path`` from the files ``sources`` (in order), each row keeping its own
  run's provenance where it differs from the merged file's."""
  head = header(command)
  rows = [row for source in sources for row in carried(read(source), head)]
  return write(path, rows, command=head["command"])
