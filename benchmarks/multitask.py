"""Multi-task CHGNet on real structures: the r2SCAN channel of a
GGA + r2SCAN multi-task model against single-task fine-tunes on the same
r2SCAN structures, and the sweep that chose the selective-L2 default.

Data: the shipped WBM structures (``crossfunctional.data``) with at most 8 atoms (611 of
972; the size cap keeps each training run to minutes on 2 CPU cores), split
once with a seed:

- **r2SCAN task**: 50 structures labelled by the shipped r2SCAN CHGNet
  (``chgnet-r2scan``: energy, forces, stress, magmoms), drawn from one
  chemical family: the 30 elements grown greedily until 144 structures lie
  inside (intermetallics: Al, Au, Cd, Co, Cu, Dy, Er,
  Fe, Ga, Hf, Ho, In, Ir, La, Mg, Nd, Ni, Pd, Pr, Pt, Rh, Ru, Sb, Sc, Si, Sn,
  Sr, Tb, Th, Zn). 10 of the 50 are the **bridge**: they also carry their GGA
  label. Why a family: the r2SCAN-GGA energy offset is per element and only
  r2SCAN labels can fix it; 50 random WBM structures span ~62 elements with
  rank <= 50, so the r2SCAN AtomRef is under-determined and every model is
  eV/atom off on held-out structures (``random_50_design``, reported too). In the
  family the 50 structures determine all 30 elements (rank 30).
- **GGA task**: WBM structures outside the family with their real PBE labels,
  ``corrected_energy`` (MP2020-compatible, as CHGNet 0.3.0 was trained on);
  the structures are PBE-relaxed, so forces and stress are labelled zero.
- **validation**: 20 r2SCAN-labelled family structures, 20 GGA-labelled ones.
- **test**: the other family structures (74), labelled by ``chgnet-r2scan``
  and seen by no model in any form; validation and test contain only
  elements present among the 50 r2SCAN training structures.

Arms, all starting from CHGNet 0.3.0 (GGA/GGA+U), with the same batch size,
learning-rate schedule and loss weights (Huber, 3:1:0.1:1):

- ``zero-shot``: 0.3.0 as is, and 0.3.0 with the "residual" AtomRef (source
  AtomRef + the least-squares per-element shift of label - prediction on the
  50 r2SCAN training structures, the multi-task model's initial r2SCAN AtomRef).
- ``single: Method 4``: ``finetune(method="refit-atomref")``
  (AtomRef refitted to the 50 r2SCAN labels by Eq. 2, rank-deficient data
  allowed, frozen; chgnet's Trainer).
- ``single: residual AtomRef``: the same fine-tune with the residual AtomRef
  (``frozen-atomref`` on 0.3.0 re-referenced), the multi-task model's start.
- ``multi-task``: GGA + r2SCAN + bridge, selective L2 (default λ_T),
  ``best_model.pth.tar`` chosen on the r2SCAN validation score.
- ``multi-task, no bridge``: the bridge structures keep only their r2SCAN labels.

Single-task runs take as many epochs as give them the multi-task run's
number of optimiser steps (their epoch is shorter). Test MAEs are of the
exported plain models (``load_model(best, task="r2scan")``, float32).

    python benchmarks/multitask.py sweep      # chooses the λ_T default (validation)
    python benchmarks/multitask.py compare    # the comparison above

Writes ``benchmarks/results/multitask/{sweep,compare}.json`` and ``.md``,
``multitask_curves.png`` and the runs' ``history`` CSVs; the runs themselves
stay in ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from crossfunctional.data import data_path

REPO = Path(__file__).resolve().parents[1]
DATA = data_path("wbm_random_pbe_equilibrium.json.gz")
RESULTS = REPO / "benchmarks" / "results" / "multitask"
QUANTITIES = (("energy_mae_meV_per_atom", "energy (meV/atom)"), ("force_mae_meV_per_A", "forces (meV/Å)"),
              ("stress_mae_GPa", "stress (GPa)"), ("magmom_mae_muB", "magmoms (μB)"))


def chemical_family(records, size: int) -> set[int]:
    """Elements grown greedily (each step the element that brings the most
    structures entirely inside the set; ties: the more frequent element, then
    the lower Z) until ``size`` structures lie inside."""
    sets = [frozenset(r.atomic_numbers.tolist()) for r in records]
    counts: dict[int, int] = {}
    for els in sets:
        for z in els:
            counts[z] = counts.get(z, 0) + 1
    family: set[int] = set()
    while sum(els <= family for els in sets) < size:
        family.add(max((z for z in counts if z not in family),
                       key=lambda z: (sum(els <= family | {z} for els in sets), counts[z], -z)))
    return family


def prepare(n_gga: int, seed: int, max_atoms: int = 8, family_size: int = 144, n_r2scan: int = 50,
            n_bridge: int = 10, n_val: int = 20, n_ood: int = 100) -> dict:
    """The splits described in the module docstring."""
    from dataclasses import replace

    from crossfunctional.transfer.atomref import composition_matrix
    from crossfunctional.transfer.data import read_json
    from crossfunctional.transfer.labels import label_with_model

    records = [r for r in read_json(DATA, energy_key="corrected_energy", energy_per_atom=False) if r.n_atoms <= max_atoms]
    gga = [replace(r, forces=np.zeros((r.n_atoms, 3)), stress=np.zeros((3, 3)), magmoms=None) for r in records]
    family = chemical_family(gga, family_size)
    inside = [i for i, r in enumerate(gga) if set(r.atomic_numbers.tolist()) <= family]
    outside = [i for i, r in enumerate(gga) if not set(r.atomic_numbers.tolist()) <= family]
    rng = np.random.default_rng(seed)
    inside = [inside[k] for k in rng.permutation(len(inside))]
    outside = [outside[k] for k in rng.permutation(len(outside))]
    r2_idx = inside[:n_r2scan]
    covered = {int(z) for i in r2_idx for z in gga[i].atomic_numbers}
    ok = [i for i in inside[n_r2scan:] if set(gga[i].atomic_numbers.tolist()) <= covered]
    val_idx, test_idx = ok[:n_val], ok[n_val:]
    gga_train_idx, gga_val_idx = outside[:n_gga], outside[n_gga : n_gga + n_val]
    ood_idx = outside[-n_ood:]  # never trained on, whatever n_gga
    if n_gga + n_val > len(outside) - n_ood:
        raise RuntimeError(f"n_gga {n_gga} too large: {len(outside)} structures outside the family")
    A = composition_matrix([gga[i] for i in r2_idx])
    rank = int(np.linalg.matrix_rank(A[:, A.any(axis=0)]))

    def scan(idx):
        return label_with_model([gga[i] for i in idx], "chgnet-r2scan", material_ids=[gga[i].material_id for i in idx])

    r2 = scan(r2_idx)
    from crossfunctional.models.loading import ELEMENTS

    return {
        "r2_train": r2[n_bridge:],  # r2SCAN labels only
        "bridge_r2": r2[:n_bridge],  # the bridge: these structures ...
        "bridge_gga": [gga[i] for i in r2_idx[:n_bridge]],  # ... with their GGA labels too
        "r2_val": scan(val_idx),
        "test": scan(test_idx),
        "ood": scan(ood_idx),
        "gga_train": [gga[i] for i in gga_train_idx],
        "gga_val": [gga[i] for i in gga_val_idx],
        "family": sorted(ELEMENTS[z - 1] for z in family),
        "n_elements_r2scan": len(covered),
        "rank_r2scan": rank,
        "n_candidates": len(records),
    }


def residual_atomref(records, source: str = "chgnet-0.3.0"):
    """Source AtomRef + least-squares per-element shift of (label - source
    prediction) per atom (the multi-task model's initial AtomRef of a new task),
    minimum-norm shift for rank-deficient data."""
    import warnings

    from crossfunctional.calculators import predict_batch
    from crossfunctional.transfer.atomref import composition_matrix, fit_atomref, get_atomref

    src = get_atomref(source)
    pred = np.array([p["energy"] for p in predict_batch([r.atoms() for r in records], source)])
    n = np.array([r.n_atoms for r in records])
    gnn = pred / n - composition_matrix(records) @ src
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_atomref(records, source=src, allow_rank_deficient=True,
                           energies_per_atom=np.array([r.energy_per_atom for r in records]) - gnn)


def random_design(seed: int, max_atoms: int = 8, n_r2scan: int = 50, n_test: int = 100) -> dict:
    """Why the r2SCAN structures come from one chemical family: with 50 random
    WBM structures the r2SCAN AtomRef is under-determined, and the zero-shot
    energy error on held-out structures of the same elements is eV/atom."""
    from crossfunctional.models import load_model
    from crossfunctional.transfer.atomref import rereference
    from crossfunctional.transfer.data import read_json
    from crossfunctional.transfer.labels import label_with_model
    from crossfunctional.transfer.finetune import evaluate

    records = [r for r in read_json(DATA, energy_key="corrected_energy", energy_per_atom=False) if r.n_atoms <= max_atoms]
    order = np.random.default_rng(seed).permutation(len(records))
    train = [records[i] for i in order[:n_r2scan]]
    covered = {int(z) for r in train for z in r.atomic_numbers}
    test = [records[i] for i in order[n_r2scan:] if set(records[i].atomic_numbers.tolist()) <= covered][:n_test]
    train, test = (label_with_model(x, "chgnet-r2scan", material_ids=[r.material_id for r in x]) for x in (train, test))
    fit = residual_atomref(train)
    model = rereference(load_model("chgnet-0.3.0"), fit.atomref)
    return {"n_train": len(train), "n_elements": len(fit.fitted_elements), "rank": fit.rank, "n_test": len(test),
            "zero_shot_residual_atomref_test_energy_mae_meV_per_atom": evaluate(model, test)["energy_mae_meV_per_atom"],
            "zero_shot_residual_atomref_train_energy_mae_meV_per_atom": evaluate(model, train)["energy_mae_meV_per_atom"]}


def run_multitask(data: dict, out: Path, epochs: int, batch_size: int, bias_l2: float, bridge: bool, seed: int,
                  task_lr_factor: float | None = None):
    from crossfunctional.transfer.multitask import train_multitask

    if bridge:
        train = {"pbe": data["gga_train"], "r2scan": data["r2_train"]}
        bridge_set = {"pbe": data["bridge_gga"], "r2scan": data["bridge_r2"]}
    else:
        train = {"pbe": data["gga_train"], "r2scan": data["bridge_r2"] + data["r2_train"]}
        bridge_set = None
    val = {"pbe": data["gga_val"], "r2scan": data["r2_val"]}
    t0 = time.perf_counter()
    extra = {} if task_lr_factor is None else {"task_lr_factor": task_lr_factor}
    res = train_multitask(train, val, bridge_set, base="chgnet-0.3.0", output_dir=out, epochs=epochs,
                          batch_size=batch_size, bias_l2=bias_l2, best_task="r2scan", seed=seed, progress=False, **extra)
    return res, time.perf_counter() - t0


def test_metrics(model, records) -> dict:
    from crossfunctional.transfer.finetune import evaluate

    return evaluate(model, records)


def multitask_row(name: str, res, seconds: float, data: dict) -> dict:
    from crossfunctional.models import load_model

    best = next(r for r in res.history if r["epoch"] == res.best_epoch)
    return {
        "arm": name,
        "test": test_metrics(load_model(res.best_checkpoint, task="r2scan"), data["test"]),
        "ood": test_metrics(load_model(res.best_checkpoint, task="r2scan"), data["ood"]),
        "gga_val": res.metrics["pbe"],
        "r2scan_val_score": best["val_score_r2scan"],
        "best_epoch": res.best_epoch,
        "epochs": int(res.history[-1]["epoch"]),
        "bias_norm": {t: best[f"bias_norm_{t}"] for t in res.tasks},
        "seconds": seconds,
        "history": str(res.output_dir / "history.csv"),
    }


def cmd_sweep(args, data: dict, work: Path, results: Path) -> dict:
    rows = []
    for factor, lam in args.points:
        res, _ = run_multitask(data, work / f"sweep_f{factor:g}_l2_{lam:g}", args.epochs, args.batch_size, lam, True,
                               args.seed, task_lr_factor=factor)
        seconds = training_seconds(res.history)
        row = multitask_row(f"lr factor {factor:g}, λ_T = {lam:g}", res, seconds, data) | {"bias_l2": lam, "task_lr_factor": factor}
        rows.append(row)
        print(f"task lr factor {factor:g}, λ_T {lam:g}: r2SCAN validation score {row['r2scan_val_score']:.5f} "
              f"(best epoch {row['best_epoch']}), bias norms {json.dumps({k: round(v, 3) for k, v in row['bias_norm'].items()})}, "
              f"test {json.dumps({k: round(v, 4) for k, v in row['test'].items()})}  [{seconds:.0f} s]", flush=True)
    best = min(rows, key=lambda r: r["r2scan_val_score"])
    return {"rows": rows, "chosen_bias_l2": best["bias_l2"], "chosen_task_lr_factor": best["task_lr_factor"],
            "criterion": "lowest r2SCAN validation score Σ λ_k MAE_k (energy eV/atom, forces eV/Å, stress GPa, magmoms μB) "
                         "of the checkpoint chosen on it"}


def cmd_compare(args, data: dict, work: Path, results: Path) -> dict:
    from crossfunctional.io import atomic_path
    from crossfunctional.models import load_model
    from crossfunctional.transfer.atomref import read_atomref, rereference
    from crossfunctional.transfer.finetune import finetune, load_upstream
    from crossfunctional.transfer.multitask import MultiTaskConfig

    lam = MultiTaskConfig.bias_l2 if args.bias_l2 is None else args.bias_l2
    factor = MultiTaskConfig.task_lr_factor if args.task_lr_factor is None else args.task_lr_factor
    rows = []
    res, _ = run_multitask(data, work / "multitask", args.epochs, args.batch_size, lam, True, args.seed, factor)
    seconds = training_seconds(res.history)
    rows.append(multitask_row("multi-task (GGA + r2SCAN + bridge)", res, seconds, data))
    steps_multi = int(res.history[-1]["epoch"]) * math.ceil(
        (len(data["gga_train"]) + len(data["r2_train"]) + len(data["bridge_gga"]) + len(data["bridge_r2"])) / args.batch_size)
    shutil.copyfile(res.output_dir / "training_curves.png", results / "multitask_curves.png")
    shutil.copyfile(res.output_dir / "history.csv", results / "multitask_history.csv")
    residual = read_atomref(res.output_dir / "atomref_r2scan.json")
    print(f"multi-task: {json.dumps(rows[-1]['test'])}  [{seconds:.0f} s]", flush=True)

    res_nb, _ = run_multitask(data, work / "multitask_no_bridge", args.epochs, args.batch_size, lam, False, args.seed,
                              factor)
    seconds = training_seconds(res_nb.history)
    rows.append(multitask_row("multi-task, no bridge", res_nb, seconds, data))
    shutil.copyfile(res_nb.output_dir / "history.csv", results / "multitask_no_bridge_history.csv")
    print(f"multi-task, no bridge: {json.dumps(rows[-1]['test'])}  [{seconds:.0f} s]", flush=True)

    r2 = data["bridge_r2"] + data["r2_train"]
    single_epochs = max(args.epochs, round(steps_multi / math.ceil(len(r2) / args.batch_size)))
    upstream, model_dict = load_upstream("chgnet-0.3.0")
    with torch.no_grad():
        upstream.composition_model.fc.weight.copy_(torch.as_tensor(residual, dtype=torch.float32).view(1, -1))
    base_residual = work / "chgnet-0.3.0_residual_atomref.pth.tar"
    with atomic_path(base_residual) as tmp:
        torch.save({"model": {"state_dict": upstream.state_dict(), "model_args": model_dict["model_args"]}}, tmp)
    for name, base, method in (("single-task: Method 4 (Eq. 2 AtomRef)", "chgnet-0.3.0", "refit-atomref"),
                               ("single-task: residual AtomRef", str(base_residual), "frozen-atomref")):
        fres = finetune(r2, data["r2_val"], None, base=base, output_dir=work / f"single_{method}", epochs=single_epochs,
                        batch_size=args.batch_size, method=method, allow_rank_deficient=True, seed=args.seed, progress=False)
        seconds = training_seconds(fres.history)
        rows.append({"arm": name, "test": test_metrics(fres.torchscript, data["test"]),
                     "ood": test_metrics(fres.torchscript, data["ood"]), "best_epoch": fres.best_epoch,
                     "epochs": single_epochs, "seconds": seconds, "history": str(fres.output_dir / "history.csv")})
        shutil.copyfile(fres.output_dir / "history.csv", results / f"single_{method}_history.csv")
        print(f"{name}: {json.dumps(rows[-1]['test'])}  [{seconds:.0f} s]", flush=True)

    gga = load_model("chgnet-0.3.0")
    rows.append({"arm": "zero-shot: CHGNet 0.3.0 (GGA AtomRef)", "test": test_metrics(gga, data["test"]),
                 "ood": test_metrics(gga, data["ood"]), "seconds": 0.0})
    rows.append({"arm": "zero-shot: 0.3.0 + residual AtomRef", "test": test_metrics(rereference(gga, residual), data["test"]),
                 "ood": test_metrics(gga, data["ood"]), "seconds": 0.0})
    diag = random_design(args.seed)
    print(f"random design: {json.dumps(diag)}", flush=True)
    return {"rows": rows, "bias_l2": lam, "task_lr_factor": factor, "multitask_epochs": args.epochs,
            "single_task_epochs": single_epochs,
            "random_50_design": diag,
            "multitask_steps": steps_multi,
            "gga_val_chgnet_0.3.0": test_metrics(gga, data["gga_val"])}


def training_seconds(history: list[dict]) -> float:
    """Wall time of the training epochs (and the initial validation) of a run's history."""
    return float(sum(r.get("seconds", 0.0) for r in history if np.isfinite(r.get("seconds", 0.0))))


def table(rows: list[dict], extra: tuple = ()) -> str:
    head = ["arm"] + [label for _, label in QUANTITIES] + ["OOD forces (meV/Å)", "OOD stress (GPa)"]
    head += [label for _, label in extra] + ["best / epochs", "time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = r["test"]
        cells = [r["arm"]] + [f"{t[k]:.4g}" if k in t else "" for k, _ in QUANTITIES]
        cells += [f"{r['ood'][k]:.4g}" if k in r.get("ood", {}) else "" for k in ("force_mae_meV_per_A", "stress_mae_GPa")]
        cells += [f"{r[k]:.4g}" if isinstance(r.get(k), float) else "" for k, _ in extra]
        cells += [f"{r['best_epoch']} / {r['epochs']}" if "epochs" in r else "", f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["sweep", "compare"])
    parser.add_argument("--n-gga", type=int, default=None, help="GGA training structures (sweep 60, compare 120)")
    parser.add_argument("--epochs", type=int, default=None, help="multi-task epochs (sweep 5, compare 6)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bias-l2", type=float, default=None, help="compare: λ_T (default: the library default)")
    parser.add_argument("--task-lr-factor", type=float, default=None, help="compare: task-bias learning-rate factor (library default)")
    parser.add_argument("--points", nargs="+", default=["1:0", "30:0", "300:0", "1000:0", "300:1e-7", "300:1e-6", "300:1e-5", "300:1e-4"],
                        help="sweep: FACTOR:LAMBDA pairs (task-bias learning-rate factor, λ_T)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/multitask_benchmark")
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs in --workdir instead of reusing them")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sweep = args.part == "sweep"
    args.n_gga = args.n_gga or (60 if sweep else 120)
    args.epochs = args.epochs or (5 if sweep else 6)
    args.points = [tuple(float(x) for x in p.split(":")) for p in args.points]

    from crossfunctional.io import atomic_write

    work = Path(args.workdir) / args.part
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)  # finished runs with the same settings and data are reused
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = prepare(args.n_gga, args.seed)
    sizes = {k: len(v) for k, v in data.items() if isinstance(v, list) and k != "family"}
    print(f"data: {json.dumps(sizes)}; r2SCAN family {'-'.join(data['family'])}; {data['n_elements_r2scan']} "
          f"elements in the r2SCAN training set, composition rank {data['rank_r2scan']}", flush=True)
    out = cmd_sweep(args, data, work, results) if sweep else cmd_compare(args, data, work, results)
    out |= {
        "part": args.part, "sizes": sizes, "r2scan_family": data["family"],
        "n_elements_r2scan_train": data["n_elements_r2scan"], "composition_rank_r2scan_train": data["rank_r2scan"],
        "candidates_max_8_atoms": data["n_candidates"], "n_gga": args.n_gga, "epochs": args.epochs,
        "batch_size": args.batch_size, "seed": args.seed, "threads": args.threads,
        "total_seconds": time.perf_counter() - t0,
        "training_seconds_total": float(sum(r.get("seconds", 0.0) for r in out["rows"])),
        "labels": {"r2scan": "chgnet-r2scan predictions (energy, forces, stress, magmoms) on the relaxed WBM structures",
                   "pbe": "WBM corrected_energy (PBE, MP2020 corrections); forces and stress zero (relaxed structures)"},
        "units": "test MAEs: energy meV/atom, forces meV/Å, stress GPa, magmoms μB (transfer.evaluate)",
    }
    with atomic_write(results / f"{args.part}.json") as fh:
        json.dump(out, fh, indent=1)
    extra = (("r2scan_val_score", "r2SCAN val score"),) if sweep else ()
    md = table(out["rows"], extra)
    with atomic_write(results / f"{args.part}.md") as fh:
        fh.write(md + "\n")
    print(md)
    print(f"total {out['total_seconds']:.0f} s; wrote {results / (args.part + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
