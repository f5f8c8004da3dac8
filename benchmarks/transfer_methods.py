"""The four transfer methods of Huang et al. 2025 (Table 1) on real structures.

Labels: the shipped r2SCAN CHGNet (``chgnet-r2scan``) on the 972 WBM
shipped structures (``crossfunctional.data``), each perturbed (Gaussian rattle 0.05 Å,
random symmetric strain up to ±2 %) so that forces and stresses are non-zero:
energy, forces, stress and magmoms. Source: the GGA/GGA+U CHGNet 0.3.0.
Split by material id 80/10/10 (seed 0); all four methods see the same split
and the same settings (the paper's, except the number of epochs, which is
sized to this machine's time budget).

    python benchmarks/transfer_methods.py --n 600 --epochs 4 --workdir /tmp/transfer_methods

Writes ``benchmarks/results/transfer/methods.json``, ``methods.md`` (table),
``methods_curves.png`` and each run's ``history.csv``; the runs themselves
(checkpoints, exported models) stay in ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from crossfunctional.data import data_path

REPO = Path(__file__).resolve().parents[1]
DATA = data_path("wbm_random_pbe_equilibrium.json.gz")
RESULTS = REPO / "benchmarks" / "results" / "transfer"
ORDER = ("scratch", "trainable-atomref", "frozen-atomref", "refit-atomref")


def labelled_wbm(cache: Path, n: int | None, seed: int):
    """Perturbed WBM structures labelled by chgnet-r2scan (cached as extxyz)."""
    from crossfunctional.transfer import label_with_model, perturb, read_extxyz, read_json, write_extxyz

    if cache.is_file():
        return read_extxyz(cache)
    records = read_json(DATA)
    if n is not None and n < len(records):
        keep = sorted(np.random.default_rng(seed).choice(len(records), n, replace=False))
        records = [records[i] for i in keep]
    t0 = time.perf_counter()
    labelled = label_with_model(perturb(records, rattle=0.05, strain=0.02, seed=seed), "chgnet-r2scan",
                                material_ids=[r.material_id for r in records])
    print(f"labelled {len(labelled)} structures with chgnet-r2scan in {time.perf_counter() - t0:.0f} s", flush=True)
    write_extxyz(labelled, cache)
    return labelled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=600, help="use n of the 972 WBM structures (default 600; 0 = all)")
    parser.add_argument("--methods", nargs="+", default=list(ORDER))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/transfer_methods")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from crossfunctional.transfer import METHODS, evaluate, finetune, fit_atomref, rereference, split_records

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = Path(args.results)
    n = args.n or None
    records = labelled_wbm(work / f"wbm_r2scan_labels_n{n or 'all'}_s{args.seed}.extxyz", n, args.seed)
    train, val, test = split_records(records, (0.8, 0.1, 0.1), by="material", seed=args.seed)
    print(f"split: {len(train)} train / {len(val)} val / {len(test)} test structures", flush=True)
    seen = {int(z) for r in train for z in r.atomic_numbers}
    test_seen = [r for r in test if set(r.atomic_numbers.tolist()) <= seen]
    print(f"{len(test_seen)} test structures have only elements present in the training set", flush=True)

    # zero-epoch references: the GGA model as is, and re-referenced to the AtomRef fitted on the training labels
    fit = fit_atomref(train, source="chgnet-0.3.0", allow_rank_deficient=True)
    refit_model = rereference("chgnet-0.3.0", fit)
    baselines = {
        "chgnet-0.3.0 as is (GGA AtomRef)": evaluate("chgnet-0.3.0", test),
        "chgnet-0.3.0 + refitted AtomRef, no training": evaluate(refit_model, test),
    }
    baselines_seen = {
        "chgnet-0.3.0 as is (GGA AtomRef)": evaluate("chgnet-0.3.0", test_seen),
        "chgnet-0.3.0 + refitted AtomRef, no training": evaluate(refit_model, test_seen),
    }
    summary = {
        "labels": "chgnet-r2scan on perturbed WBM structures (rattle 0.05 Å, strain ±2 %)",
        "source_model": "chgnet-0.3.0",
        "split": {"train": len(train), "val": len(val), "test": len(test), "by": "material", "seed": args.seed},
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size, "loss": "Huber (delta 0.1)",
                     "weights e:f:s:m": "3:1:0.1:1", "lr": "1e-3 cosine to 1e-5", "optimizer": "Adam"},
        "atomref_fit": {k: v for k, v in fit.as_dict().items() if k not in ("atomref", "kept_from_source", "absent_elements")},
        "baselines_test": baselines,
        "n_test_seen_elements": len(test_seen),
        "baselines_test_seen_elements": baselines_seen,
        "methods": {},
    }
    histories = {}
    for name in args.methods:
        t0 = time.perf_counter()
        res = finetune(train, val, test, base="chgnet-0.3.0", output_dir=work / name, method=name,
                       epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, allow_rank_deficient=True,
                       progress=False)
        wall = time.perf_counter() - t0
        histories[name] = res.history
        summary["methods"][name] = {
            "method_number": METHODS[name].number,
            "description": METHODS[name].description,
            "test": res.metrics,
            "test_seen_elements": evaluate(res.torchscript, test_seen),
            "val_energy_mae_eV_per_atom_before": res.val_energy_mae_initial,
            "val_energy_mae_eV_per_atom_best": res.val_energy_mae_best,
            "best_epoch": res.best_epoch,
            "train_seconds": float(sum(r["seconds"] for r in res.history)),
            "seconds_per_epoch": [round(float(r["seconds"]), 1) for r in res.history if r["epoch"] > 0],
            "wall_seconds_this_invocation": wall,
        }
        results.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(res.output_dir / "history.csv", results / f"methods_history_{name}.csv")
        print(f"{name}: {json.dumps(res.metrics)} ({wall:.0f} s)", flush=True)
        write_outputs(summary, histories, results)
    return 0


def write_outputs(summary: dict, histories: dict, results: Path) -> None:
    from crossfunctional.io import atomic_path, atomic_write

    results.mkdir(parents=True, exist_ok=True)
    with atomic_write(results / "methods.json") as fh:
        json.dump(summary, fh, indent=1)
    cols = [("energy_mae_meV_per_atom", "E (meV/atom)", "{:.1f}"), ("force_mae_meV_per_A", "F (meV/Å)", "{:.1f}"),
            ("stress_mae_GPa", "S (GPa)", "{:.3f}"), ("magmom_mae_muB", "m (μB)", "{:.3f}")]
    lines = ["| model | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, m in summary["baselines_test"].items():
        lines.append(f"| {name} | " + " | ".join(fmt.format(m[key]) if key in m else "" for key, _, fmt in cols) + " |")
    for name, d in summary["methods"].items():
        m = d["test"]
        lines.append(f"| Method {d['method_number']}: `{name}` | " + " | ".join(fmt.format(m[key]) if key in m else "" for key, _, fmt in cols) + " |")
    lines += ["", f"Test structures whose elements all occur in the training set ({summary['n_test_seen_elements']} of "
              f"{summary['split']['test']}):", "", lines[0], lines[1]]
    for name, m in summary["baselines_test_seen_elements"].items():
        lines.append(f"| {name} | " + " | ".join(fmt.format(m[key]) if key in m else "" for key, _, fmt in cols) + " |")
    for name, d in summary["methods"].items():
        m = d["test_seen_elements"]
        lines.append(f"| Method {d['method_number']}: `{name}` | " + " | ".join(fmt.format(m[key]) if key in m else "" for key, _, fmt in cols) + " |")
    with atomic_write(results / "methods.md") as fh:
        fh.write("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    styles = {"scratch": "o-", "trainable-atomref": "s--", "frozen-atomref": "^:", "refit-atomref": "D-"}
    for name, rows in histories.items():
        for ax, key, label in ((axes[0], "val_e", "validation energy MAE (eV/atom)"), (axes[1], "val_f", "validation force MAE (eV/Å)")):
            pts = [(r["epoch"], r[key]) for r in rows if key in r and np.isfinite(r[key])]
            ax.plot(*zip(*pts), styles.get(name, "o-"), ms=4, mfc="none", label=f"M{summary['methods'][name]['method_number']} {name}")
            ax.set_xlabel("epoch (0 = before training)")
            ax.set_ylabel(label)
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(results / "methods_curves.png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
