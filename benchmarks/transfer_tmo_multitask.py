"""Multi-task CHGNet on real DFT labels: task ``gga`` on WBM crystals, task
``r2scan`` on the r2SCAN frames of transition-metal oxides, with and without
a bridge set; its r2SCAN channel scored on the held-out TMO frames of the
same grouped folds as ``transfer_tmo.py`` (single-task Methods 1-4).

Data, all shipped with the package:

- task ``gga``: ``--n-gga`` WBM crystals (at most ``--max-atoms`` atoms,
  drawn with seed 0) with their ``corrected_energy`` (PBE with the MP2020
  corrections, the convention of CHGNet 0.3.0's training labels); they are
  PBE-relaxed, so forces and stress are labelled zero;
- task ``r2scan``: the TMO training frames of each fold (the same grouped
  5-fold split by run, inner grouped validation split, as ``transfer_tmo.py``);
  the O2 frame is not used here (the multi-task AtomRef starts from the
  residual fit on the r2SCAN training frames);
- bridge (arm "with bridge"): ``--n-bridge`` of the 348 Materials Project
  binaries (seed 0), each with its MP2020-corrected GGA/GGA+U energy (task
  ``gga``) and its MP r2SCAN energy (task ``r2scan``) on the same
  PBE-relaxed structure; energies only. Caveat: MP's r2SCAN settings are not
  those of the TMO frames, so the bridge's r2SCAN energies sit on a slightly
  different per-element scale (chgnet-r2scan, trained on MP r2SCAN, is
  27 meV/atom off the TMO frames zero-shot);
- GGA validation: 20 further WBM crystals.

Each fold's multi-task run starts from ``chgnet-0.3.0`` (``train_multitask``:
the package defaults, batch size ``--batch-size``, ``--epochs`` epochs, best
epoch by the r2SCAN validation score). The r2SCAN channel is folded into a
plain model (``load_model(best, task="r2scan")``) and scored on the fold's
held-out frames; MAEs pooled over the folds as in ``transfer_tmo.py``.

    python benchmarks/transfer_tmo_multitask.py --workdir /tmp/transfer_tmo_mt

Writes ``benchmarks/results/transfer/tmo_multitask.json`` and ``.md``, with
the single-task rows of ``tmo_methods.json`` beside them. Runs resume from
``--workdir``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_tmo import RESULTS, elements, errors, load_frames, pooled, predict, write_table  # noqa: E402

from crossfunctional.data import data_path  # noqa: E402
from crossfunctional.io import atomic_write  # noqa: E402
from crossfunctional.transfer import group_kfold, read_json  # noqa: E402


def gga_sets(n_gga: int, n_val: int, max_atoms: int):
    """(training, validation) WBM crystals with corrected energies and zero forces and stress."""
    records = [r for r in read_json(data_path("wbm_random_pbe_equilibrium.json.gz"), energy_key="corrected_energy", energy_per_atom=False)
               if r.n_atoms <= max_atoms]
    order = np.random.default_rng(0).permutation(len(records))
    pick = [replace(records[i], forces=np.zeros((records[i].n_atoms, 3)), stress=np.zeros((3, 3)), magmoms=None)
            for i in order[: n_gga + n_val]]
    return pick[:n_gga], pick[n_gga:]


def bridge_set(n: int):
    """{task: records}: the same MP binaries with GGA/GGA+U (MP2020) and r2SCAN energies."""
    out = {}
    for task, key in (("gga", "e_gga_gga_u"), ("r2scan", "e_r2scan")):
        recs = read_json(data_path("mp_binaries_r2scan_formation.json.gz"), energy_key=key, energy_per_atom=True)
        order = np.random.default_rng(0).permutation(len(recs))
        out[task] = [recs[i] for i in order[:n]]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-gga", type=int, default=120)
    p.add_argument("--n-bridge", type=int, default=100)
    p.add_argument("--max-atoms", type=int, default=16)
    p.add_argument("--folds", type=int, nargs="*", default=None, help="only these folds (default all 5)")
    p.add_argument("--arms", nargs="+", default=["bridge", "no-bridge"], choices=["bridge", "no-bridge"])
    p.add_argument("--workdir", type=Path, default=Path("transfer_tmo_multitask_runs"))
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(1)
    from crossfunctional.models import load_model
    from crossfunctional.transfer.multitask import train_multitask

    crystals, o2, _ = load_frames()
    folds = group_kfold(crystals, k=5, seed=0)
    fold_ids = args.folds if args.folds is not None else list(range(len(folds)))
    gga_train, gga_val = gga_sets(args.n_gga, 20, args.max_atoms)
    bridge = bridge_set(args.n_bridge)
    t0 = time.perf_counter()
    arms: dict[str, dict] = {}
    for arm in args.arms:
        parts, best, steps, seconds = [], [], [], []
        for f in fold_ids:
            train_all = [crystals[i] for i in folds[f][0]]
            inner = group_kfold(train_all, k=5, seed=0)[0]  # the inner split of transfer_tmo.py, seed 0
            r2_train, r2_val = [train_all[i] for i in inner[0]], [train_all[i] for i in inner[1]]
            test = [crystals[i] for i in folds[f][1]]
            t1 = time.perf_counter()
            res = train_multitask({"gga": gga_train, "r2scan": r2_train}, {"gga": gga_val, "r2scan": r2_val},
                                  bridge if arm == "bridge" else None, base="chgnet-0.3.0",
                                  output_dir=args.workdir / f"fold{f}" / arm, epochs=args.epochs,
                                  batch_size=args.batch_size, best_task="r2scan", seed=0, progress=False,
                                  allow_rank_deficient=True)
            seen = elements(train_all) | elements(o2)
            parts.append(errors(test, predict(test, load_model(res.best_checkpoint, task="r2scan")), seen))
            best.append(res.best_epoch)
            seconds.append(time.perf_counter() - t1)
            n_entries = len(gga_train) + len(r2_train) + (2 * args.n_bridge if arm == "bridge" else 0)
            steps.append(args.epochs * -(-n_entries // args.batch_size))
            print(f"{arm} fold {f}: best epoch {res.best_epoch}, {time.perf_counter() - t0:.0f} s", flush=True)
        # seconds of this call per fold: a finished run found in --workdir takes about a second
        arms[arm] = {**pooled(parts), "best_epoch_per_fold": best, "optimizer_steps_per_fold": steps,
                     "seconds_per_fold_this_call": seconds}

    single = json.loads((args.output / "tmo_methods.json").read_text()) if (args.output / "tmo_methods.json").is_file() else {}
    result = {
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size, "n_gga": len(gga_train), "n_gga_val": len(gga_val),
                     "max_atoms_gga": args.max_atoms, "n_bridge": args.n_bridge, "folds": fold_ids, "fold_seed": 0,
                     "base": "chgnet-0.3.0", "best_epoch_by": "r2SCAN validation score", "threads": 1},
        "multitask": arms,
        "single_task_from_tmo_methods": {k: single.get(k) for k in ("zero_shot", "summary")},
        "wall_time_s": time.perf_counter() - t0,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.output / "tmo_multitask.json") as fh:
        json.dump(result, fh, indent=1)
    lines = ["| model (r2SCAN channel) | energy MAE (eV/atom) | energy MAE, elements seen in training (eV/atom) "
             "| force MAE (eV/Å) | stress MAE (GPa) |", "| --- | --- | --- | --- | --- |"]
    names = {"bridge": f"multi-task gga + r2scan + bridge ({args.n_bridge} MP binaries)", "no-bridge": "multi-task gga + r2scan, no bridge"}
    for arm, m in arms.items():
        lines.append(f"| {names[arm]} | {m['energy_mae_eV_per_atom']:.4f} | {m['energy_mae_seen_elements_eV_per_atom']:.4f} "
                     f"| {m['force_mae_eV_per_A']:.4f} | {m['stress_mae_GPa']:.3f} |")
    write_table(args.output / "tmo_multitask.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
