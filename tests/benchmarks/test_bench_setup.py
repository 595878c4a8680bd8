"""benchmarks/bench_setup.py: the structural QD-LoRA student is the calibrated one's program."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_setup  # noqa: E402  pylint: disable=wrong-import-position


def test_structural_student_has_the_calibrated_students_structure():
  assert bench_setup.structure_matches("tiny") == dict(graphdef=True, state=True, bits=True)
