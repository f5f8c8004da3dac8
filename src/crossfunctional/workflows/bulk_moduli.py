"""BM32 bulk-modulus benchmark: equations of state of 32 cubic solids against experiment.

Each solid of BM32 (the rows of the shipped ``solids_expt_lc_ecoh_bm.csv``
flagged ``in_bm32``) is built as its primitive cell at the zero-point-corrected
experimental lattice constant, and its equation of state is computed with
:func:`crossfunctional.workflows.eos.eos` (relax, 11 volumes within ±6 %,
third-order Birch-Murnaghan fit) for each model. B0 is compared with the
zero-point-corrected experimental bulk modulus.

Reference data: lattice constants from P. Hao et al., Phys. Rev. B 85, 014111
(2012); zero-point-corrected bulk moduli (BM32) from L. Schimka, J. Harl,
G. Kresse, J. Chem. Phys. 134, 024116 (2011) and J. Sun et al., Phys. Rev. B
84, 035117 (2011), as compiled for the mBEEF benchmark (J. Wellendorff et
al., J. Chem. Phys. 140, 144107 (2014)); see ``crossfunctional/data/README.md``.

Units: GPa (bulk moduli), Å³ (volumes), Å (lattice constants), % (relative errors).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from crossfunctional.data import data_path
from crossfunctional.io import save_figure
from crossfunctional.errors import WorkflowError
from crossfunctional.workflows.eos import eos

__all__ = ["BM32Solid", "BulkModuliBenchmark", "build_bm32_solid", "bulk_moduli_benchmark", "load_bm32"]

log = logging.getLogger(__name__)

DATA_FILE = "solids_expt_lc_ecoh_bm.csv"
#: ``structure`` column of the data file -> (``ase.build.bulk`` crystal structure, atoms per primitive cell)
STRUCTURES = {
    "fcc": ("fcc", 1),
    "bcc": ("bcc", 1),
    "diamond": ("diamond", 2),
    "rocksalt": ("rocksalt", 2),
    "zincblende": ("zincblende", 2),
    "cesiumchloride": ("cesiumchloride", 2),
}


@dataclass(frozen=True)
class BM32Solid:
    """One solid of BM32.

    Attributes:
        name: e.g. ``"MgO_b1"``.
        formula: first element at the origin (e.g. ``"MgO"``).
        structure: ``ase.build.bulk`` crystal structure (``"rocksalt"``, ...).
        a_exp: zero-point-corrected experimental conventional lattice constant, Å.
        b_exp: zero-point-corrected experimental bulk modulus, GPa.
    """

    name: str
    formula: str
    structure: str
    a_exp: float
    b_exp: float


def load_bm32() -> list[BM32Solid]:
    """The 32 solids of BM32, in the order of the shipped csv.

    Raises:
        ValueError: the shipped file is malformed.
    """
    with open(data_path(DATA_FILE), encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["in_bm32"].strip() == "True"]
    solids = []
    for r in rows:
        if r["structure"] not in STRUCTURES:
            raise ValueError(f"{DATA_FILE}: BM32 solid {r['name']} has structure {r['structure']!r}, not a cubic prototype")
        solids.append(
            BM32Solid(
                name=r["name"],
                formula=r["formula"],
                structure=r["structure"],
                a_exp=float(r["a_exp_zpe_corrected_A"]),
                b_exp=float(r["bulk_modulus_exp_zpe_corrected_GPa"]),
            )
        )
    return solids


def build_bm32_solid(solid: BM32Solid, a: float | None = None) -> Atoms:
    """Primitive cell of ``solid`` (``ase.build.bulk``) at conventional lattice constant ``a`` (Å; default a_exp)."""
    from ase.build import bulk

    structure, n = STRUCTURES[solid.structure]
    atoms = bulk(solid.formula, structure, a=solid.a_exp if a is None else float(a))
    if len(atoms) != n:
        raise ValueError(f"{solid.name}: ase.build.bulk gave {len(atoms)} atoms, expected {n}")
    return atoms


@dataclass
class SolidBulkModulus:
    """All models' equation-of-state results for one solid: ``models[label]``
    is a dict with ``b0`` (GPa), ``v0`` (Å³ per atom), ``e0`` (eV/atom),
    ``b0_prime``, ``rms_residual`` (eV/atom), ``converged`` and, when the fit
    failed, ``error``."""

    solid: BM32Solid
    models: dict[str, dict[str, Any]] = field(default_factory=dict)


def _stats(values: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    v, r = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    ok = np.isfinite(v)
    if not ok.any():
        return {"mae_gpa": float("nan"), "mare_percent": float("nan"), "mre_percent": float("nan"), "n_solids": 0}
    err = v[ok] - r[ok]
    rel = 100 * err / r[ok]
    return {
        "mae_gpa": float(np.abs(err).mean()),
        "mare_percent": float(np.abs(rel).mean()),
        "mre_percent": float(rel.mean()),
        "n_solids": int(ok.sum()),
    }


@dataclass
class BulkModuliBenchmark:
    """Result of :func:`bulk_moduli_benchmark`.

    Attributes:
        models: model labels in the order they were run.
        solids: one :class:`SolidBulkModulus` per solid.
        protocol: EOS settings.
    """

    models: list[str]
    solids: list[SolidBulkModulus]
    protocol: dict[str, Any] = field(default_factory=dict)

    def _b0(self, model: str) -> np.ndarray:
        return np.array([s.models[model].get("b0", float("nan")) for s in self.solids], dtype=float)

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        """``{model: {"mae_gpa", "mare_percent", "mre_percent", "n_solids"}}`` over
        the solids whose fit succeeded (MRE < 0: the model is too soft)."""
        b_exp = [s.solid.b_exp for s in self.solids]
        return {m: _stats(self._b0(m), b_exp) for m in self.models}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"summary": {MODEL: {"mae_gpa", "mare_percent",
        "mre_percent", "n_solids"}}, "solids": [{"name", "formula", "structure",
        "a_exp", "b_exp", "models": {MODEL: {"b0", "v0", "e0", "b0_prime",
        "rms_residual", "converged"}}}], "models", "protocol", "units", "reference"}``."""
        return {
            "summary": self.summary,
            "solids": [
                {
                    "name": s.solid.name,
                    "formula": s.solid.formula,
                    "structure": s.solid.structure,
                    "a_exp": s.solid.a_exp,
                    "b_exp": s.solid.b_exp,
                    "models": {m: dict(r) for m, r in s.models.items()},
                }
                for s in self.solids
            ],
            "models": list(self.models),
            "protocol": dict(self.protocol),
            "units": {
                "b0": "GPa",
                "b_exp": "GPa (zero-point corrected)",
                "v0": "angstrom^3 per atom",
                "e0": "eV/atom",
                "rms_residual": "eV/atom",
                "a_exp": "angstrom (conventional cubic cell)",
            },
            "reference": (
                "BM32 zero-point-corrected bulk moduli: Schimka, Harl, Kresse, J. Chem. Phys. 134, 024116 (2011); "
                "Sun et al., Phys. Rev. B 84, 035117 (2011); lattice constants: Hao et al., Phys. Rev. B 85, 014111 (2012)"
            ),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BulkModuliBenchmark:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ValueError: a required key is missing.
        """
        try:
            solids = [
                SolidBulkModulus(
                    BM32Solid(r["name"], r["formula"], r["structure"], float(r["a_exp"]), float(r["b_exp"])),
                    {m: dict(v) for m, v in r["models"].items()},
                )
                for r in data["solids"]
            ]
            return cls(models=list(data["models"]), solids=solids, protocol=dict(data.get("protocol", {})))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a bulk-moduli benchmark dict: {exc}") from None

    @classmethod
    def read(cls, path: str | os.PathLike) -> BulkModuliBenchmark:
        """Read a ``bulk_moduli_benchmark.json`` written by :meth:`write`."""
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def merge(self, other: BulkModuliBenchmark) -> BulkModuliBenchmark:
        """A benchmark with the models of both (same solids, in ``self``'s order).

        Raises:
            ValueError: the solids differ or a model label appears in both.
        """
        if [s.solid.name for s in self.solids] != [s.solid.name for s in other.solids]:
            raise ValueError("cannot merge bulk-moduli benchmarks over different solids")
        if set(self.models) & set(other.models):
            raise ValueError(f"models in both benchmarks: {sorted(set(self.models) & set(other.models))}")
        solids = [SolidBulkModulus(a.solid, {**a.models, **b.models}) for a, b in zip(self.solids, other.solids)]
        return BulkModuliBenchmark(self.models + other.models, solids, {**other.protocol, **self.protocol})

    def table(self) -> str:
        """Plain text: per solid B_exp and each model's B0 (GPa) and relative
        error (%); MAE, MARE and MRE rows at the end."""
        name_w = max(len("MARE (%)"), *(len(s.solid.name) for s in self.solids))
        widths = [max(9, len(m)) for m in self.models]
        head = [f"{'solid':<{name_w}}", f"{'B_exp':>7}"]
        for m, w in zip(self.models, widths):
            head += [f"{m:>{w}}", f"{'%':>7}"]
        lines = ["  ".join(head), "-" * len("  ".join(head))]
        for s in self.solids:
            cells = [f"{s.solid.name:<{name_w}}", f"{s.solid.b_exp:7.1f}"]
            for m, w in zip(self.models, widths):
                b = s.models[m].get("b0", float("nan"))
                rel = 100 * (b - s.solid.b_exp) / s.solid.b_exp
                cells += [f"{b:>{w}.1f}", f"{rel:7.1f}"]
            lines.append("  ".join(cells))
        lines.append(lines[1])
        summary = self.summary
        for key, label in (("mae_gpa", "MAE (GPa)"), ("mare_percent", "MARE (%)"), ("mre_percent", "MRE (%)")):
            cells = [f"{label:<{name_w}}", f"{'':>7}"]
            for m, w in zip(self.models, widths):
                cells += [f"{summary[m][key]:>{w}.2f}", f"{'':>7}"]
            lines.append("  ".join(cells))
        return "\n".join(lines)

    def to_csv(self) -> str:
        """CSV: name, formula, structure, a_exp, b_exp and, per model,
        ``<model>_b0``, ``<model>_rel_error_percent``, ``<model>_v0``, ``<model>_b0_prime``."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        header = ["name", "formula", "structure", "a_exp", "b_exp"]
        for m in self.models:
            header += [f"{m}_b0", f"{m}_rel_error_percent", f"{m}_v0", f"{m}_b0_prime"]
        writer.writerow(header)
        for s in self.solids:
            row: list[Any] = [s.solid.name, s.solid.formula, s.solid.structure, s.solid.a_exp, s.solid.b_exp]
            for m in self.models:
                r = s.models[m]
                b = r.get("b0", float("nan"))
                row += [f"{b:.3f}", f"{100 * (b - s.solid.b_exp) / s.solid.b_exp:.3f}",
                        f"{r.get('v0', float('nan')):.5f}", f"{r.get('b0_prime', float('nan')):.3f}"]  # fmt: skip
            writer.writerow(row)
        return buf.getvalue()

    def plot(self, path: str | os.PathLike) -> Path:
        """Log-log parity plot (PNG) of B0 against B_exp, one marker set per model, MAE in the legend."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.5, 5.0), dpi=150)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        b_exp = np.array([s.solid.b_exp for s in self.solids])
        summary = self.summary
        markers = ["o", "s", "^", "D", "v", "P", "X"]
        values = [b_exp]
        for i, m in enumerate(self.models):
            b = self._b0(m)
            values.append(b[np.isfinite(b)])
            ax.scatter(b_exp, b, marker=markers[i % len(markers)], s=22, alpha=0.75,
                       label=f"{m} (MAE {summary[m]['mae_gpa']:.1f} GPa, MRE {summary[m]['mre_percent']:+.1f} %)")  # fmt: skip
        allv = np.concatenate(values)
        allv = allv[allv > 0]
        lo, hi = float(allv.min()) / 1.3, float(allv.max()) * 1.3
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, zorder=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel("experimental bulk modulus (GPa, zero-point corrected)")
        ax.set_ylabel("predicted B0 (GPa, Birch-Murnaghan)")
        ax.set_title(f"BM32 bulk moduli ({len(self.solids)} solids)")
        ax.legend(loc="upper left", fontsize=7)
        fig.tight_layout()
        return save_figure(fig, path, dpi=150)

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``bulk_moduli_benchmark.json`` (:meth:`to_dict`),
        ``bulk_moduli_benchmark.csv`` (:meth:`to_csv`) and ``bulk_moduli_parity.png``
        (:meth:`plot`) into ``output_dir``, each atomically.

        Returns:
            ``{"json": path, "csv": path, "png": path}``.
        """
        from crossfunctional.io import write_result_files

        return write_result_files(self, output_dir, "bulk_moduli_benchmark", "bulk_moduli_parity.png")


def _select(solids: Iterable[BM32Solid | str] | None) -> list[BM32Solid]:
    table = load_bm32()
    if solids is None:
        return table
    by_name = {s.name: s for s in table}
    chosen = []
    for s in solids:
        if isinstance(s, BM32Solid):
            chosen.append(s)
        elif isinstance(s, str) and s in by_name:
            chosen.append(by_name[s])
        else:
            raise ValueError(f"unknown BM32 solid {s!r}: expected one of {', '.join(by_name)}")
    if not chosen:
        raise ValueError("solids is empty: nothing to benchmark")
    return chosen


def bulk_moduli_benchmark(
    models: Sequence[str] = ("chgnet-r2scan", "chgnet-0.3.0"),
    solids: Iterable[BM32Solid | str] | None = None,
    *,
    dispersion: str | None = None,
    dispersion_functional: str | None = None,
    device: str = "cpu",
    dtype: str = "float64",
    n_volumes: int = 11,
    volume_range: float = 0.06,
    fmax: float = 1e-3,
    steps: int = 1000,
    progress: bool = True,
) -> BulkModuliBenchmark:
    """Bulk moduli of the BM32 solids with each model, against experiment.

    Each solid starts as its primitive cell at a_exp (:func:`build_bm32_solid`);
    :func:`~crossfunctional.workflows.eos.eos` relaxes it (FIRE,
    FrechetCellFilter, FixSymmetry, ``fmax``) and fits the third-order
    Birch-Murnaghan form to ``n_volumes`` volumes within ±``volume_range``.

    Args:
        models: model names or files; each label in the result is the name,
            with ``+<dispersion>`` appended when ``dispersion`` is given.
        solids: subset of BM32 (objects or names such as ``"MgO_b1"``); None for all 32.
        dispersion, dispersion_functional: as for
            :class:`~crossfunctional.calculators.CrossFunctionalCalculator`.
        device: torch device.
        dtype: ``"float64"`` (default; smooth energies for the fit, at little
            cost on cells of 1-2 atoms) or ``"float32"``.
        n_volumes, volume_range, fmax, steps: as for :func:`~crossfunctional.workflows.eos.eos`.
        progress: tqdm progress bar on standard error.

    Returns:
        :class:`BulkModuliBenchmark`.

    Raises:
        ValueError: no or duplicate models, an unknown solid.
        crossfunctional.models.ModelError, crossfunctional.calculators.dispersion.DispersionError:
            from the calculator.
    """
    from tqdm.auto import tqdm

    from crossfunctional import __version__
    from crossfunctional.calculators import CrossFunctionalCalculator

    models = [models] if isinstance(models, str) else [str(m) for m in models]
    if not models:
        raise ValueError("models is empty: give at least one model name")
    if len(set(models)) != len(models):
        raise ValueError(f"models must be distinct, got {models}")
    chosen = _select(solids)
    labels = [m if dispersion is None else f"{m}+{dispersion}" for m in models]
    results = [SolidBulkModulus(s) for s in chosen]
    bar = tqdm(total=len(models) * len(chosen), disable=not progress, desc="BM32", unit="EOS")
    try:
        for model, label in zip(models, labels):
            calc = CrossFunctionalCalculator(
                model=model, device=device, dtype=dtype, dispersion=dispersion, dispersion_functional=dispersion_functional
            )
            for res in results:
                bar.set_postfix_str(f"{label} {res.solid.name}")
                atoms = build_bm32_solid(res.solid)
                n = len(atoms)
                try:
                    out = eos(atoms, calc, n_volumes=n_volumes, volume_range=volume_range, fmax=fmax, steps=steps)
                except WorkflowError as exc:
                    log.warning("%s with %s: %s", res.solid.name, label, exc)
                    res.models[label] = {"b0": float("nan"), "error": str(exc)}
                else:
                    res.models[label] = {
                        "b0": out.b0,
                        "v0": out.v0 / n,
                        "e0": out.e0 / n,
                        "b0_prime": out.b0_prime,
                        "rms_residual": out.rms_residual,
                        "converged": bool(all(out.converged)),
                    }
                bar.update(1)
    finally:
        bar.close()
    protocol = {
        "start": "primitive cell at a_exp (ase.build.bulk)",
        "relaxation": "FIRE + FrechetCellFilter + FixSymmetry",
        "fmax_eV_per_A": float(fmax),
        "max_steps": int(steps),
        "n_volumes": int(n_volumes),
        "volume_range": float(volume_range),
        "eos": "birch_murnaghan (pymatgen)",
        "dispersion": dispersion,
        "device": str(device),
        "dtype": str(dtype),
        "crossfunctional_version": __version__,
    }
    return BulkModuliBenchmark(models=labels, solids=results, protocol=protocol)
