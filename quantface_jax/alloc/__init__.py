"""Adaptive bit-width allocation: sensitivity tables and the integer program (docs/design.md §2.5).

The bits-map file it writes is `quantface_jax.quant.bits_map`.
"""

from quantface_jax.alloc.allocate import AllocateResult, allocate
from quantface_jax.alloc.program import (
  Allocation,
  AllocationProblem,
  allocate_bits,
  allocation_meta,
  allocation_to_bits_map,
  build_problem,
  solve_brute_force,
  solve_with_cvxpy,
  solve_with_highspy,
)
from quantface_jax.alloc.sensitivity import SensitivityTable, layer_sizes, sensitivity_sweep

__all__ = [
  "AllocateResult",
  "Allocation",
  "AllocationProblem",
  "SensitivityTable",
  "allocate",
  "allocate_bits",
  "allocation_meta",
  "allocation_to_bits_map",
  "build_problem",
  "layer_sizes",
  "sensitivity_sweep",
  "solve_brute_force",
  "solve_with_cvxpy",
  "solve_with_highspy",
]
