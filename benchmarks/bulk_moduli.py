"""BM32 bulk moduli against experiment (equation of state of each solid).

Runs :func:`crossfunctional.workflows.bulk_moduli_benchmark`: each of the 32
cubic solids built at its zero-point-corrected experimental lattice constant,
relaxed, and fitted with the third-order Birch-Murnaghan equation of state
over 11 volumes within ±6 % (float64). MAE (GPa), MARE and MRE (%) against
the zero-point-corrected experimental bulk moduli.

Written to ``--output`` (default ``benchmarks/results/bulk_moduli``):
``bulk_moduli_benchmark.json``, ``bulk_moduli_benchmark.csv``,
``bulk_moduli_parity.png``. With ``--dispersion`` the run is added to the
models without it (labels ``<model>+<dispersion>``).

Usage (from the repository root)::

    python benchmarks/bulk_moduli.py                                # 32 solids x 2 models, one to two minutes
    python benchmarks/bulk_moduli.py --dispersion d3bj              # both models without and with D3(BJ)
    python benchmarks/bulk_moduli.py --solids MgO_b1 Cu_fcc --output /tmp/bm
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from crossfunctional.workflows.bulk_moduli import bulk_moduli_benchmark  # noqa: E402

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["chgnet-r2scan", "chgnet-0.3.0"])
    parser.add_argument("--solids", nargs="+", default=None)
    parser.add_argument("--dispersion", default=None, help="also run every model with this correction (d3bj, d4, ...)")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "bulk_moduli")
    args = parser.parse_args()
    start = time.perf_counter()
    bench = bulk_moduli_benchmark(models=args.models, solids=args.solids)
    if args.dispersion:
        bench = bench.merge(bulk_moduli_benchmark(models=args.models, solids=args.solids, dispersion=args.dispersion))
    bench.protocol["seconds"] = round(time.perf_counter() - start, 1)
    paths = bench.write(args.output)
    print(bench.table())
    print("written:", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
