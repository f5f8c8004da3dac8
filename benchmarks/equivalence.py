"""Full equivalence run: our TorchScript CHGNet against the upstream ``chgnet``
package, both weights (``chgnet-r2scan`` and ``chgnet-0.3.0``).

Cases: every WBM structure of the shipped ``wbm_random_pbe_equilibrium.json.gz``
(``crossfunctional.data``, 972) as relaxed and rattled (0.05 Å) + strained (up to 3 %), the edge cases of
``tests/test_equivalence.py`` (isolated atoms, molecules with and without
periodic boundaries, no bond under 3 Å, cells smaller than the cutoff, a
strongly skewed cell, a left-handed cell, a slab) and a rattled 1000-atom
supercell (float32 only: upstream's float64 copy would need ~8 GB for it).

Each case runs in float32 (ours through the ASE calculator against upstream's
own float32 ``predict_graph``) and in float64 (both sides in float64, see
``tests/conftest.py``). For each model and precision the script prints the
largest deviation per quantity (energy eV/atom, force component eV/Å, stress
GPa, magmom μB, site energy eV) and the case it occurs on; with both
precisions it also prints each side's own float32 rounding (float32 result
against the same code in float64), the scale against which the float32
comparison must be read. It writes ``benchmarks/results/equivalence.json``
(summary plus every case's deviations, one line per case and comparison).

    python benchmarks/equivalence.py               # everything (~30-40 min on 1 core)
    python benchmarks/equivalence.py --n 300 --dtypes float32
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import (  # noqa: E402  (the shared comparison helpers of the tests)
    MODEL_NAMES,
    QUANTITIES,
    TOLERANCES,
    UPSTREAM_NAMES,
    boxed,
    deviations,
    load_wbm,
    ours_predict,
    perturbed,
    upstream_double,
    upstream_predict,
)


def edge_cases() -> list[tuple[str, Atoms, Atoms | None]]:
    """(label, atoms for us, reference atoms for upstream or None = same)."""
    cases: list[tuple[str, Atoms, Atoms | None]] = []
    cases.append(("edge: isolated Fe atom", Atoms("Fe", positions=[[1, 2, 3]], cell=np.eye(3) * 14.0, pbc=True), None))
    cases.append(
        ("edge: isolated Fe and O", Atoms("FeO", positions=[[0, 0, 0], [7, 7, 7]], cell=np.eye(3) * 20.0, pbc=True), None)
    )
    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=3)
    cases.append(("edge: ethanol in a 8 Å-vacuum box", boxed(mol, vacuum=8.0), None))
    cases.append(("edge: ethanol, pbc=False, no cell", mol, boxed(mol, vacuum=10.0)))
    ar = bulk("Ar", "fcc", a=5.26, cubic=True)
    ar.rattle(0.03, seed=5)
    cases.append(("edge: fcc Ar, no bond under 3 Å", ar, None))
    cases.append(("edge: simple cubic Po a=2.5 Å (1 atom)", Atoms("Po", cell=np.eye(3) * 2.5, pbc=True), None))
    cases.append(("edge: fcc Cu primitive (1 atom)", bulk("Cu", "fcc", a=3.6), None))
    strain = np.array([[1.02, 0.01, 0.0], [0.01, 0.99, 0.0], [0.0, 0.0, 1.01]])
    fe = bulk("Fe", "bcc", a=2.87)
    fe.set_cell(fe.cell.array @ strain, scale_atoms=True)
    cases.append(("edge: bcc Fe primitive, strained (1 atom)", fe, None))
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    nacl.set_cell(nacl.cell.array @ strain, scale_atoms=True)
    nacl.positions[1] += [0.04, -0.03, 0.02]
    cases.append(("edge: NaCl primitive, strained", nacl, None))
    reduced = bulk("NaCl", "rocksalt", a=5.64) * (1, 1, 2)
    reduced.set_cell(reduced.cell.array @ strain, scale_atoms=True)
    reduced.rattle(0.05, seed=6)
    skewed = reduced.copy()
    skewed.set_cell(np.array([[1, 0, 0], [2, 1, 0], [-1, 2, 1]]) @ reduced.cell.array, scale_atoms=False)
    skewed.wrap()
    cases.append(("edge: NaCl in a strongly skewed cell", skewed, None))
    left = reduced.copy()
    left.set_cell(reduced.cell.array[[1, 0, 2]], scale_atoms=False)
    cases.append(("edge: NaCl in a left-handed cell", left, None))
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=9.0)
    slab.pbc = (True, True, False)
    slab.rattle(0.05, seed=2)
    reference = slab.copy()
    reference.pbc = True  # 18 Å of vacuum > cutoff: the same slab for upstream
    cases.append(("edge: Cu(111) slab, pbc=(1,1,0)", slab, reference))
    return cases


def supercell_case(records: list[tuple[str, Atoms]], model) -> tuple[str, Atoms, None]:
    """The first WBM structure of 8 or 10 atoms, two or more elements and a
    moderate angle count (8 to 20 angles per atom: upstream keeps a
    double-backward graph for its forces, whose memory grows with the angles),
    repeated to 1000 atoms, rattled and strained."""
    from crossfunctional.neighbors import neighbor_list

    rng = np.random.default_rng(1000)
    reps_for = {8: (5, 5, 5), 10: (5, 5, 4)}
    for mid, atoms in records:
        if len(atoms) not in reps_for or len(set(atoms.numbers)) < 2:
            continue
        z, ei, sh, vec = neighbor_list(atoms, model.atom_graph_cutoff).to_torch("cpu", torch.float32)
        with torch.no_grad():
            n_angles = model.build_graph(ei, sh, vec, len(atoms)).angle.shape[0]
        if 8 <= n_angles / len(atoms) <= 20:
            reps = reps_for[len(atoms)]
            big = perturbed(atoms * reps, rng)
            return (f"supercell: {mid} x {reps} ({len(big)} atoms), perturbed", big, None)
    raise RuntimeError("no WBM structure to build the supercell from")


def _round(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(f"{x:.3g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None, help="number of WBM structures (default: all 972)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the perturbations and of the WBM draw")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--no-supercell", action="store_true", help="skip the 1000-atom supercell")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "equivalence.json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for small graphs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from chgnet.model import CHGNet

    from crossfunctional.calculators import CrossFunctionalCalculator
    from crossfunctional.models import load_model

    upstream = {}
    ours = {}
    for name, up_name in UPSTREAM_NAMES.items():
        model = CHGNet.load(model_name=up_name, use_device="cpu", verbose=False).eval()
        model.graph_converter.set_isolated_atom_response("ignore")  # as our calculator: allowed
        upstream[(name, "float32")] = model
        upstream[(name, "float64")] = upstream_double(model)
        for dtype in ("float32", "float64"):
            ours[(name, dtype)] = CrossFunctionalCalculator(load_model(name, dtype=dtype))

    wbm = load_wbm(args.n, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    cases: list[tuple[str, Atoms, Atoms | None]] = []
    for mid, atoms in wbm:
        cases.append((mid, atoms, None))
        cases.append((f"{mid} perturbed", perturbed(atoms, rng, rattle=0.05, strain=0.03), None))
    cases += edge_cases()
    if not args.no_supercell:
        cases.append(supercell_case(load_wbm(None), ours[(MODEL_NAMES[0], "float32")].model))
    # upstream's float64 copy needs ~8 GB for the supercell's double-backward
    # graph; on a shared machine the supercell runs in float32 only
    float32_only = {cases[-1][0]} if not args.no_supercell else set()

    # comparisons: ours vs upstream in each precision, and, where both ran,
    # each side's own float32 rounding (its float32 result vs its float64 one)
    comparisons = [f"ours vs upstream, {dt}" for dt in args.dtypes]
    if len(args.dtypes) == 2:
        comparisons += ["upstream float32 vs upstream float64", "ours float32 vs ours float64"]
    worst = {name: {c: {q: {"value": 0.0, "case": None} for q in QUANTITIES} for c in comparisons} for name in MODEL_NAMES}
    over = {name: {q: 0 for q in QUANTITIES} for name in MODEL_NAMES}  # float32 cases above tolerance
    rows: list[list] = []
    timing = {"upstream": 0.0, "ours": 0.0}
    start = time.time()
    for k, (label, atoms, reference) in enumerate(cases):
        reference = reference if reference is not None else atoms
        for name in MODEL_NAMES:
            ref, got = {}, {}
            for dtype in args.dtypes:
                if dtype != "float32" and label in float32_only:
                    continue
                t0 = time.perf_counter()
                ref[dtype] = upstream_predict(upstream[(name, dtype)], reference)
                t1 = time.perf_counter()
                got[dtype] = ours_predict(ours[(name, dtype)], atoms)
                timing["upstream"] += t1 - t0
                timing["ours"] += time.perf_counter() - t1
                if not atoms.pbc.all():
                    assert got[dtype]["stress"] is None, f"{label}: stress for a non-periodic structure"
            devs = {f"ours vs upstream, {dt}": deviations(ref[dt], got[dt]) for dt in got}
            if len(got) == 2:
                devs["upstream float32 vs upstream float64"] = deviations(ref["float64"], ref["float32"])
                devs["ours float32 vs ours float64"] = deviations(got["float64"], got["float32"])
            for comparison, dev in devs.items():
                rows.append([label, len(atoms), name, comparison] + [_round(dev[q]) for q in QUANTITIES])
                for q, v in dev.items():
                    if math.isfinite(v) and v > worst[name][comparison][q]["value"]:
                        worst[name][comparison][q] = {"value": v, "case": label}
                    if comparison == "ours vs upstream, float32" and math.isfinite(v) and v > TOLERANCES[q]:
                        over[name][q] += 1
        if (k + 1) % 100 == 0 or k + 1 == len(cases):
            print(f"[{time.time() - start:7.0f} s] {k + 1}/{len(cases)} cases", flush=True)

    units = {"energy": "eV/atom", "forces": "eV/Å", "stress": "GPa", "magmoms": "μB", "site_energies": "eV"}
    print(f"\n{len(cases)} cases ({len(wbm)} WBM structures x 2, {len(cases) - 2 * len(wbm)} others)")
    for name in MODEL_NAMES:
        for comparison in comparisons:
            print(f"\n{name}: {comparison}, largest deviation")
            for q in QUANTITIES:
                w = worst[name][comparison][q]
                flag = ""
                if comparison == "ours vs upstream, float32":
                    flag = f"  (tolerance {TOLERANCES[q]:g}; {over[name][q]} of {len(cases)} cases above)"
                print(f"  {q:14s} {w['value']:10.3g} {units[q]:8s} on {w['case']}{flag}")

    import ase
    import chgnet

    summary = {
        "description": "largest absolute deviation of our TorchScript CHGNet from upstream chgnet per quantity",
        "units": units,
        "tolerances_float32": TOLERANCES,
        "n_wbm_structures": len(wbm),
        "n_cases": len(cases),
        "float32_only": sorted(float32_only),
        "perturbation": {"rattle_A": 0.05, "strain_max": 0.03, "seed": args.seed},
        "versions": {
            "chgnet": chgnet.__version__,
            "torch": torch.__version__,
            "ase": ase.__version__,
            "python": platform.python_version(),
        },
        "seconds": {"upstream": round(timing["upstream"], 1), "ours": round(timing["ours"], 1)},
        "worst": worst,
        "cases_above_tolerance_float32": over,
        "per_case_columns": ["case", "n_atoms", "model", "comparison", *QUANTITIES],
    }
    # summary indented, then one line per case and comparison
    text = json.dumps(summary, indent=1, ensure_ascii=False)[:-2]
    text += ',\n "per_case": [\n' + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n ]\n}\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=f".{args.out.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
