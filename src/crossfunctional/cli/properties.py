"""``crossfunctional eos | elastic``: equation of state and elastic constants of a crystal.

::

    crossfunctional eos Si.cif -o si_eos/
    crossfunctional elastic MgO.cif -o mgo_elastic/ --dispersion d3bj

Both relax the last frame of the structure file first (cell and ions,
FrechetCellFilter with FixSymmetry) and write their results into the output
folder: ``eos.json``, ``eos.csv``, ``eos.png``; ``elastic.json``,
``elastic_tensor.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crossfunctional.cli.common import add_dispersion_options, add_model_options, calculator_from_args, check_output


def cmd_eos(args: argparse.Namespace) -> int:
    from crossfunctional.io import read_structures
    from crossfunctional.workflows import eos

    check_output(args.output, directory=True)
    atoms = read_structures(args.structure, index=-1)[0]
    result = eos(
        atoms,
        calculator_from_args(args),
        n_volumes=args.n_volumes,
        volume_range=args.volume_range,
        relax_first=not args.no_relax,
        relax_at_volume={"auto": None, "yes": True, "no": False}[args.relax_at_volume],
        fmax=args.fmax,
        steps=args.steps,
        eos_name=args.eos,
    )
    print(result.text())
    paths = result.write(args.output)
    print(f"wrote {paths['json']}, {Path(paths['csv']).name} and {Path(paths['png']).name}")
    if not all(result.converged):
        print(f"warning: {result.converged.count(False)} of {len(result.converged)} fixed-volume relaxations did not converge")
        return 1
    return 0


def cmd_elastic(args: argparse.Namespace) -> int:
    from crossfunctional.io import read_structures
    from crossfunctional.workflows import elastic

    check_output(args.output, directory=True)
    atoms = read_structures(args.structure, index=-1)[0]
    result = elastic(
        atoms,
        calculator_from_args(args),
        norm_strains=tuple(args.strains),
        shear_strains=tuple(args.strains),
        relax_first=not args.no_relax,
        relax_ions=not args.clamped_ions,
        fmax=args.fmax,
        steps=args.steps,
    )
    print(result.text())
    paths = result.write(args.output)
    print(f"wrote {paths['json']} and {Path(paths['csv']).name}")
    if not all(result.converged):
        print(f"warning: {result.converged.count(False)} of {len(result.converged)} ion relaxations did not converge")
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``eos`` and ``elastic``."""
    p = sub.add_parser(
        "eos",
        help="equation of state: energy-volume curve and Birch-Murnaghan fit (V0, E0, B0, B0')",
        description="Relax the structure, evaluate it at N volumes within ±range (cubic cells scaled, other cells "
        "with shape and ions relaxed at each volume) and fit an equation of state with pymatgen.",
    )
    p.add_argument("structure", help="crystal structure file (the last frame is used)")
    p.add_argument("-o", "--output", default="eos", help="output folder (default ./eos)")
    p.add_argument("--n-volumes", type=int, default=11, help="number of volumes (default 11)")
    p.add_argument("--volume-range", type=float, default=0.06, help="relative half-width of the volume range (default 0.06)")
    p.add_argument("--eos", default="birch_murnaghan",
                   choices=["birch_murnaghan", "murnaghan", "birch", "vinet", "pourier_tarantola"],
                   help="equation of state fitted (pymatgen; default birch_murnaghan)")
    p.add_argument("--relax-at-volume", choices=["auto", "yes", "no"], default="auto",
                   help="relax cell shape and ions at each volume (auto: not for cubic cells; default auto)")
    p.add_argument("--no-relax", action="store_true", help="skip the first relaxation (structure already relaxed)")
    p.add_argument("--fmax", type=float, default=1e-3, help="force convergence of every relaxation, eV/Å (default 1e-3)")
    p.add_argument("--steps", type=int, default=1000, help="maximum FIRE steps per relaxation (default 1000)")
    add_model_options(p)
    add_dispersion_options(p)
    p.set_defaults(func=cmd_eos)

    p = sub.add_parser(
        "elastic",
        help="elastic tensor from stress-strain with relaxed ions, VRH moduli, Born stability",
        description="Relax the structure, apply each of the six strain components at the given amounts, relax the "
        "ions, and fit the 6x6 elastic tensor with pymatgen; prints C_ij, Voigt/Reuss/Hill moduli and the Born check.",
    )
    p.add_argument("structure", help="crystal structure file (the last frame is used)")
    p.add_argument("-o", "--output", default="elastic", help="output folder (default ./elastic)")
    p.add_argument("--strains", type=float, nargs="+", default=[-0.01, -0.005, 0.005, 0.01],
                   help="Green-Lagrange strains applied to every component (default -0.01 -0.005 0.005 0.01)")
    p.add_argument("--clamped-ions", action="store_true", help="do not relax the ions of the strained cells")
    p.add_argument("--no-relax", action="store_true", help="skip the first relaxation (structure already relaxed)")
    p.add_argument("--fmax", type=float, default=1e-3, help="force convergence of every relaxation, eV/Å (default 1e-3)")
    p.add_argument("--steps", type=int, default=1000, help="maximum FIRE steps per relaxation (default 1000)")
    add_model_options(p)
    add_dispersion_options(p)
    p.set_defaults(func=cmd_elastic)
