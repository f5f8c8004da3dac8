"""``crossfunctional benchmark density``: accuracy benchmarks against experiment."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossfunctional.cli.common import check_device, check_output

DEFAULT_BENCHMARK_MODELS = ("chgnet-r2scan", "chgnet-0.3.0")


def cmd_benchmark_density(args: argparse.Namespace) -> int:
    from crossfunctional.workflows import density_benchmark

    check_device(args)
    check_output(args.output, directory=True)
    result = density_benchmark(
        models=tuple(args.models),
        fmax=args.fmax,
        steps=args.steps,
        device=args.device,
        dtype=args.dtype,
        solids=args.solids,
    )
    print(result.table())
    result.write(args.output)
    print(f"wrote {Path(args.output) / 'density_benchmark.json'}, .csv and the plot")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``benchmark`` and its sub-commands."""
    p = sub.add_parser("benchmark", help="accuracy benchmarks against experiment")
    bsub = p.add_subparsers(dest="benchmark", required=True)
    b = bsub.add_parser("density", help="Sol58LC lattice constants and densities against experiment and PBE")
    b.add_argument("--models", nargs="+", default=list(DEFAULT_BENCHMARK_MODELS),
                   help=f"models to benchmark (default {' '.join(DEFAULT_BENCHMARK_MODELS)})")
    b.add_argument("--output", default="density_benchmark", help="output folder (default ./density_benchmark)")
    b.add_argument("--fmax", type=float, default=0.01, help="force convergence, eV/Å (default 0.01)")
    b.add_argument("--steps", type=int, default=1000, help="maximum FIRE steps (default 1000)")
    b.add_argument("--solids", nargs="+", default=None, help="only these solids (names from the Sol58LC table; default all 58)")
    b.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")
    b.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="precision (default float32)")
    b.set_defaults(func=cmd_benchmark_density)
