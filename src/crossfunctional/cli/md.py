"""``crossfunctional md``: molecular dynamics with LAMMPS (pair_style chgnet) or ASE."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossfunctional.cli.common import add_dispersion_options, add_model_options, check_device, check_output, dispersion_kwargs


def cmd_md(args: argparse.Namespace) -> int:
    from crossfunctional.io import read_structures
    from crossfunctional.workflows.lammps_md import ase_md, run_md

    check_device(args)
    check_output(args.output, directory=True)

    atoms = read_structures(args.structure, index=-1)[0]
    out = Path(args.output)
    common = dict(
        ensemble=args.ensemble, temperature=args.temperature, pressure=args.pressure, timestep=args.timestep,
        steps=args.steps, thermo_every=args.thermo, dump_every=args.dump, tdamp=args.tdamp, pdamp=args.pdamp,
        seed=args.seed,
    )  # fmt: skip
    print(f"{args.engine}: {args.steps} {args.ensemble.upper()} steps of {atoms.get_chemical_formula()} "
          f"(Ctrl-C stops early and keeps the frames)", flush=True)
    if args.engine == "lammps":
        result = run_md(atoms, args.model, threads=args.threads, workdir=out / "lammps", barostat=args.barostat,
                        device=args.device, dtype=args.dtype, **dispersion_kwargs(args), **common)
    else:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        result = ase_md(atoms, model=args.model, device=args.device, dtype=args.dtype, **dispersion_kwargs(args), **common)
    paths = result.write(out)
    last = result.thermo.iloc[-1]
    print(
        f"{args.engine} {args.ensemble.upper()} {args.steps} steps of {atoms.get_chemical_formula()}: "
        f"final T = {last['temp_K']:.1f} K, PE = {last['pe_eV']:.6f} eV"
        + (f", V = {last['vol_A3']:.3f} Å^3" if "vol_A3" in last else "")
    )
    print(f"wrote {paths['trajectory']} ({len(result.trajectory)} frames) and {paths['thermo']}")
    if result.info.get("interrupted"):
        print(f"interrupted after {result.info['steps_done']} of {args.steps} steps; the frames computed so far are kept")
        return 130
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``md``."""
    p = sub.add_parser(
        "md",
        help="molecular dynamics (NVE/NVT/NPT) in LAMMPS with pair_style chgnet, or with ASE",
        description="Run MD from any structure file ase.io.read understands; writes trajectory.extxyz and "
        "thermo.csv (and, for LAMMPS, lammps/log.lammps) into the output folder.",
    )
    p.add_argument("structure", help="start structure (the last frame of the file)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--engine", choices=["lammps", "ase"], default="lammps", help="LAMMPS with pair_style chgnet (default) or ASE")
    add_model_options(p)
    add_dispersion_options(p)
    p.add_argument("--ensemble", choices=["nve", "nvt", "npt"], default="nvt", help="ensemble (default nvt)")
    p.add_argument("-T", "--temperature", type=float, default=300.0, help="K (default 300)")
    p.add_argument("-P", "--pressure", type=float, default=0.0, help="GPa, NPT only (default 0)")
    p.add_argument("--timestep", type=float, default=1.0, help="fs (default 1)")
    p.add_argument("--steps", type=int, default=1000, help="MD steps (default 1000)")
    p.add_argument("--thermo", type=int, default=10, help="thermo output every N steps (default 10)")
    p.add_argument("--dump", type=int, default=100, help="trajectory frame every N steps (default 100; 0: none)")
    p.add_argument("--tdamp", type=float, default=100.0, help="thermostat damping time, fs (default 100)")
    p.add_argument("--pdamp", type=float, default=1000.0, help="barostat damping time, fs (default 1000)")
    p.add_argument("--barostat", choices=["iso", "aniso", "tri"], default="iso", help="NPT cell fluctuations, LAMMPS only (default iso)")
    p.add_argument("--seed", type=int, default=12345, help="velocity seed (default 12345)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=cmd_md)
