"""Silicon phonons with the r2SCAN CHGNet: band structure, DOS, thermal properties.

Runs the phonon workflow with its defaults (float64, tight symmetry-keeping
pre-relaxation, supercell widths >= 15 Å: the 216-atom conventional 3x3x3 cube,
displacement 0.01 Å) and writes everything into ``examples/phonons/si/``:
band_structure.png, dos.png, band.yaml, thermal_properties.csv,
FORCE_CONSTANTS, phonopy_params.yaml, summary.txt. About a minute on 2 CPU
cores. The same from the command line::

    crossfunctional phonons Si.cif --supercell-min-length 15 -o si_phonons/

Usage: ``python examples/phonons/phonons_si.py [--model chgnet-0.3.0] [--supercell-min-length 15] [--output DIR]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ase.build import bulk

from crossfunctional.workflows.phonons import phonons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="chgnet-r2scan")
    parser.add_argument("--supercell-min-length", type=float, default=15.0, help="Å")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "si"))
    args = parser.parse_args()

    si = bulk("Si", "diamond", a=5.431)  # primitive cell at the measured lattice constant; relaxed below
    result = phonons(si, model=args.model, supercell_min_length=args.supercell_min_length)
    print(result.summary.text())

    # phonopy as usual: frequencies (THz) at Γ, X, L
    for name, q in {"Γ": [0, 0, 0], "X": [0.5, 0, 0.5], "L": [0.5, 0.5, 0.5]}.items():
        freqs = result.frequencies([q])[0]
        print(f"{name}: " + " ".join(f"{f:6.2f}" for f in freqs) + " THz")
    files = result.write(args.output)
    print(f"wrote {', '.join(sorted(files))} in {args.output}")


if __name__ == "__main__":
    main()
