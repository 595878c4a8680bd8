"""benchmarks.results: every results file in the tree has the one schema, and the writer keeps each
row's provenance when runs are combined."""

import json
import pathlib

import pytest

from benchmarks import results

RESULTS = pathlib.Path(results.__file__).parent / "results"


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_results_file_has_the_schema(path):
  doc = results.read(path)
  assert doc["rows"] and doc["commit"] and doc["machine"]


def test_results_folder_holds_only_results_and_their_tables_and_plots():
  assert {p.suffix for p in RESULTS.iterdir()} <= {".json", ".md", ".png"}


def test_write_fills_the_header_and_append_keeps_earlier_runs(tmp_path):
  path = tmp_path / "r.json"
  first = results.write(path, [dict(x=1)], command="python -m benchmarks.a", summary=dict(n=1))
  assert set(first) == set(results.REQUIRED) | {"summary"}
  assert first["versions"]["jax"] and first["date"].endswith("+00:00")
  results.append(path, [dict(x=2)], command="python -m benchmarks.a")  # the same run
  results.append(path, [dict(x=3)], command="python -m benchmarks.b")  # another run
  doc = results.read(path)
  assert doc["command"] == "python -m benchmarks.b" and doc["summary"] == dict(n=1)
  assert [r["x"] for r in doc["rows"]] == [1, 2, 3]
  assert [r.get("command") for r in doc["rows"]] == ["python -m benchmarks.a"] * 2 + [None]
  assert doc["rows"][0]["date"] == first["date"]


def test_merge_stamps_each_source_only_where_it_differs(tmp_path):
  a, b = tmp_path / "a.json", tmp_path / "b.json"
  results.write(a, [dict(x=1)], command="part a")
  results.write(b, [dict(x=2), dict(x=3, command="older run", commit="0000000")], command="part b")
  merged = results.merge(tmp_path / "m.json", [a, b], command="driver")
  assert [(r["x"], r["command"]) for r in merged["rows"]] == [
    (1, "part a"),
    (2, "part b"),
    (3, "older run"),
  ]
  assert merged["rows"][2]["commit"] == "0000000"


@pytest.mark.parametrize(
  "doc, message",
  [
    ([], "not a JSON object"),
    (dict(rows=[]), "key 'command'"),
    (dict(command="c", commit="c", date="d", machine="m", versions={}, rows=[1]), r"rows\[0\]"),
    (
      dict(command="c", commit="c", date="d", machine="m", versions={}, rows=[], notes=""),
      "unexpected key 'notes'",
    ),
  ],
)
def test_a_file_without_the_schema_is_refused_naming_file_and_key(tmp_path, doc, message):
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(doc))
  with pytest.raises(results.ResultsError, match=message) as err:
    results.read(path)
  assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
