"""``crossfunctional phonons``: finite-displacement phonons with phonopy.

::

    crossfunctional phonons Si.cif --supercell-min-length 15 -o si_phonons/

Runs :func:`crossfunctional.workflows.phonons.phonons` on the last frame of the
structure file, writes the result files into the output folder and prints the
summary. phonopy and seekpath are imported only when the command runs.
"""

from __future__ import annotations

import argparse

from crossfunctional.cli.common import add_dispersion_options, add_model_options, check_device, check_output, dispersion_kwargs
from crossfunctional.workflows.phonons import (
    DEFAULT_IMAGINARY_THRESHOLD,
    DEFAULT_MAX_ATOMS,
    DEFAULT_MIN_LENGTH,
    phonons,
)

__all__ = ["cmd_phonons", "register"]


def register(subparsers) -> None:
    """Add the ``phonons`` command to an argparse sub-parser set
    (``parser.add_subparsers()``); it runs :func:`cmd_phonons`."""
    p = subparsers.add_parser(
        "phonons",
        help="phonon band structure, DOS, thermal properties and imaginary-mode check (phonopy)",
        description="Finite-displacement phonons with phonopy: writes band.yaml, band_structure.png, dos.png, "
        "thermal_properties.csv, FORCE_CONSTANTS, phonopy_params.yaml and a summary into the output folder.",
    )
    p.add_argument("structure", help="structure file (the last frame is used)")
    p.add_argument("-o", "--output", default="phonons", help="output folder (default ./phonons)")
    p.add_argument("--supercell-min-length", type=float, default=DEFAULT_MIN_LENGTH,
                   help=f"minimum perpendicular width of the supercell, Å (default {DEFAULT_MIN_LENGTH:g})")
    p.add_argument("--supercell", type=int, nargs="+", metavar="N",
                   help="supercell matrix instead: 1, 3 or 9 integers (phonopy's convention)")
    p.add_argument("--displacement", type=float, default=0.01, help="displacement, Å (default 0.01)")
    p.add_argument("--no-relax", action="store_true", help="skip the pre-relaxation (structure already relaxed)")
    p.add_argument("--fmax", type=float, default=1e-4, help="pre-relaxation force tolerance, eV/Å (default 1e-4)")
    p.add_argument("--relax-steps", type=int, default=1000, help="maximum pre-relaxation steps (default 1000)")
    p.add_argument("--mesh-length", type=float, default=80.0, help="q-mesh length, Å (default 80)")
    p.add_argument("--band-points", type=int, default=51, help="q-points per band segment (default 51)")
    p.add_argument("--tmax", type=float, default=1000.0, help="highest temperature, K (default 1000)")
    p.add_argument("--tstep", type=float, default=10.0, help="temperature step, K (default 10)")
    p.add_argument("--imaginary-threshold", type=float, default=DEFAULT_IMAGINARY_THRESHOLD,
                   help=f"frequencies below this count as imaginary, THz (default {DEFAULT_IMAGINARY_THRESHOLD:g})")
    p.add_argument("--born", help="phonopy BORN file: apply the non-analytical (LO-TO) correction")
    p.add_argument("--max-atoms", type=int, default=DEFAULT_MAX_ATOMS,
                   help=f"largest supercell accepted (default {DEFAULT_MAX_ATOMS})")
    p.add_argument("--max-memory-gb", type=float, default=None, help="memory limit, GB (default: available memory)")
    p.add_argument("--symprec", type=float, default=1e-5, help="phonopy symmetry tolerance, Å (default 1e-5)")
    p.add_argument("--fc-format", choices=["text", "hdf5"], default="text",
                   help="FORCE_CONSTANTS (text, default) or force_constants.hdf5")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # finite-difference force constants need float64: the default here, unlike the other commands
    add_model_options(p, dtype_default="float64")
    add_dispersion_options(p)
    p.set_defaults(func=cmd_phonons)


def cmd_phonons(args: argparse.Namespace) -> int:
    """Run ``crossfunctional phonons``; returns the exit status (0 done).

    Raises:
        crossfunctional.workflows.phonons.PhononError and the other project
        errors of :func:`~crossfunctional.workflows.phonons.phonons` and
        :func:`~crossfunctional.io.read_structures`, for the command line to
        report.
    """
    from crossfunctional.io import read_structures

    check_device(args)
    check_output(args.output, directory=True)
    atoms = read_structures(args.structure, index=-1)[0]
    calculator = None
    if args.dtype != "float64" or args.dispersion or args.dispersion_functional:  # the workflow's own is float64, no dispersion
        from crossfunctional.calculators import CrossFunctionalCalculator

        calculator = CrossFunctionalCalculator(model=args.model, device=args.device, dtype=args.dtype, **dispersion_kwargs(args))
    result = phonons(
        atoms,
        model=args.model,
        calculator=calculator,
        device=args.device,
        relax=not args.no_relax,
        fmax=args.fmax,
        relax_steps=args.relax_steps,
        supercell_matrix=args.supercell,
        supercell_min_length=args.supercell_min_length,
        displacement=args.displacement,
        symprec=args.symprec,
        max_atoms=args.max_atoms,
        max_memory_gb=args.max_memory_gb,
        mesh_length=args.mesh_length,
        band_npoints=args.band_points,
        t_max=args.tmax,
        t_step=args.tstep,
        imaginary_threshold=args.imaginary_threshold,
        born=args.born,
        progress=not args.no_progress,
    )
    files = result.write(args.output, fc_format=args.fc_format)
    print(result.summary.text())
    print(f"wrote {len(files)} files to {args.output}: " + ", ".join(sorted(files)))
    return 0
