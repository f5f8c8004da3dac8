"""AtomRef refits against real r2SCAN labels with little data: plain Eq. 2
against the elemental prior and the prior plus a ridge fit of the residual
(:func:`crossfunctional.transfer.atomref.fit_atomref_with_prior`).

Data: the 348 Materials Project binaries shipped with the package (MP r2SCAN
total energies per atom ``e_r2scan`` at MP's PBE-relaxed structures; the
structures are PBE relaxations, the r2SCAN energies belong to r2SCAN
relaxations). Base model: ``chgnet-0.3.0`` (GGA/GGA+U). Prior: r2SCAN minus
PBE energy per atom of the MatPES elemental ground states.

Protocol: 5-fold cross-validation over the compounds (fixed seed); in each
fold the AtomRef is refitted on a random subset of the training compounds
(sizes 25 to all, three subset seeds) and scored on the held-out fold. Scores
are pooled over the held-out compounds of all folds:

- Pearson ρ after re-referencing (Huang et al. 2025, Fig. 2b): the base
  model's energy minus its own AtomRef against the label minus the refitted
  AtomRef, per atom;
- MAE of the re-referenced model's energy per atom against the label, eV/atom.

Reference rows: no refit, and the AtomRef of the shipped r2SCAN model
(fitted on MP r2SCAN data by Huang et al.).

    python benchmarks/transfer_atomref_prior.py

Writes ``benchmarks/results/transfer/atomref_prior.json`` and
``atomref_prior.png``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "transfer"
SIZES = (25, 50, 100, 200, 278)


def load_binaries():
    from pymatgen.core import Structure

    from crossfunctional.data import data_path
    from crossfunctional.transfer.data import LabelledStructure

    with gzip.open(data_path("mp_binaries_r2scan_formation.json.gz"), "rt") as fh:
        raw = json.load(fh)
    out = []
    for rec in raw:
        s = Structure.from_dict(rec["structure"])
        out.append(LabelledStructure(structure=s, energy=rec["e_r2scan"] * len(s), material_id=rec["material_id"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)

    from crossfunctional.calculators import predict_batch
    from crossfunctional.models import load_model
    from crossfunctional.transfer.atomref import composition_matrix, fit_atomref, fit_atomref_with_prior, get_atomref

    t0 = time.perf_counter()
    records = load_binaries()
    base = load_model("chgnet-0.3.0")
    preds = predict_batch([r.atoms() for r in records], base, max_edges=50_000)
    m = np.array([p["energy"] / r.n_atoms for p, r in zip(preds, records)])
    y = np.array([r.energy_per_atom for r in records])
    C = composition_matrix(records)
    a_base = np.nan_to_num(get_atomref(base))
    g = m - C @ a_base  # the base model's energy per atom without its AtomRef

    def score(atomref_per_compound: np.ndarray) -> dict:
        target = y - np.einsum("ij,ij->i", C, atomref_per_compound)
        return {"pearson": float(np.corrcoef(g, target)[0, 1]), "mae_eV_per_atom": float(np.mean(np.abs(g - target)))}

    rows = {"no refit (chgnet-0.3.0 AtomRef)": score(np.tile(a_base, (len(y), 1))),
            "shipped chgnet-r2scan AtomRef": score(np.tile(np.nan_to_num(get_atomref("chgnet-r2scan")), (len(y), 1)))}
    parts = np.array_split(np.random.default_rng(args.seed).permutation(len(y)), args.folds)
    methods = ("Eq. 2", "prior", "prior + ridge")
    curves = {k: {} for k in methods}
    alphas = []
    for n in SIZES:
        per_seed = {k: [] for k in methods}
        for sub_seed in args.subset_seeds:
            refs = {k: np.empty((len(y), C.shape[1])) for k in methods}
            for k, test in enumerate(parts):
                train = np.concatenate([p for j, p in enumerate(parts) if j != k])
                rng = np.random.default_rng(1000 * sub_seed + k)
                train = rng.choice(train, size=min(n, train.size), replace=False)
                sub = [records[i] for i in train]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    eq2 = fit_atomref(sub, source=a_base, allow_rank_deficient=True).atomref
                prior_only = fit_atomref_with_prior(sub, base=base, alpha=1e12, base_energies=m[train])  # alpha -> infinity: the prior alone
                ridge = fit_atomref_with_prior(sub, base=base, base_energies=m[train], folds=min(5, len(sub)))
                alphas.append({"size": int(n), "fold": k, "subset_seed": sub_seed, "alpha": ridge.alpha})
                refs["Eq. 2"][test] = eq2
                refs["prior"][test] = prior_only.atomref
                refs["prior + ridge"][test] = ridge.atomref
            for key in methods:
                per_seed[key].append(score(refs[key]))
        for key in methods:
            curves[key][n] = {
                q: {"mean": float(np.mean([s[q] for s in per_seed[key]])), "std": float(np.std([s[q] for s in per_seed[key]]))}
                for q in ("pearson", "mae_eV_per_atom")
            }
    out = {
        "data": "348 MP binaries, MP r2SCAN energies per atom at MP PBE-relaxed structures",
        "base_model": "chgnet-0.3.0",
        "prior": "MatPES r2SCAN - PBE elemental ground states",
        "protocol": f"{args.folds}-fold cross-validation (seed {args.seed}), training subsets of each fold's training "
        f"compounds, subset seeds {args.subset_seeds}; pooled held-out scores, mean and std over subset seeds",
        "training_sizes": list(SIZES),
        "reference_rows": rows,
        "curves": {k: {str(n): v for n, v in c.items()} for k, c in curves.items()},
        "ridge_alphas": alphas,
        "folds": [sorted(records[i].material_id for i in p) for p in parts],
        "wall_time_s": time.perf_counter() - t0,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "atomref_prior.json").write_text(json.dumps(out, indent=1))
    plot(out, results / "atomref_prior.png")
    for name, row in rows.items():
        print(f"{name:<34} ρ {row['pearson']:.3f}  MAE {row['mae_eV_per_atom']:.3f} eV/atom")
    for key in methods:
        print(f"{key:<14}" + "  ".join(f"n={n}: ρ {curves[key][n]['pearson']['mean']:.3f} MAE {curves[key][n]['mae_eV_per_atom']['mean']:.3f}" for n in SIZES))
    return 0


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    sizes = out["training_sizes"]
    for ax, q, label in ((axes[0], "pearson", "held-out Pearson ρ after re-referencing"), (axes[1], "mae_eV_per_atom", "held-out MAE (eV/atom)")):
        for key, curve in out["curves"].items():
            mean = [curve[str(n)][q]["mean"] for n in sizes]
            std = [curve[str(n)][q]["std"] for n in sizes]
            ax.errorbar(sizes, mean, yerr=std, marker="o", capsize=3, label=key)
        for (name, row), ls in zip(out["reference_rows"].items(), (":", "--")):
            ax.axhline(row[q], color="gray", ls=ls, lw=1, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("training compounds")
        ax.set_ylabel(label)
        if q == "mae_eV_per_atom":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("AtomRef refit of chgnet-0.3.0 to MP r2SCAN energies (348 binaries, 5-fold CV)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
