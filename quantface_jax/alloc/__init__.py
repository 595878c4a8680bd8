"""Adaptive bit-width allocation: sensitivity tables and the integer program."""

from quantface_jax.alloc.allocate import AllocateResult, add_allocate_parser, allocate, cmd_allocate
from quantface_jax.alloc.program import (
  Allocation,
  AllocationProblem,
  allocate_bits,
  allocation_meta,
  allocation_to_bits_map,
  build_problem,
  load_bits_map,
  save_bits_map,
  solve_brute_force,
  solve_with_cvxpy,
  solve_with_highspy,
)
from quantface_jax.alloc.sensitivity import SensitivityTable, layer_sizes, sensitivity_sweep
