"""Workflows: structure relaxation and the Sol58LC density benchmark."""

from crossfunctional.workflows.density import (
    DensityBenchmark,
    Solid,
    build_solid,
    conventional_lattice_constant,
    density,
    density_benchmark,
    load_sol58lc,
)
from crossfunctional.workflows.relax import RelaxResult, relax

__all__ = [
    "DensityBenchmark",
    "RelaxResult",
    "Solid",
    "build_solid",
    "conventional_lattice_constant",
    "density",
    "density_benchmark",
    "load_sol58lc",
    "relax",
]
