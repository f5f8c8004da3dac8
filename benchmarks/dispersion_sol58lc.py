"""Sol58LC lattice constants with and without a dispersion correction.

Runs :func:`crossfunctional.workflows.density_benchmark` (primitive cells at
the experimental lattice constant, FIRE + ``FrechetCellFilter`` to fmax
0.01 eV/Å, at most 1000 steps, float32 model) for every model and every
dispersion setting, and writes one combined table: per solid the lattice
constant of each ``model`` / ``model+d3bj`` / ``model+d4`` label, and MARE and
MRE against the zero-point-corrected experimental lattice constants.

Written to ``--output`` (default ``benchmarks/results/dispersion/sol58lc``):
``density_benchmark.json``, ``density_benchmark.csv``, ``density_errors.png``
(the density benchmark's own writer, all labels in one file) and
``summary.json`` (MARE, MRE, converged count per label).

Usage (from the repository root)::

    python benchmarks/dispersion_sol58lc.py                       # 58 solids x 2 models x 3 settings, about a minute on one core
    python benchmarks/dispersion_sol58lc.py --reuse-plain         # take the runs without dispersion from benchmarks/results/density/
    python benchmarks/dispersion_sol58lc.py --solids Cu_fcc Si_diamond NaCl_b1 --output /tmp/sol_disp
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from crossfunctional.io import atomic_write  # noqa: E402
from crossfunctional.workflows.density import DensityBenchmark, SolidResult, density_benchmark  # noqa: E402

ROOT = Path(__file__).resolve().parent
PLAIN = ROOT / "results" / "density" / "density_benchmark.json"


def merge(parts: list[DensityBenchmark]) -> DensityBenchmark:
    """One benchmark holding the labels of all ``parts`` (same solids, same order)."""
    first = parts[0]
    solids = []
    for k, s in enumerate(first.solids):
        models = {}
        for part in parts:
            if part.solids[k].solid.name != s.solid.name:
                raise ValueError("the parts cover different solids")
            models.update(part.solids[k].models)
        solids.append(SolidResult(s.solid, models))
    labels = [m for part in parts for m in part.models]
    protocol = dict(first.protocol)
    protocol["dispersion"] = [part.protocol.get("dispersion") for part in parts]
    return DensityBenchmark(models=labels, solids=solids, protocol=protocol)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["chgnet-r2scan", "chgnet-0.3.0"])
    parser.add_argument("--dispersions", nargs="+", default=["none", "d3bj", "d4"])
    parser.add_argument("--solids", nargs="+", default=None, help="Sol58LC names (default: all 58)")
    parser.add_argument("--reuse-plain", action="store_true", help=f"read the runs without dispersion from {PLAIN}")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "dispersion" / "sol58lc")
    args = parser.parse_args()

    parts, timings = [], {}
    for disp in args.dispersions:
        disp = None if disp == "none" else disp
        start = time.perf_counter()
        if disp is None and args.reuse_plain:
            plain = DensityBenchmark.read(PLAIN)
            if args.solids:
                keep = set(args.solids)
                plain = DensityBenchmark(plain.models, [s for s in plain.solids if s.solid.name in keep], plain.protocol)
            plain = DensityBenchmark(
                [m for m in plain.models if m in args.models],
                [SolidResult(s.solid, {m: r for m, r in s.models.items() if m in args.models}) for s in plain.solids],
                plain.protocol,
            )
            parts.append(plain)
        else:
            parts.append(density_benchmark(models=args.models, solids=args.solids, dispersion=disp))
        timings[str(disp)] = time.perf_counter() - start
    combined = merge(parts)
    paths = combined.write(args.output)
    summary = {"summary": combined.summary, "seconds": timings, "labels": combined.models}
    with atomic_write(args.output / "summary.json", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")
    print(combined.table())
    print()
    print(f"{'label':<28} {'MARE %':>8} {'MRE %':>8}  converged")
    for label in combined.models:
        row = combined.summary[label]
        print(f"{label:<28} {row['mare_percent']:8.3f} {row['mre_percent']:+8.3f}  {row['n_converged']}/{row['n_solids']}")
    print("written:", ", ".join(str(p) for p in [*paths.values(), args.output / "summary.json"]))


if __name__ == "__main__":
    main()
