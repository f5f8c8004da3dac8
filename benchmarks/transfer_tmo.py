"""Methods 1-4 of Huang et al. 2025 on real r2SCAN frames of transition-metal oxides.

Data: the 87 r2SCAN frames of 28 transition-metal oxides shipped with the
package (``r2scan_tmo_frames.json.gz``: energies ``energy_sigma0_eV``, forces,
stresses; 30 relaxation runs of very unequal length). How the frames are used:

- the isolated O atom is not used (one atom has no graph and no crystal
  energy to score);
- the O2 molecule in a box enters only the AtomRef fits (Methods 1 and 4 and
  the re-referenced zero-shot model), where it pins the oxygen reference;
  it is never trained on and never scored;
- the 85 crystal frames are split by run (grouped k-fold, k = 5, seed 0,
  ``transfer.group_kfold``; no run in both training and test of a fold). In
  each fold one fifth of the training runs (grouped again) is the
  validation set, which picks the saved epoch.
- Some training folds cannot separate two elements in the AtomRef fit (Fe
  and Sr occur only together, in SrFeO3): the fits are rank-deficient and
  keep the source's values along the undetermined directions
  (``allow_rank_deficient``).

Scored on the held-out frames of all folds, pooled (each crystal frame
exactly once per seed): energy MAE (eV/atom), also over the frames whose
elements all occur in their fold's training runs (an element seen in no
training run keeps the source's AtomRef), force MAE (eV/Å, over
components), stress MAE (GPa, over the 9 components):

- ``chgnet-0.3.0`` and ``chgnet-r2scan`` zero-shot;
- ``chgnet-r2scan`` with only its AtomRef re-referenced to each training fold
  (least squares of the per-atom residual label - model on composition, Eq. 2
  applied to the residual, added to the model's AtomRef; no training);
- Methods 1-4 fine-tuned from ``chgnet-0.3.0`` (``transfer.finetune``: the
  paper's loss, weights, learning rate and cosine schedule, ``--epochs``
  epochs, batch size ``--batch-size`` because a training fold holds only
  about 55 frames), for each seed: mean and spread over seeds;
- ``refit-atomref-prior``: Method 4 with the AtomRef of
  ``fit_atomref_with_prior`` (chgnet-0.3.0's AtomRef + MatPES elemental
  prior + ridge residual fitted on the training frames and O2) instead of
  Eq. 2 (``finetune(atomref_prior="matpes")``).

    python benchmarks/transfer_tmo.py --epochs 50 --seeds 0 1 2 --workdir /tmp/transfer_tmo

Writes ``benchmarks/results/transfer/tmo_methods.json`` (folds, settings,
per-method pooled MAEs per seed, mean and standard deviation),
``tmo_methods.md`` (the table) and ``tmo_methods_curves.png`` (validation
energy MAE per epoch, mean over the folds, one line per method and seed; the
curves are kept in the JSON). Runs resume from ``--workdir``. With
``--merge``, the (method, seed) results and curves already in the output's
``tmo_methods.json`` that this invocation does not tabulate are kept (only
when epochs, batch size, folds and fold seed match), so that seeds trained on
different machines or at different times pool into one table; the figure is
redrawn only when every method tabulated has curves of at least one seed.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.units import GPa  # noqa: E402

from crossfunctional.data import data_path  # noqa: E402
from crossfunctional.io import atomic_write, save_figure  # noqa: E402
from crossfunctional.transfer import fit_atomref, get_atomref, group_kfold, read_json, rereference  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "transfer"
METHODS = ("scratch", "trainable-atomref", "frozen-atomref", "refit-atomref", "refit-atomref-prior")
#: paper method numbers; "refit-atomref-prior" is Method 4 with the AtomRef of
#: ``fit_atomref_with_prior`` (base + MatPES elemental prior + ridge residual) instead of Eq. 2
LABELS = {"scratch": "Method 1 (scratch)", "trainable-atomref": "Method 2 (trainable-atomref)",
          "frozen-atomref": "Method 3 (frozen-atomref)", "refit-atomref": "Method 4 (refit-atomref, Eq. 2)",
          "refit-atomref-prior": "Method 4, elemental-prior AtomRef"}


def load_frames():
    """(crystal frames, O2 reference frames, frames not used) of the shipped set."""
    records = read_json(data_path("r2scan_tmo_frames.json.gz"), energy_key="energy_sigma0_eV", energy_per_atom=False)
    crystals, o2, unused = [], [], []
    for r in records:
        if r.structure.composition.chemical_system != "O":
            crystals.append(r)
        elif r.n_atoms >= 2:
            o2.append(r)
        else:
            unused.append(r)
    return crystals, o2, unused


def elements(records) -> set[str]:
    return {el.symbol for r in records for el in r.structure.composition.elements}


def errors(records, predictions, seen: set[str]) -> dict[str, np.ndarray]:
    """Per-frame absolute energy errors (eV/atom), per-component force (eV/Å)
    and stress (GPa) errors, concatenated, and per frame whether all its
    elements occur in ``seen`` (the fold's training runs and the O2 frame)."""
    e = np.array([abs(p["energy"] - r.energy) / r.n_atoms for r, p in zip(records, predictions)])
    known = np.array([elements([r]) <= seen for r in records])
    f = np.concatenate([np.abs(p["forces"] - r.forces).ravel() for r, p in zip(records, predictions)])
    from ase.stress import voigt_6_to_full_3x3_stress

    s = np.concatenate([np.abs(voigt_6_to_full_3x3_stress(p["stress"]) - r.stress).ravel() / GPa
                        for r, p in zip(records, predictions)])
    return {"energy": e, "forces": f, "stress": s, "seen": known}


def pooled(parts: list[dict[str, np.ndarray]]) -> dict[str, float]:
    e = np.concatenate([p["energy"] for p in parts])
    seen = np.concatenate([p["seen"] for p in parts])
    return {
        "energy_mae_seen_elements_eV_per_atom": float(e[seen].mean()) if seen.any() else None,
        "n_frames_seen_elements": int(seen.sum()),
        "energy_mae_eV_per_atom": float(np.concatenate([p["energy"] for p in parts]).mean()),
        "force_mae_eV_per_A": float(np.concatenate([p["forces"] for p in parts]).mean()),
        "stress_mae_GPa": float(np.concatenate([p["stress"] for p in parts]).mean()),
        "n_frames": int(sum(len(p["energy"]) for p in parts)),
    }


def write_table(path: Path, lines: list[str]) -> None:
    """Write a Markdown table (atomically) and print it."""
    with atomic_write(path) as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def predict(records, model):
    from crossfunctional.calculators import predict_batch

    return predict_batch([r.atoms() for r in records], model)


def rereferenced_r2scan(train, o2):
    """chgnet-r2scan with its AtomRef shifted by the Eq. 2 fit of the per-atom
    residual (label - model) of ``train`` + O2 on composition."""
    from crossfunctional.models import load_model

    model = load_model("chgnet-r2scan")
    fit_set = [*train, *o2]
    residual = [(r.energy - p["energy"]) / r.n_atoms for r, p in zip(fit_set, predict(fit_set, model))]
    # elements absent from the fit, and directions the data cannot separate, keep a zero shift
    shift = fit_atomref(fit_set, energies_per_atom=residual, allow_rank_deficient=True).atomref
    return rereference(model, get_atomref(model) + np.nan_to_num(shift))


def load_earlier(path: Path, settings: dict, folds: list) -> dict:
    """The earlier ``tmo_methods.json`` at ``path`` ({} when there is none).

    Raises:
        SystemExit: it was made with other epochs, batch size, fold seed or
            folds, so its results cannot be pooled with these.
    """
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    old = earlier.get("settings", {})
    differ = [k for k, v in settings.items() if old.get(k) != v]
    if earlier.get("folds") != folds:
        differ.append("folds")
    if differ:
        raise SystemExit(f"--merge: {path} differs in {', '.join(differ)}; "
                         "write to another --output or train those seeds again")
    return earlier


def merge_earlier(earlier: dict, trained: dict, curves: dict) -> None:
    """Add to ``trained`` and ``curves`` (in place) the (method, seed) results
    and curves of ``earlier`` (see :func:`load_earlier`) that are not there
    yet. Curves stored by older versions of this script, one seed per method
    as ``{"seed": s, "val_e_per_fold": ...}``, are read as that seed's."""
    for method, by_seed in earlier.get("trained", {}).items():
        for seed, result in by_seed.items():
            trained.setdefault(method, {}).setdefault(seed, result)
    for method, by_seed in earlier.get("curves", {}).items():
        if "val_e_per_fold" in by_seed:
            by_seed = {str(by_seed["seed"]): by_seed["val_e_per_fold"]}
        for seed, per_fold in by_seed.items():
            curves.setdefault(method, {}).setdefault(seed, per_fold)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--folds", type=int, nargs="*", default=None, help="only these folds (default all 5)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--workdir", type=Path, default=Path("transfer_tmo_runs"))
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--only-finished", action="store_true",
                   help="train nothing: tabulate the (seed, method) runs finished on every fold in --workdir")
    p.add_argument("--merge", action="store_true",
                   help="keep the (method, seed) results of the existing output JSON that this run does not tabulate")
    args = p.parse_args()
    torch.set_num_threads(1)
    finetune = importlib.import_module("crossfunctional.transfer.finetune").finetune

    crystals, o2, unused = load_frames()
    folds = group_kfold(crystals, k=5, seed=0)
    fold_ids = args.folds if args.folds is not None else list(range(len(folds)))
    seen = {f: elements([crystals[i] for i in folds[f][0]]) | elements(o2) for f in range(len(folds))}
    folds_now = [{"fold": f, "test_runs": sorted({crystals[i].material_id for i in folds[f][1]}),
                  "n_test": len(folds[f][1])} for f in fold_ids]
    earlier = load_earlier(args.output / "tmo_methods.json", {"epochs": args.epochs, "batch_size": args.batch_size,
                           "fold_seed": 0}, folds_now) if args.merge else {}
    t0 = time.perf_counter()

    zero_shot = {}
    for name in ("chgnet-0.3.0", "chgnet-r2scan"):
        parts = [errors([crystals[i] for i in folds[f][1]], predict([crystals[i] for i in folds[f][1]], name), seen[f]) for f in fold_ids]
        zero_shot[name] = pooled(parts)
    parts = []
    for f in fold_ids:
        train, test = [crystals[i] for i in folds[f][0]], [crystals[i] for i in folds[f][1]]
        parts.append(errors(test, predict(test, rereferenced_r2scan(train, o2)), seen[f]))
    zero_shot["chgnet-r2scan, AtomRef re-referenced"] = pooled(parts)
    print(json.dumps(zero_shot, indent=1), flush=True)
    # the frames are near-equilibrium relaxation steps: the MAE of predicting zero forces and stress
    test_all = [crystals[i] for f in fold_ids for i in folds[f][1]]
    zeros = [{"energy": 0.0, "forces": np.zeros_like(r.forces), "stress": np.zeros(6)} for r in test_all]
    zero = pooled([errors(test_all, zeros, set())])
    zero_prediction = {"force_mae_eV_per_A": zero["force_mae_eV_per_A"], "stress_mae_GPa": zero["stress_mae_GPa"],
                       "median_frame_max_force_component_eV_per_A": float(np.median([np.abs(r.forces).max() for r in test_all]))}

    trained: dict[str, dict[str, dict]] = {m: {} for m in args.methods}
    curves: dict[str, dict] = {}  # method -> seed -> [[validation energy MAE (eV/atom) per epoch] per fold]
    for seed in args.seeds:
        for method in args.methods:
            if args.only_finished and not all(
                    (args.workdir / f"seed{seed}" / f"fold{f}" / method / "metrics.json").is_file() for f in fold_ids):
                continue
            parts, best = [], []
            for f in fold_ids:
                train_all = [crystals[i] for i in folds[f][0]]
                inner = group_kfold(train_all, k=5, seed=seed)[0]
                train, val = [train_all[i] for i in inner[0]], [train_all[i] for i in inner[1]]
                test = [crystals[i] for i in folds[f][1]]
                prior = "matpes" if method == "refit-atomref-prior" else None
                res = finetune(train, val, None, base="chgnet-0.3.0", output_dir=args.workdir / f"seed{seed}" / f"fold{f}" / method,
                               method=method.removesuffix("-prior"), atomref_prior=prior, epochs=args.epochs, batch_size=args.batch_size, seed=seed, targets="efs",
                               progress=False, atomref_records=o2, allow_rank_deficient=True)
                parts.append(errors(test, predict(test, str(res.torchscript)), seen[f]))
                best.append(res.best_epoch)
                curves.setdefault(method, {}).setdefault(str(seed), []).append([row["val_e"] for row in res.history])
                print(f"seed {seed} {method} fold {f}: best epoch {res.best_epoch}, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
            trained[method][str(seed)] = {**pooled(parts), "best_epoch_per_fold": best}

    if args.merge:
        merge_earlier(earlier, trained, curves)

    trained = {m: dict(sorted(trained[m].items(), key=lambda kv: int(kv[0]))) for m in METHODS if trained.get(m)}
    curves = {m: dict(sorted(curves[m].items(), key=lambda kv: int(kv[0]))) for m in METHODS if m in curves}
    summary = {}
    for method, by_seed in trained.items():
        summary[method] = {"seeds": [int(k) for k in by_seed]}
        for key in ("energy_mae_eV_per_atom", "energy_mae_seen_elements_eV_per_atom", "force_mae_eV_per_A", "stress_mae_GPa"):
            vals = np.array([v[key] for v in by_seed.values()])
            summary[method][key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else None}
    result = {
        "data": {"crystal_frames": len(crystals), "runs": len({r.material_id for r in crystals}),
                 "o2_frames_atomref_only": len(o2), "unused_frames": [r.source for r in unused]},
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size,
                     "seeds": sorted({int(k) for by_seed in trained.values() for k in by_seed}), "k": 5,
                     "fold_seed": 0, "base": "chgnet-0.3.0", "targets": "efs", "threads": 1,
                     "atomref_fit": "Eq. 2 on the training fold + O2; rank-deficient directions keep the source"},
        "folds": folds_now,
        "zero_shot": zero_shot,
        "zero_forces_and_stress": zero_prediction,
        "trained": trained,
        "curves": curves,
        "summary": summary,
        "wall_time_s": time.perf_counter() - t0,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.output / "tmo_methods.json") as fh:
        json.dump(result, fh, indent=1)
    n_seen = next(iter(zero_shot.values()))["n_frames_seen_elements"]
    lines = [f"| model | energy MAE (eV/atom) | energy MAE, {n_seen} frames of elements seen in training (eV/atom) "
             "| force MAE (eV/Å) | stress MAE (GPa) |", "| --- | --- | --- | --- | --- |"]
    lines.append(f"| zero forces and stress (no model) | – | – | {zero_prediction['force_mae_eV_per_A']:.4f} "
                 f"| {zero_prediction['stress_mae_GPa']:.3f} |")
    for name, m in zero_shot.items():
        lines.append(f"| {name} (no training) | {m['energy_mae_eV_per_atom']:.4f} | {m['energy_mae_seen_elements_eV_per_atom']:.4f} "
                     f"| {m['force_mae_eV_per_A']:.4f} | {m['stress_mae_GPa']:.3f} |")
    for method, m in summary.items():
        def cell(k: str, digits: int) -> str:
            spread = "" if m[k]["std"] is None else f" ± {m[k]['std']:.{digits}f}"
            return f"{m[k]['mean']:.{digits}f}{spread}"

        cells = [cell("energy_mae_eV_per_atom", 4), cell("energy_mae_seen_elements_eV_per_atom", 4),
                 cell("force_mae_eV_per_A", 4), cell("stress_mae_GPa", 3)]
        n = len(m["seeds"])
        seeds = f"{n} seed{'s' if n > 1 else ''}"
        start = "chgnet-0.3.0's architecture, random weights" if method == "scratch" else "fine-tuned from chgnet-0.3.0"
        lines.append(f"| {LABELS[method]}, {start}, {seeds} | " + " | ".join(cells) + " |")
    write_table(args.output / "tmo_methods.md", lines)

    missing = [m for m in summary if m not in curves]
    if missing:  # e.g. merged seeds whose runs are gone: keep the figure drawn from them
        print(f"{args.output / 'tmo_methods_curves.png'} not redrawn: no training curves for {', '.join(missing)}")
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
    for colour, method in enumerate(curves):
        seeds = list(curves[method])
        for k, seed in enumerate(seeds):
            runs = curves[method][seed]
            n = min(len(r) for r in runs)
            ax.plot(range(n), 1000 * np.mean([r[:n] for r in runs], axis=0), color=f"C{colour}", lw=1,
                    label=f"{LABELS[method]}, seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}" if k == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation energy MAE (meV/atom)")
    ax.set_title("TMO frames, mean over the folds", fontsize=10)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    save_figure(fig, args.output / "tmo_methods_curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
