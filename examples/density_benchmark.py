"""Lattice constants of a few Sol58LC solids against experiment and PBE, from Python.

Relaxes each chosen solid (primitive cell at the experimental lattice
constant, FIRE + FrechetCellFilter to 0.01 eV/Å) with the r2SCAN-transferred
CHGNet and the GGA/GGA+U CHGNet it came from, prints the per-solid table and
the mean absolute / mean relative errors (MARE, MRE, %), and writes
``density_benchmark.json``, ``.csv`` and the error plot ``density_errors.png``.
``--all`` runs all 58 solids (the README's benchmark); the command line does
the same: ``crossfunctional benchmark density``. The JSON holds everything:
``DensityBenchmark.read("density_benchmark/density_benchmark.json")`` gives
the result back, e.g. to redraw the plot, without relaxing again.

Usage: ``python examples/density_benchmark.py [--solids Cu_fcc Si_diamond NaCl_b1] [--all] [-o density_benchmark]``
"""

from __future__ import annotations

import argparse

from crossfunctional.workflows import density_benchmark


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solids", nargs="+", default=["Cu_fcc", "Si_diamond", "NaCl_b1"],
                        help="Sol58LC names, as crossfunctional.workflows.load_sol58lc() lists them")  # fmt: skip
    parser.add_argument("--all", action="store_true", help="all 58 solids")
    parser.add_argument("--models", nargs="+", default=["chgnet-r2scan", "chgnet-0.3.0"])
    parser.add_argument("-o", "--output", default="density_benchmark")
    args = parser.parse_args(argv)

    bench = density_benchmark(models=args.models, solids=None if args.all else args.solids)
    print(bench.table())
    for name, stats in bench.summary.items():
        print(f"{name:>14s}: MARE {stats['mare_percent']:.3f} %, MRE {stats['mre_percent']:+.3f} %")

    paths = bench.write(args.output)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
