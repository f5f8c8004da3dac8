"""Options and helpers shared by the command modules."""

from __future__ import annotations

import argparse

from crossfunctional.io import OutputError, check_writable as check_output  # noqa: F401  (re-exported for the commands)

DEFAULT_MODEL = "chgnet-r2scan"  # crossfunctional.models.DEFAULT_MODEL, without importing torch for --help


def add_model_options(parser: argparse.ArgumentParser, dtype_default: str | None = None) -> None:
    """``--model``, ``--device`` and ``--dtype``, with their defaults in the help."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registered model name, chgnet checkpoint or exported .pt file (default {DEFAULT_MODEL})")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", default=dtype_default, choices=["float32", "float64"],
                        help=f"precision (default {dtype_default or 'the model file’s: float32 for the shipped weights'})")


def check_device(args: argparse.Namespace) -> None:
    """Refuse an unusable ``--device`` before any work (one line, exit 2)."""
    from crossfunctional.models import resolve_device

    resolve_device(args.device)


def calculator_from_args(args: argparse.Namespace):
    """A :class:`~crossfunctional.calculators.CrossFunctionalCalculator` from
    ``--model``, ``--device`` and ``--dtype``."""
    from crossfunctional.calculators import CrossFunctionalCalculator

    check_device(args)
    return CrossFunctionalCalculator(model=args.model, device=args.device, dtype=args.dtype)
