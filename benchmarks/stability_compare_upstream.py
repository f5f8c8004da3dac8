"""Stability benchmark: our formation energies against the upstream ``chgnet`` package.

The same protocol is run with both implementations, for the shipped weights:
every compound of the stability set is relaxed from its MP structure with FIRE
+ ``FrechetCellFilter`` to fmax 0.02 eV/Å in at most 500 steps; the elemental
references are the lowest energy per atom of the relaxed MatPES ground states
(r2SCAN, and PBE where the structure differs); formation energy per atom =
compound energy per atom minus the composition-weighted references.

- ours: ``crossfunctional.workflows.stability_benchmark`` (batched relaxations
  with ``relax_many``), read from ``benchmarks/results/stability/
  stability_benchmark.json`` (written by ``crossfunctional benchmark stability``);
- upstream: ``chgnet.model.StructOptimizer`` with its defaults (FIRE,
  ``ase_filter="FrechetCellFilter"``), one structure at a time, and
  ``CHGNet.load(model_name="r2scan")`` / ``"0.3.0"``.

Reported per model: the fraction of compounds whose formation energies agree
within 2 meV/atom (target: at least 95 %), the largest differences with the
step counts of both relaxations, and the differences of the elemental
references. Written: ``benchmarks/results/stability/compare_upstream.json``
(atomically; progress is kept in ``<output>.partial`` so an interrupted run
resumes where it stopped).

Usage (from the repository root)::

    python benchmarks/stability_compare_upstream.py                     # both models, all 348 compounds
    python benchmarks/stability_compare_upstream.py --models chgnet-r2scan --limit 20 --output /tmp/cmp.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from contextlib import redirect_stdout  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pymatgen.core import Composition, Structure  # noqa: E402

from crossfunctional.io import atomic_write  # noqa: E402
from crossfunctional.workflows.stability import _element_structures, load_stability_data  # noqa: E402

ROOT = Path(__file__).resolve().parent
FMAX = 0.02  # eV/Å
STEPS = 500
TOLERANCE = 2e-3  # eV/atom
UPSTREAM_NAMES = {"chgnet-r2scan": "r2scan", "chgnet-0.3.0": "0.3.0"}


def upstream_energy_per_atom(optimizer, structure: Structure) -> tuple[float, int]:
    """Relax with upstream StructOptimizer; (energy per atom in eV, optimizer steps)."""
    with redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = optimizer.relax(structure, fmax=FMAX, steps=STEPS, relax_cell=True, verbose=False)
    traj = res["trajectory"]
    return float(traj.energies[-1]) / len(structure), len(traj.energies) - 1


def run_model(name: str, ours: dict, records: list[dict], partial: dict, save) -> dict:
    from chgnet.model import CHGNet, StructOptimizer

    with redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name=UPSTREAM_NAMES[name], verbose=False)
    optimizer = StructOptimizer(model=model, optimizer_class="FIRE")
    state = partial.setdefault(name, {"references": {}, "compounds": {}})

    elements = sorted({el.symbol for r in records for el in Composition(r["formula"]).elements})
    refs = _element_structures()
    for el in elements:
        if el not in state["references"]:
            state["references"][el] = min(upstream_energy_per_atom(optimizer, s)[0] for s in refs[el])
            save()
    t0 = time.perf_counter()
    for k, rec in enumerate(records):
        if rec["material_id"] in state["compounds"]:
            continue
        e, steps = upstream_energy_per_atom(optimizer, Structure.from_dict(rec["structure"]))
        comp = Composition(rec["formula"]).fractional_composition
        hf = e - sum(x * state["references"][el.symbol] for el, x in comp.items())
        state["compounds"][rec["material_id"]] = {"energy_per_atom": e, "formation_energy": hf, "steps": steps}
        if k % 10 == 0:
            save()
            print(f"  {name}: {k + 1}/{len(records)} compounds, {time.perf_counter() - t0:.0f} s", flush=True)
    save()

    ours_by_id = {c["material_id"]: c for c in ours["compounds"]}
    rows = []
    for rec in records:
        up = state["compounds"][rec["material_id"]]
        mine = ours_by_id[rec["material_id"]]["models"][name]
        rows.append({
            "material_id": rec["material_id"], "formula": rec["formula"],
            "ours_formation_energy": mine["formation_energy"], "upstream_formation_energy": up["formation_energy"],
            "difference": mine["formation_energy"] - up["formation_energy"],
            "ours_steps": mine.get("steps"), "upstream_steps": up["steps"],
        })
    diff = np.abs([r["difference"] for r in rows])
    ref_diff = {el: ours["references"][name][el] - state["references"][el] for el in elements}
    worst = sorted(rows, key=lambda r: -abs(r["difference"]))[:10]
    return {
        "n": len(rows),
        "fraction_within_tolerance": float((diff <= TOLERANCE).mean()),
        "median_abs_difference_ev": float(np.median(diff)),
        "max_abs_difference_ev": float(diff.max()),
        "max_abs_reference_difference_ev": float(max(abs(v) for v in ref_diff.values())),
        "reference_differences": ref_diff,
        "largest_differences": worst,
        "compounds": rows,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(UPSTREAM_NAMES), choices=list(UPSTREAM_NAMES))
    p.add_argument("--ours", type=Path, default=ROOT / "results" / "stability" / "stability_benchmark.json",
                   help="our stability_benchmark.json (run `crossfunctional benchmark stability` first)")
    p.add_argument("--limit", type=int, default=None, help="the first N compounds only")
    p.add_argument("--output", type=Path, default=ROOT / "results" / "stability" / "compare_upstream.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    if not args.ours.is_file():
        raise SystemExit(f"{args.ours} not found: run `crossfunctional benchmark stability` first, or pass --ours FILE")
    ours = json.loads(args.ours.read_text())
    records = load_stability_data()[: args.limit]
    missing = {r["material_id"] for r in records} - {c["material_id"] for c in ours["compounds"]}
    if missing:
        raise SystemExit(f"{args.ours} lacks {len(missing)} of the compounds asked for; run the full benchmark first")
    partial_path = args.output.with_suffix(".partial")
    partial = json.loads(partial_path.read_text()) if partial_path.exists() else {}

    def save():
        with atomic_write(partial_path) as fh:
            json.dump(partial, fh)

    result = {
        "protocol": {"fmax_eV_per_A": FMAX, "steps": STEPS, "optimizer": "FIRE + FrechetCellFilter",
                     "tolerance_ev_per_atom": TOLERANCE, "dtype": ours["settings"]["dtype"],
                     "ours": "workflows.stability_benchmark (relax_many, batched)",
                     "upstream": "chgnet.model.StructOptimizer, one structure at a time"},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1},
        "models": {},
    }
    for name in args.models:
        result["models"][name] = run_model(name, ours, records, partial, save)
        m = result["models"][name]
        print(f"{name}: {100 * m['fraction_within_tolerance']:.1f} % of {m['n']} within 2 meV/atom, "
              f"median |diff| {1e3 * m['median_abs_difference_ev']:.3f} meV/atom, "
              f"max {1e3 * m['max_abs_difference_ev']:.1f} meV/atom")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.output) as fh:
        json.dump(result, fh, indent=1)
    partial_path.unlink(missing_ok=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
