"""Scaling law of transfer against training from scratch (Huang et al. 2025, Fig. 6).

Labels and split are those of ``transfer_methods.py``: the shipped r2SCAN
CHGNet on perturbed WBM structures (rattle 0.05 Å, strain up to ±2 %), split
by material id 80/10/10 (seed 0). Method 4 (``refit-atomref``, from the
GGA/GGA+U CHGNet 0.3.0) and Method 1 (``scratch``) are trained on nested
subsets of the training set (the smaller contained in the larger) with the
paper's settings except the number of epochs, and the exported models are
scored on the validation set. ``crossfunctional.transfer.scaling_law`` fits
log10(MAE) = a + b log10(n) per method and the size where the two lines meet.

Small subsets do not contain every element of the validation set; for an
element absent from the training subset the refitted AtomRef keeps the
source model's (GGA) value, which is off by the functional shift (eV/atom).
The validation MAEs are therefore also reported on the validation structures
whose elements all occur in the smallest subset.

    python benchmarks/transfer_scaling.py --sizes 60 120 240 480 --epochs 8 --workdir /tmp/transfer_scaling

Writes ``benchmarks/results/transfer/scaling/`` (scaling.json, .csv, .png from
the library, and scaling_benchmark.json with the seen-element scores and the
wall times).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_methods import RESULTS, labelled_wbm  # noqa: E402  (same labels and cache)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[60, 120, 240, 480])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n", type=int, default=600, help="use n of the 972 WBM structures (as transfer_methods.py)")
    parser.add_argument("--methods", nargs="+", default=["refit-atomref", "scratch"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/transfer_scaling")
    parser.add_argument("--results", default=str(RESULTS / "scaling"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from crossfunctional.io import atomic_write
    from crossfunctional.transfer import evaluate, split_records
    from crossfunctional.transfer.scaling import fit_power_law, scaling_law

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    records = labelled_wbm(work / f"wbm_r2scan_labels_n{args.n}_s{args.seed}.extxyz", args.n, args.seed)
    train, val, _ = split_records(records, (0.8, 0.1, 0.1), by="material", seed=args.seed)
    print(f"split: {len(train)} train / {len(val)} val", flush=True)

    t0 = time.perf_counter()
    result = scaling_law(train, val, args.sizes, output_dir=work / "runs", methods=args.methods, base="chgnet-0.3.0",
                         seed=args.seed, progress=False, epochs=args.epochs, allow_rank_deficient=True)
    wall = time.perf_counter() - t0
    result.write(args.results)

    # the subsets scaling_law used: the first `size` of one seeded permutation
    order = np.random.default_rng(args.seed).permutation(len(train))
    smallest = {int(z) for i in order[: min(args.sizes)] for z in train[i].atomic_numbers}
    val_seen = [r for r in val if set(r.atomic_numbers.tolist()) <= smallest]
    seen_rows = []
    for method in args.methods:
        for size in sorted(set(args.sizes)):
            run = work / "runs" / f"{method}_n{size}"
            model = run / "model.pt"
            seen_rows.append({"method": method, "size": size} | evaluate(str(model), val_seen))
    seen_fits = {}
    for method in args.methods:
        pts = [(r["size"], r) for r in seen_rows if r["method"] == method]
        seen_fits[method] = {
            q: fit_power_law([p[0] for p in pts], [p[1][key] for p in pts]).__dict__
            for q, key in (("energy", "energy_mae_meV_per_atom"), ("force", "force_mae_meV_per_A"))
        }
    summary = {
        "labels": "chgnet-r2scan on perturbed WBM structures (rattle 0.05 Å, strain ±2 %)",
        "source_model": "chgnet-0.3.0",
        "settings": {"epochs": args.epochs, "sizes": sorted(set(args.sizes)), "methods": args.methods,
                     "n_val": len(val), "other": "paper's (Huber 0.1, 3:1:0.1:1, Adam 1e-3 cosine, batch 64)"},
        "wall_seconds": wall,
        "val_all": result.as_dict(),
        "val_seen_elements": {"n": len(val_seen), "elements_in_smallest_subset": len(smallest),
                              "rows": seen_rows, "fits": seen_fits},
    }
    out = Path(args.results)
    with atomic_write(out / "scaling_benchmark.json") as fh:
        json.dump(summary, fh, indent=1)
    print(json.dumps({"wall_s": round(wall), "fits_all": summary["val_all"]["fits"], "fits_seen": seen_fits,
                      "crossover": summary["val_all"]["crossover_training_size"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
