"""Batched relaxation against one-by-one relaxation (one thread).

WBM structures shipped with the package (fixed seed), each rattled by 0.05 Å
and strained by up to 2 %, relaxed with FIRE and the Fréchet cell filter to
fmax 0.02 eV/Å in at most 500 steps: by :func:`relax_many` (torch-sim,
structures leaving the batch as they converge) and one by one with
:func:`relax` and one reused calculator of ours. Reports the throughput ratio
and how many final energies agree within 1 meV/atom (those that do not took
another path on a soft energy surface and are listed).

    python benchmarks/relax_many_throughput.py --n 200

Writes ``benchmarks/results/relax_many.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def structures(n: int, seed: int = 0):
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from crossfunctional.data import data_path

    with gzip.open(data_path("wbm_random_pbe_equilibrium.json.gz"), "rt") as fh:
        records = json.load(fh)
    rng = np.random.default_rng(seed)
    out = []
    for k in rng.choice(len(records), size=min(n, len(records)), replace=False):
        atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(records[k]["structure"]))
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        strain = np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))
        atoms.set_cell(atoms.cell[:] @ ((strain + strain.T) / 2), scale_atoms=True)
        out.append((records[k]["material_id"], atoms))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--results", default=str(RESULTS / "relax_many.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from crossfunctional.calculators import CrossFunctionalCalculator
    from crossfunctional.workflows import relax, relax_many

    items = structures(args.n)
    frames = [a for _, a in items]
    calc = CrossFunctionalCalculator()
    relax_many(frames[:2], calculator=calc)  # warm-up
    t0 = time.perf_counter()
    many = relax_many(frames, calculator=calc, fmax=0.02, steps=500)
    t_many = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = []
    for atoms in frames:
        work = atoms.copy()
        work.calc = calc
        single.append(relax(work, fmax=0.02, steps=500))
    t_single = time.perf_counter() - t0
    diff = np.array([abs(m.energy - s.energy) / len(a) for m, s, a in zip(many, single, frames)])
    outliers = [
        {"material_id": mid, "formula": a.get_chemical_formula(), "delta_meV_per_atom": 1e3 * d,
         "steps_batched": m.steps, "steps_single": s.steps}
        for (mid, a), m, s, d in zip(items, many, single, diff) if d > 1e-3
    ]
    out = {
        "n": len(frames), "threads": 1, "protocol": "FIRE + Frechet cell filter, fmax 0.02 eV/A, <= 500 steps",
        "seconds_relax_many": t_many, "seconds_one_by_one": t_single, "throughput_ratio": t_single / t_many,
        "within_1meV_per_atom": int((diff <= 1e-3).sum()), "fraction_within_1meV_per_atom": float((diff <= 1e-3).mean()),
        "converged_relax_many": int(sum(m.converged for m in many)), "converged_one_by_one": int(sum(s.converged for s in single)),
        "outliers": outliers,
    }
    Path(args.results).write_text(json.dumps(out, indent=1))
    print(f"{len(frames)} structures: relax_many {t_many:.1f} s, one by one {t_single:.1f} s "
          f"({out['throughput_ratio']:.2f}x); {out['within_1meV_per_atom']} within 1 meV/atom")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
