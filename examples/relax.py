"""Relax atomic positions and the cell of a structure (FIRE + FrechetCellFilter) and write the result.

Reads any file ``ase.io.read`` understands, or builds a rattled silicon cell
3 % too large when none is given, relaxes it with
``crossfunctional.workflows.relax`` (the default r2SCAN CHGNet; the protocol of
``chgnet.model.StructOptimizer``) and writes the relaxed structure and the
ASE trajectory of every step (``ase gui relax.traj`` shows it). The command
line does the same: ``crossfunctional relax POSCAR -o relaxed.cif``.

Usage: ``python examples/relax.py [structure.cif] [--fmax 0.02] [--fix-symmetry] [-o relaxed.cif]``
"""

from __future__ import annotations

import argparse

from ase.build import bulk

from crossfunctional.workflows import relax


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structure", nargs="?", help="structure file (default: rattled Si, a = 1.03 x 5.431 Å)")
    parser.add_argument("--model", default="chgnet-r2scan", help="model name, chgnet checkpoint or exported .pt")
    parser.add_argument("--fmax", type=float, default=0.02, help="force threshold, eV/Å")
    parser.add_argument("--steps", type=int, default=1000, help="maximum optimizer steps")
    parser.add_argument("--fix-symmetry", action="store_true", help="keep the input's space group")
    parser.add_argument("-o", "--output", default="relaxed.cif")
    parser.add_argument("--trajectory", default="relax.traj")
    args = parser.parse_args(argv)

    if args.structure:
        from ase.io import read

        atoms = read(args.structure)
    else:
        atoms = bulk("Si", "diamond", a=1.03 * 5.431, cubic=True)
        atoms.rattle(stdev=0.05, seed=1)

    result = relax(atoms, fmax=args.fmax, steps=args.steps, fix_symmetry=args.fix_symmetry,
                   model=args.model, trajectory=args.trajectory)  # fmt: skip
    before, after = atoms.cell.cellpar(), result.atoms.cell.cellpar()
    print(f"{atoms.get_chemical_formula()}: {'converged' if result.converged else 'NOT converged'} "
          f"in {result.steps} steps, largest force {result.fmax:.4f} eV/Å")  # fmt: skip
    print(f"energy {result.energy:.5f} eV ({result.energy / len(atoms):.5f} eV/atom)")
    print("a, b, c (Å)   before " + " ".join(f"{x:7.4f}" for x in before[:3])
          + "   after " + " ".join(f"{x:7.4f}" for x in after[:3]))  # fmt: skip
    print(f"volume (Å³)   before {atoms.get_volume():9.3f}   after {result.atoms.get_volume():9.3f}")

    result.atoms.write(args.output)
    print(f"wrote {args.output} and {result.trajectory}")


if __name__ == "__main__":
    main()
