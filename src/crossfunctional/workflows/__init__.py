"""Workflows: relaxation, the Sol58LC density benchmark, phonons (phonopy, optional extra),
equation of state, elastic constants, the BM32 bulk-modulus benchmark, layered solids."""

from crossfunctional.workflows.bulk_moduli import BulkModuliBenchmark, bulk_moduli_benchmark, load_bm32
from crossfunctional.workflows.density import (
    DensityBenchmark,
    Solid,
    build_solid,
    conventional_lattice_constant,
    density,
    density_benchmark,
    load_sol58lc,
)
from crossfunctional.workflows.elastic import ElasticResult, elastic
from crossfunctional.workflows.eos import EOSResult, eos
from crossfunctional.workflows.layered import LayeredBenchmark, layered_benchmark, load_layered_solids
from crossfunctional.workflows.phonons import PhononResult, phonons
from crossfunctional.workflows.batch_relax import relax_many
from crossfunctional.workflows.relax import RelaxResult, relax
from crossfunctional.workflows.stability import StabilityBenchmark, stability_benchmark

__all__ = [
    "BulkModuliBenchmark",
    "DensityBenchmark",
    "EOSResult",
    "ElasticResult",
    "LayeredBenchmark",
    "PhononResult",
    "RelaxResult",
    "StabilityBenchmark",
    "Solid",
    "build_solid",
    "bulk_moduli_benchmark",
    "conventional_lattice_constant",
    "density",
    "density_benchmark",
    "elastic",
    "eos",
    "layered_benchmark",
    "load_bm32",
    "load_layered_solids",
    "load_sol58lc",
    "phonons",
    "relax",
    "relax_many",
    "stability_benchmark",
]
