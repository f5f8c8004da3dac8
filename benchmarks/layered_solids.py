"""Layered solids (graphite, h-BN, 2H-MoS2, black phosphorus) with and without dispersion.

Runs :func:`crossfunctional.workflows.layered_benchmark`: each solid built
from its prototype at the experimental lattice, relaxed (FIRE +
``FrechetCellFilter`` + ``FixSymmetry``, fmax 1e-3 eV/Å, float64) with every
model and dispersion setting, and compared with the experimental in-plane
lattice constant(s) and interlayer distance (room temperature, cited per value
in ``crossfunctional/data/layered_solids_expt.csv``).

Written to ``--output`` (default ``benchmarks/results/dispersion/layered``):
``layered_benchmark.json``, ``layered_benchmark.csv``, ``layered_errors.png``.

Usage (from the repository root)::

    python benchmarks/layered_solids.py                             # 4 solids x 2 models x 3 settings, about a minute
    python benchmarks/layered_solids.py --dispersions none d3bj d4 d4-atm
    python benchmarks/layered_solids.py --solids graphite --output /tmp/layered
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from crossfunctional.workflows.layered import layered_benchmark  # noqa: E402

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["chgnet-r2scan", "chgnet-0.3.0"])
    parser.add_argument("--dispersions", nargs="+", default=["none", "d3bj", "d4"])
    parser.add_argument("--solids", nargs="+", default=None)
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "dispersion" / "layered")
    args = parser.parse_args()
    start = time.perf_counter()
    bench = layered_benchmark(
        models=args.models, dispersions=[None if d == "none" else d for d in args.dispersions], solids=args.solids
    )
    bench.protocol["seconds"] = round(time.perf_counter() - start, 1)
    paths = bench.write(args.output)
    print(bench.table())
    print("written:", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
