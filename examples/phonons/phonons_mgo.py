"""MgO phonons with the r2SCAN CHGNet, without and with the LO–TO correction.

The model predicts forces only: it has no Born effective charges or dielectric
constant, so the longitudinal optical mode near Γ is not split from the
transverse one. phonopy adds the splitting (the non-analytical correction)
when given a ``BORN`` file. This example runs the workflow twice on the same
force constants' inputs and writes, in ``examples/phonons/mgo/``:

- ``no_nac/`` and ``nac/``: the workflow's files (band_structure.png, dos.png,
  band.yaml, thermal_properties.csv, ...);
- ``mgo_band_structure.png``: both band structures on one plot;
- ``BORN``: the file used.

The BORN values here are ILLUSTRATIVE, not measured or computed: the nominal
ionic charges Z* = ±2 e (isotropic, as the cubic symmetry requires) and
ε∞ = 3.0. Replace them with values from DFPT (or the literature) for real work.

With the correction the LO mode at Γ splits off as it should, but along Γ–X the
corrected LO branch dips and rises again: phonopy's Gonze–Lee scheme subtracts
a dipole–dipole interaction from force constants that, coming from a short-ranged
model, never contained it. Read the corrected branches away from Γ with care.

The supercell minimum width is 12 Å (the 216-atom conventional 3x3x3 cell)
rather than the default 15 Å (512 atoms, several GB in float64) to run in a
couple of minutes on a laptop; pass ``--supercell-min-length 15`` for the default.

Usage: ``python examples/phonons/phonons_mgo.py [--supercell-min-length 15] [--output DIR]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ase.build import bulk

from crossfunctional.calculators import CrossFunctionalCalculator
from crossfunctional.io import atomic_path, atomic_write
from crossfunctional.workflows.phonons import phonons, plot_band_structure

#: unit factor (VASP-style units), ε∞ (9 numbers), then Z* of the symmetry-independent atoms: Mg, O
BORN_TEXT = "14.399652\n3.0 0 0 0 3.0 0 0 0 3.0\n2 0 0 0 2 0 0 0 2\n-2 0 0 0 -2 0 0 0 -2\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="chgnet-r2scan")
    parser.add_argument("--supercell-min-length", type=float, default=12.0)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "mgo"))
    args = parser.parse_args()
    out = Path(args.output)

    calc = CrossFunctionalCalculator(args.model, dtype="float64")
    mgo = bulk("MgO", "rocksalt", a=4.212)  # primitive cell at the measured lattice constant; relaxed below
    plain = phonons(mgo, calculator=calc, supercell_min_length=args.supercell_min_length)
    print(plain.summary.text())
    plain.write(out / "no_nac")

    with atomic_write(out / "BORN") as fh:
        fh.write(BORN_TEXT)
    # the relaxed cell of the first run, so that only the correction differs
    nac = phonons(plain.atoms, calculator=calc, relax=False, supercell_min_length=args.supercell_min_length,
                  born=out / "BORN")
    nac.write(out / "nac")

    for name, res in (("without NAC", plain), ("with NAC", nac)):
        res.phonopy.run_qpoints([[0, 0, 0]], nac_q_direction=[1, 0, 0])
        print(f"Γ (q -> 0 along x), {name}: " + " ".join(f"{f:6.2f}" for f in res.phonopy.qpoints.frequencies[0]) + " THz")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    plot_band_structure(plain, ax=ax, color="C0", label="no BORN: LO–TO splitting absent")
    plot_band_structure(nac, ax=ax, color="C3", label="BORN (illustrative Z* = ±2, ε∞ = 3)", ls="--", reference=plain)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_path(out / "mgo_band_structure.png") as tmp:
        fig.savefig(tmp, dpi=150)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
