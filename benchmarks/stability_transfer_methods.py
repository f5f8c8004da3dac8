"""Stability benchmark (formation and decomposition energies of the 348
shipped Materials Project binaries, ``crossfunctional benchmark stability``)
of the models fine-tuned on the r2SCAN TMO frames by ``transfer_tmo.py``.

One checkpoint per method: fold ``--fold`` of seed ``--seed`` (the model
trained on four fifths of the TMO runs, the epoch chosen on its validation
runs). Scored against MP r2SCAN formation energies and the MP r2SCAN hull
of the set, beside the shipped models' results
(``benchmarks/results/stability/stability_benchmark.json``). A formation
energy cancels the AtomRef exactly, so Methods 3 and 4 (and Method 4 with
the elemental-prior AtomRef) differ here only through their network weights.

    python benchmarks/stability_transfer_methods.py --workdir /tmp/transfer_tmo

Writes ``benchmarks/results/transfer/tmo_stability.json`` and ``.md``; the
relaxations are saved as they come in ``--workdir`` and an interrupted run
resumes.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_tmo import LABELS, METHODS, RESULTS, write_table  # noqa: E402

from crossfunctional.io import atomic_write  # noqa: E402

SHIPPED = RESULTS.parent / "stability" / "stability_benchmark.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True, help="the --workdir of transfer_tmo.py")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(1)
    from crossfunctional.workflows.stability import stability_benchmark

    models = {}
    for method in args.methods:
        path = args.workdir / f"seed{args.seed}" / f"fold{args.fold}" / method / "model.pt"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run transfer_tmo.py --methods {method} --seeds {args.seed} first")
        models[method] = str(path)
    result = stability_benchmark(models, partial=args.workdir / f"stability_seed{args.seed}_fold{args.fold}.partial.json")
    shipped = json.loads(SHIPPED.read_text())["summary"]
    rows = {m: result.summary[m] for m in models}
    out = {
        "checkpoints": {m: f"seed {args.seed}, fold {args.fold}" for m in models},
        "settings": result.settings,
        "fine_tuned": {m: {k: s[k] for k in ("formation_mae_vs_dft_ev", "formation_mae_vs_exp_ev", "decomposition_mae_ev",
                                              "failed_relaxations", "formation_vs_dft", "stability_classification", "wall_time_s")}
                       for m, s in rows.items()},
        "shipped": {m: {k: shipped[m][k] for k in ("formation_mae_vs_dft_ev", "formation_mae_vs_exp_ev", "decomposition_mae_ev",
                                                   "failed_relaxations")} for m in shipped},
        "references": result.references,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.output / "tmo_stability.json") as fh:
        json.dump(out, fh, indent=1)
    lines = ["| model | ΔH_f MAE vs MP r2SCAN | ΔH_f MAE vs experiment | decomposition MAE vs MP r2SCAN hull | failed relaxations |",
             "| --- | --- | --- | --- | --- |"]
    for m, s in rows.items():
        lines.append(f"| {LABELS[m]}, fold {args.fold} | {s['formation_vs_dft']['hf_r2scan']['mae']:.3f} "
                     f"| {s['formation_mae_vs_exp_ev']:.3f} | {s['decomposition_vs_dft']['mae']:.3f} | {s['failed_relaxations']} |")
    for m, s in shipped.items():
        lines.append(f"| {m} (shipped, vs its own DFT) | {s['formation_mae_vs_dft_ev']:.3f} | {s['formation_mae_vs_exp_ev']:.3f} "
                     f"| {s['decomposition_mae_ev']:.3f} | {s['failed_relaxations']} |")
    write_table(args.output / "tmo_stability.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
