"""examples/quickstart.ipynb runs top to bottom on the `tiny` model with `rtn` (code cells in one
namespace, no Jupyter kernel)."""

import json
import pathlib

import matplotlib

REPO = pathlib.Path(__file__).resolve().parents[1]  # the repository's root

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def code_cells() -> list[str]:
  cells = json.loads(NOTEBOOK.read_text())["cells"]
  code = [cell for cell in cells if cell["cell_type"] == "code"]
  assert all(not cell["outputs"] and cell["execution_count"] is None for cell in code), (
    f"{NOTEBOOK.name} is stored with outputs"
  )
  return ["".join(cell["source"]) for cell in code]


def test_quickstart_notebook_runs_on_tiny(monkeypatch):
  monkeypatch.setenv("QUANTFACE_MODEL", "tiny")
  monkeypatch.setenv("QUANTFACE_RECIPE", "rtn")
  matplotlib.use("Agg")
  namespace = {}
  for number, source in enumerate(code_cells(), start=1):
    exec(compile(source, f"{NOTEBOOK.name}, code cell {number}", "exec"), namespace)
  namespace["plt"].close("all")
  assert namespace["resolution"] == 32  # the tiny model ran
  assert len(namespace["traces"]) == 1  # three bit allocations, one compilation
  metrics = namespace["metrics"]
  assert list(metrics) == ["fp32", "W8A8", "W6A6", "W4A4"]
  assert metrics["W8A8"]["psnr_vs_fp"] > metrics["W4A4"]["psnr_vs_fp"]
  assert metrics["W8A8"]["psnr_vs_fp"] > 25  # 8-bit stays close to the FP restore, 4-bit does not
