"""The scaling law of transfer (Huang et al., npj Comput. Mater. 2025, Fig. 6):
test MAE against training-set size on nested subsets, one fine-tuning run per
(method, size), and log-log (power-law) fits with their crossover size."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossfunctional.io import atomic_path, atomic_write
from crossfunctional.transfer.data import LabelledStructure, TransferDataError, check_records
from crossfunctional.transfer.finetune import METHODS, FinetuneConfig, finetune

__all__ = ["PowerLawFit", "ScalingResult", "crossover", "fit_power_law", "scaling_law"]


@dataclass
class PowerLawFit:
    """``log10(MAE) = intercept + slope * log10(n)`` fitted by least squares.

    Attributes:
        slope: log-log slope (dimensionless).
        intercept: log10 of the MAE at n = 1 (MAE units).
        r2: coefficient of determination of the log-log fit.
        n_points: points used.
    """

    slope: float
    intercept: float
    r2: float
    n_points: int

    def predict(self, n: float | np.ndarray) -> float | np.ndarray:
        return 10 ** (self.intercept + self.slope * np.log10(n))


def fit_power_law(sizes: Sequence[float], maes: Sequence[float]) -> PowerLawFit:
    """Fit MAE = 10**intercept * n**slope in log-log space (Fig. 6).

    Raises:
        ValueError: fewer than 2 points, or non-positive sizes or MAEs.
    """
    x = np.asarray(sizes, dtype=float)
    y = np.asarray(maes, dtype=float)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"a power-law fit needs >= 2 (size, MAE) pairs, got {x.size} and {y.size}")
    if np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("sizes and MAEs must be positive and finite for a log-log fit")
    lx, ly = np.log10(x), np.log10(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + slope * lx)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return PowerLawFit(float(slope), float(intercept), r2, int(x.size))


def crossover(a: PowerLawFit, b: PowerLawFit) -> float | None:
    """Training-set size where two fitted power laws give the same MAE
    (the paper's estimate of where transfer stops beating scratch); None for
    parallel lines."""
    if math.isclose(a.slope, b.slope, rel_tol=1e-12, abs_tol=1e-12):
        return None
    return float(10 ** ((b.intercept - a.intercept) / (a.slope - b.slope)))


@dataclass
class ScalingResult:
    """Validation MAEs against training-set size per method, with fits.

    Attributes:
        rows: one dict per run: method, size, energy_mae_meV_per_atom,
            force_mae_meV_per_A (validation set, exported model).
        fits: {method: {"energy": PowerLawFit, "force": PowerLawFit}} over
            sizes >= fit_min_size.
        crossovers: {"energy": n or None, "force": n or None} between the
            first two methods.
    """

    rows: list[dict[str, Any]]
    fits: dict[str, dict[str, PowerLawFit]]
    crossovers: dict[str, float | None]
    fit_min_size: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "fits": {m: {q: asdict(f) for q, f in d.items()} for m, d in self.fits.items()},
            "crossover_training_size": self.crossovers,
            "fit_min_size": self.fit_min_size,
            "model": "log10(MAE) = intercept + slope * log10(n_train)",
        }

    def write(self, directory: str | os.PathLike) -> Path:
        """``scaling.json``, ``scaling.csv`` and ``scaling.png`` (log-log MAE
        against training size with the fitted lines), written atomically."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        directory = Path(directory)
        with atomic_write(directory / "scaling.json") as fh:
            json.dump(self.as_dict(), fh, indent=1)
        cols = ["method", "size", "energy_mae_meV_per_atom", "force_mae_meV_per_A"]
        with atomic_write(directory / "scaling.csv", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
        quantities = [("energy", "energy_mae_meV_per_atom", "energy MAE (meV/atom)"), ("force", "force_mae_meV_per_A", "force MAE (meV/Å)")]
        quantities = [q for q in quantities if any(q[1] in r for r in self.rows)]
        fig, axes = plt.subplots(1, len(quantities), figsize=(4.6 * len(quantities), 3.8), squeeze=False)
        for ax, (q, key, label) in zip(axes[0], quantities):
            for method in dict.fromkeys(r["method"] for r in self.rows):
                pts = sorted((r["size"], r[key]) for r in self.rows if r["method"] == method and key in r)
                line = ax.plot(*zip(*pts), "o", label=method)[0]
                fit = self.fits.get(method, {}).get(q)
                if fit is not None:
                    xs = np.geomspace(min(p[0] for p in pts), max(p[0] for p in pts), 50)
                    ax.plot(xs, fit.predict(xs), "-", color=line.get_color(),
                            label=f"slope {fit.slope:.3f}, R² {fit.r2:.3f}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("training structures")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_path(directory / "scaling.png") as tmp:
            fig.savefig(tmp, dpi=120)
        plt.close(fig)
        return directory / "scaling.json"


def scaling_law(
    train: Sequence[LabelledStructure],
    val: Sequence[LabelledStructure],
    sizes: Sequence[int],
    output_dir: str | os.PathLike = "scaling",
    methods: Sequence[str] = ("refit-atomref", "scratch"),
    base: str | os.PathLike = "chgnet-0.3.0",
    config: FinetuneConfig | None = None,
    fit_min_size: int = 0,
    seed: int = 0,
    progress: bool = True,
    **overrides: Any,
) -> ScalingResult:
    """Train each method on nested subsets of ``train`` (the first ``size``
    structures of one seeded permutation, so smaller sets are contained in
    larger ones), score the exported models on ``val`` and fit log-log slopes
    and R² of MAE against size over sizes >= ``fit_min_size`` (Fig. 6); the
    crossover is where the first two methods' fitted lines meet.

    Runs go to ``output_dir/<method>_n<size>/`` and are resumed / reused like
    :func:`finetune` runs.

    Raises:
        ValueError / TransferDataError: sizes that are not positive or exceed
            the training set, unknown methods, and everything :func:`finetune`
            checks, before the first run starts.
    """
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive integers, got {sizes}")
    if sizes[-1] > len(train):
        raise TransferDataError(f"size {sizes[-1]} exceeds the {len(train)} training structures")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    check_records(val, "validation set")
    order = np.random.default_rng(seed).permutation(len(train))
    out = Path(output_dir)
    rows = []
    for method in methods:
        for size in sizes:
            subset = [train[i] for i in order[:size]]
            res = finetune(subset, val, None, base=base, output_dir=out / f"{method}_n{size}", config=config,
                           progress=progress, method=method, **overrides)
            rows.append({"method": method, "size": size} | {k: v for k, v in res.metrics.items() if k.endswith(("atom", "_A"))})
    fits: dict[str, dict[str, PowerLawFit]] = {}
    for method in methods:
        fits[method] = {}
        for q, key in (("energy", "energy_mae_meV_per_atom"), ("force", "force_mae_meV_per_A")):
            pts = [(r["size"], r[key]) for r in rows if r["method"] == method and key in r and r["size"] >= fit_min_size]
            if len(pts) >= 2:
                fits[method][q] = fit_power_law(*zip(*pts))
    crossovers: dict[str, float | None] = {}
    if len(methods) >= 2:
        for q in ("energy", "force"):
            a, b = fits[methods[0]].get(q), fits[methods[1]].get(q)
            crossovers[q] = crossover(a, b) if a and b else None
    result = ScalingResult(rows, fits, crossovers, fit_min_size)
    result.write(out)
    return result
