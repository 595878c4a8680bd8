"""Adaptive bit-width allocation: sensitivity tables and the integer program."""

from quantface_jax.alloc.allocate import AllocateResult
from quantface_jax.alloc.allocate import add_allocate_parser
from quantface_jax.alloc.allocate import allocate
from quantface_jax.alloc.allocate import cmd_allocate

from quantface_jax.alloc.program import Allocation
from quantface_jax.alloc.program import AllocationProblem
from quantface_jax.alloc.program import allocate_bits
from quantface_jax.alloc.program import allocation_meta
from quantface_jax.alloc.program import allocation_to_bits_map
from quantface_jax.alloc.program import build_problem
from quantface_jax.alloc.program import load_bits_map
from quantface_jax.alloc.program import save_bits_map
from quantface_jax.alloc.program import solve_brute_force
from quantface_jax.alloc.program import solve_with_cvxpy
from quantface_jax.alloc.program import solve_with_highspy
from quantface_jax.alloc.sensitivity import SensitivityTable
from quantface_jax.alloc.sensitivity import layer_sizes
from quantface_jax.alloc.sensitivity import sensitivity_sweep
