"""Workflows: relaxation, the Sol58LC density benchmark, phonons (phonopy, optional extra)."""

from crossfunctional.workflows.density import (
    DensityBenchmark,
    Solid,
    build_solid,
    conventional_lattice_constant,
    density,
    density_benchmark,
    load_sol58lc,
)
from crossfunctional.workflows.phonons import PhononResult, phonons
from crossfunctional.workflows.relax import RelaxResult, relax

__all__ = [
    "DensityBenchmark",
    "PhononResult",
    "RelaxResult",
    "Solid",
    "build_solid",
    "conventional_lattice_constant",
    "density",
    "density_benchmark",
    "load_sol58lc",
    "phonons",
    "relax",
]
