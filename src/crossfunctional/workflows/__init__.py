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
from crossfunctional.workflows.batch_relax import relax_many
from crossfunctional.workflows.relax import RelaxResult, relax
from crossfunctional.workflows.stability import StabilityBenchmark, stability_benchmark

__all__ = [
    "DensityBenchmark",
    "PhononResult",
    "RelaxResult",
    "StabilityBenchmark",
    "Solid",
    "build_solid",
    "conventional_lattice_constant",
    "density",
    "density_benchmark",
    "load_sol58lc",
    "phonons",
    "relax",
    "relax_many",
    "stability_benchmark",
]
