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


#: ``--dispersion`` choices: the keys of crossfunctional.calculators.dispersion.DISPERSION_METHODS
#: (spelled out so that ``--help`` does not import torch)
DISPERSION_CHOICES = ("d3bj", "d3bj-atm", "d4", "d4-atm")


def add_dispersion_options(parser: argparse.ArgumentParser) -> None:
    """``--dispersion`` and ``--dispersion-functional`` (for commands that evaluate a model)."""
    parser.add_argument("--dispersion", default=None, choices=DISPERSION_CHOICES,
                        help="add Grimme's D3(BJ) or D4 dispersion correction (dftd3/dftd4; '-atm': with the "
                        "three-body term, much slower) for the model's functional (default: none)")
    parser.add_argument("--dispersion-functional", default=None, metavar="XC",
                        help="functional whose dispersion parameters apply, e.g. r2scan or pbe (default: the "
                        "model's; needed for a checkpoint that names none)")


def dispersion_kwargs(args: argparse.Namespace) -> dict:
    """``dispersion`` and ``dispersion_functional`` from the options (None where absent)."""
    return {
        "dispersion": getattr(args, "dispersion", None),
        "dispersion_functional": getattr(args, "dispersion_functional", None),
    }


def check_device(args: argparse.Namespace) -> None:
    """Refuse an unusable ``--device`` before any work (one line, exit 2)."""
    from crossfunctional.models import resolve_device

    resolve_device(args.device)


def calculator_from_args(args: argparse.Namespace):
    """A :class:`~crossfunctional.calculators.CrossFunctionalCalculator` from
    ``--model``, ``--device``, ``--dtype`` and, where the command has them,
    ``--dispersion`` and ``--dispersion-functional``."""
    from crossfunctional.calculators import CrossFunctionalCalculator

    check_device(args)
    return CrossFunctionalCalculator(model=args.model, device=args.device, dtype=args.dtype, **dispersion_kwargs(args))
