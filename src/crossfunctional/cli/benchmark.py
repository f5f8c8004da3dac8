"""``crossfunctional benchmark density | stability | bulk-moduli | layered``:
accuracy benchmarks against experiment and DFT."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossfunctional.cli.common import add_dispersion_options, check_device, check_output, dispersion_kwargs

DEFAULT_BENCHMARK_MODELS = ("chgnet-r2scan", "chgnet-0.3.0")


def cmd_benchmark_density(args: argparse.Namespace) -> int:
    from crossfunctional.workflows import density_benchmark

    check_device(args)
    check_output(args.output, directory=True)
    partial = _partial_file(args)
    result = density_benchmark(
        models=_models(args), partial=partial,
        fmax=args.fmax,
        steps=args.steps,
        device=args.device,
        dtype=args.dtype,
        solids=args.solids,
        **dispersion_kwargs(args),
    )
    print(result.table())
    result.write(args.output)
    partial.unlink(missing_ok=True)
    print(f"wrote {Path(args.output) / 'density_benchmark.json'}, .csv and the plot")
    return 0


def cmd_benchmark_bulk_moduli(args: argparse.Namespace) -> int:
    from crossfunctional.workflows import bulk_moduli_benchmark

    check_device(args)
    check_output(args.output, directory=True)
    result = bulk_moduli_benchmark(
        models=tuple(args.models),
        solids=args.solids,
        device=args.device,
        dtype=args.dtype,
        n_volumes=args.n_volumes,
        volume_range=args.volume_range,
        fmax=args.fmax,
        steps=args.steps,
        **dispersion_kwargs(args),
    )
    print(result.table())
    paths = result.write(args.output)
    print(f"wrote {paths['json']}, {paths['csv'].name} and {paths['png'].name}")
    return 0


def cmd_benchmark_layered(args: argparse.Namespace) -> int:
    from crossfunctional.workflows import layered_benchmark

    check_device(args)
    check_output(args.output, directory=True)
    result = layered_benchmark(
        models=tuple(args.models),
        dispersions=[None if d == "none" else d for d in args.dispersions],
        solids=args.solids,
        device=args.device,
        dtype=args.dtype,
        fmax=args.fmax,
        steps=args.steps,
    )
    print(result.table())
    paths = result.write(args.output)
    print(f"wrote {paths['json']}, {paths['csv'].name} and {paths['png'].name}")
    return 0


def _common(b: argparse.ArgumentParser, dtype_default: str) -> None:
    b.add_argument("--models", nargs="+", default=list(DEFAULT_BENCHMARK_MODELS),
                   help=f"models to benchmark (default {' '.join(DEFAULT_BENCHMARK_MODELS)})")
    b.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")
    b.add_argument("--dtype", default=dtype_default, choices=["float32", "float64"], help=f"precision (default {dtype_default})")


def _partial_file(args: argparse.Namespace) -> Path:
    """The file in the output folder where results are saved as they come
    (resumed unless --no-resume)."""
    path = Path(args.output) / f".{args.benchmark}_partial.json"
    if args.no_resume and path.exists():
        path.unlink()
    return path


def _models(args: argparse.Namespace) -> dict:
    """{label: model name/file or calculator factory} from --models and --calculator."""
    from crossfunctional.workflows.stability import parse_calculator_spec

    models = {m: m for m in args.models}
    for spec in args.calculator or []:
        name, factory = parse_calculator_spec(spec)
        models[name] = factory
    return models


def cmd_benchmark_stability(args: argparse.Namespace) -> int:
    from crossfunctional.workflows.stability import stability_benchmark

    check_device(args)
    check_output(args.output, directory=True)
    partial = _partial_file(args)
    result = stability_benchmark(
        models=_models(args), data=args.data, limit=args.limit, fmax=args.fmax, steps=args.steps,
        device=args.device, dtype=args.dtype, progress=not args.no_progress, partial=partial,
    )
    print(result.table())
    paths = result.write(args.output)
    partial.unlink(missing_ok=True)
    print(f"wrote {paths['json']}, {paths['csv'].name}, {paths['plot_dft'].name} and {paths['plot_exp'].name}")
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
    add_dispersion_options(b)
    b.add_argument("--calculator", action="append", metavar="NAME=module:factory[:json]",
                   help="also benchmark any ASE calculator (see 'benchmark stability --help')")
    b.add_argument("--no-resume", action="store_true",
                   help="start again instead of taking the results an interrupted run saved in the output folder")
    b.set_defaults(func=cmd_benchmark_density)

    b = bsub.add_parser("bulk-moduli", help="BM32 bulk moduli (equation of state) against experiment")
    _common(b, "float64")
    b.add_argument("--output", default="bulk_moduli_benchmark", help="output folder (default ./bulk_moduli_benchmark)")
    b.add_argument("--solids", nargs="+", default=None, help="only these solids (names from BM32, e.g. MgO_b1; default all 32)")
    b.add_argument("--n-volumes", type=int, default=11, help="volumes per equation of state (default 11)")
    b.add_argument("--volume-range", type=float, default=0.06, help="relative half-width of the volume range (default 0.06)")
    b.add_argument("--fmax", type=float, default=1e-3, help="force convergence of every relaxation, eV/Å (default 1e-3)")
    b.add_argument("--steps", type=int, default=1000, help="maximum FIRE steps per relaxation (default 1000)")
    add_dispersion_options(b)
    b.set_defaults(func=cmd_benchmark_bulk_moduli)

    b = bsub.add_parser("layered", help="layered solids (graphite, h-BN, 2H-MoS2, black P) with and without dispersion")
    _common(b, "float64")
    b.add_argument("--dispersions", nargs="+", default=["none", "d3bj", "d4"],
                   choices=["none", "d3bj", "d3bj-atm", "d4", "d4-atm"],
                   help="dispersion settings, each run with every model (default: none d3bj d4)")
    b.add_argument("--output", default="layered_benchmark", help="output folder (default ./layered_benchmark)")
    b.add_argument("--solids", nargs="+", default=None, help="only these solids (default all)")
    b.add_argument("--fmax", type=float, default=1e-3, help="force convergence, eV/Å (default 1e-3)")
    b.add_argument("--steps", type=int, default=2000, help="maximum FIRE steps (default 2000)")
    b.set_defaults(func=cmd_benchmark_layered)
    b = bsub.add_parser("stability", help="formation and decomposition energies of 348 binaries against MP r2SCAN, "
                        "GGA/GGA+U and experiment")
    b.add_argument("--models", nargs="*", default=list(DEFAULT_BENCHMARK_MODELS),
                   help=f"models to benchmark: names, checkpoints or .pt files (default {' '.join(DEFAULT_BENCHMARK_MODELS)})")
    b.add_argument("--calculator", action="append", metavar="NAME=module:factory[:json]",
                   help="also benchmark any ASE calculator, e.g. "
                   "'7net-mf=sevenn.calculator:SevenNetCalculator:{\"model\": \"7net-mf-0\", \"modal\": \"R2SCAN\"}'")
    b.add_argument("--output", default="stability_benchmark", help="output folder (default ./stability_benchmark)")
    b.add_argument("--data", default=None, help="compound records in the same layout (default: the shipped MP binaries)")
    b.add_argument("--limit", type=int, default=None, help="only the first N compounds (default: all)")
    b.add_argument("--fmax", type=float, default=0.02, help="force convergence, eV/Å (default 0.02)")
    b.add_argument("--steps", type=int, default=500, help="maximum FIRE steps (default 500)")
    b.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")
    b.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="precision (default float32)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.add_argument("--no-resume", action="store_true",
                   help="start again instead of taking the results an interrupted run saved in the output folder")
    b.set_defaults(func=cmd_benchmark_stability)
