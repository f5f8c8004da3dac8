"""Energy, forces, stress, magnetic moments and site energies of one structure with the ASE calculator.

Reads any file ``ase.io.read`` understands (CIF, POSCAR, extxyz, ...), or
builds rock-salt MgO when none is given, attaches
``CrossFunctionalCalculator`` and prints what it predicts (eV, eV/Å, GPa,
μB). The structure with its results is written as extended XYZ, which
``ase.io.read`` gives back with the energy, forces and stress attached.
A pymatgen ``Structure`` works too: convert it with
``pymatgen.io.ase.AseAtomsAdaptor.get_atoms(structure)``.

Usage: ``python examples/ase_single_point.py [structure.cif] [--model chgnet-0.3.0] [-o single_point.extxyz]``
"""

from __future__ import annotations

import argparse

import numpy as np
from ase import units
from ase.build import bulk
from ase.io import read, write

from crossfunctional.calculators import CrossFunctionalCalculator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structure", nargs="?", help="structure file (default: rock-salt MgO, a = 4.21 Å)")
    parser.add_argument("--model", default="chgnet-r2scan", help="model name, chgnet checkpoint or exported .pt")
    parser.add_argument("-o", "--output", default="single_point.extxyz")
    args = parser.parse_args(argv)

    atoms = read(args.structure) if args.structure else bulk("MgO", "rocksalt", a=4.21)
    atoms.calc = CrossFunctionalCalculator(model=args.model)  # device="cuda", dtype="float64" as needed

    energy = atoms.get_potential_energy()  # eV, AtomRef included
    forces = atoms.get_forces()  # [N, 3] eV/Å
    print(f"{atoms.get_chemical_formula()} ({len(atoms)} atoms), model {args.model}")
    print(f"energy          {energy:12.5f} eV   ({energy / len(atoms):.5f} eV/atom)")
    print(f"largest force   {np.linalg.norm(forces, axis=1).max():12.5f} eV/Å")
    if atoms.pbc.all():
        stress = atoms.get_stress() / units.GPa  # Voigt xx yy zz yz xz xy; ASE sign: positive = tensile
        print("stress (GPa)    " + " ".join(f"{s:8.4f}" for s in stress))
        print(f"pressure        {-stress[:3].mean():12.5f} GPa")
    magmoms = atoms.calc.results["magmoms"]  # μB per site (magnitudes)
    site_energies = atoms.calc.results["energies"]  # eV per site, summing to the energy
    for symbol, m, e in zip(atoms.get_chemical_symbols(), magmoms, site_energies):
        print(f"  {symbol:2s}  magmom {m:7.4f} μB   site energy {e:10.5f} eV")

    write(args.output, atoms, format="extxyz")  # energy, forces, stress and magmoms go along
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
