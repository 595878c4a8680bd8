"""benchmarks.remeasure_mini: its QD-LoRA eval labels the variants that qdlora_table needs, and its
work folders are keyed by the weights."""

import hashlib

from benchmarks import qdlora_table, remeasure_mini


def test_the_eval_labels_every_variant_of_the_qdlora_table():
  steps = remeasure_mini.commands("qdlora", "runs/w")
  evaluate = next(c for c in steps if "eval" in c)
  labels = {a.split("=")[1] for a in evaluate if a.startswith("--quant=")}
  needed = {key for key, _ in qdlora_table.ROWS} - {"input", "fp", "baseline"}
  assert labels == needed
  assert steps[-1][-2:] == ["benchmarks.qdlora_table", evaluate[evaluate.index("--out") + 1]]


def test_work_folders_are_keyed_by_the_weights(tmp_path):
  weights = tmp_path / "model.safetensors"
  weights.write_bytes(b"weights")
  assert remeasure_mini.weights_key(weights) == hashlib.sha256(b"weights").hexdigest()[:10]
  assert remeasure_mini.commands("ptq", "runs/k")[0][-2:] == ["--out", "runs/k/ptq"]
