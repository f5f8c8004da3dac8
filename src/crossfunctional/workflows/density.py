"""Sol58LC density benchmark: lattice constants of 58 cubic solids.

Each solid of the shipped Sol58LC set (``crossfunctional/data/sol58lc.csv``)
is built as its primitive cell at the experimental lattice constant and
relaxed (positions and cell) with FIRE + ``FrechetCellFilter`` to a largest
force of 0.01 eV/Å in at most 1000 steps, the protocol of
``chgnet.model.StructOptimizer``. The conventional cubic lattice constant is
recovered from the relaxed primitive volume, and compared with experiment.

Reference data (see the csv header):

- a_exp: zero-point-corrected experimental lattice constants, P. Hao, Y. Fang,
  J. Sun, G. I. Csonka, P. H. T. Philipsen, J. Tao, Phys. Rev. B 85, 014111
  (2012); set first collected by P. Haas, F. Tran, P. Blaha, Phys. Rev. B 79,
  085104 (2009).
- a_pbe: PBE lattice constants, from the deviations tabulated in the
  supplement of K. T. Lundgaard, J. Wellendorff, J. Voss, K. W. Jacobsen,
  T. Bligaard, Phys. Rev. B 93, 235162 (2016).

Units: lattice constants in Å, densities in g/cm³, errors in %.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from crossfunctional.errors import WorkflowError
from crossfunctional.io import atomic_path
from crossfunctional.workflows.relax import relax

__all__ = [
    "DensityBenchmark",
    "ModelResult",
    "PROTOTYPES",
    "Solid",
    "SolidResult",
    "build_solid",
    "conventional_lattice_constant",
    "density",
    "density_benchmark",
    "load_sol58lc",
    "relative_error_percent",
]

#: prototype -> (``ase.build.bulk`` crystal structure, atoms per conventional
#: cubic cell, atoms per primitive cell).
PROTOTYPES: dict[str, tuple[str, int, int]] = {
    "fcc": ("fcc", 4, 1),
    "bcc": ("bcc", 2, 1),
    "diamond": ("diamond", 8, 2),
    "rocksalt": ("rocksalt", 8, 2),
    "cesium_chloride": ("cesiumchloride", 2, 2),
    "zincblende": ("zincblende", 8, 2),
}

#: One atomic mass unit in grams (CODATA, via ase.units).
_AMU_G = None


def _amu_in_grams() -> float:
    global _AMU_G
    if _AMU_G is None:
        from ase.units import _amu  # kg

        _AMU_G = _amu * 1e3
    return _AMU_G


DATA_FILE = "sol58lc.csv"
#: Protocol of :func:`density_benchmark` (as ``chgnet.model.StructOptimizer``).
OPTIMIZER = "FIRE"
CELL_FILTER = "FrechetCellFilter"
PBE = "pbe"


@dataclass(frozen=True)
class Solid:
    """One row of Sol58LC.

    Attributes:
        name: identifier, e.g. ``"Cu_fcc"``.
        formula: chemical formula of the primitive cell, first element at the
            origin (e.g. ``"NaCl"``: Na at 0, Cl at (a/2, 0, 0)).
        prototype: one of :data:`PROTOTYPES`.
        a_exp: zero-point-corrected experimental conventional lattice constant, Å.
        a_pbe: PBE conventional lattice constant, Å.
    """

    name: str
    formula: str
    prototype: str
    a_exp: float
    a_pbe: float


def _csv_text() -> str:
    return resources.files("crossfunctional.data").joinpath(DATA_FILE).read_text(encoding="utf-8")


def sol58lc_reference() -> str:
    """The citation header of the shipped Sol58LC csv (its ``#`` lines, without ``#``)."""
    lines = [ln[1:].strip() for ln in _csv_text().splitlines() if ln.startswith("#")]
    return "\n".join(lines)


def load_sol58lc() -> list[Solid]:
    """The 58 solids of Sol58LC, in the order of the shipped csv.

    Returns:
        list of :class:`Solid` (lattice constants in Å).

    Raises:
        ValueError: the shipped file is malformed (unknown prototype, bad number).
    """
    rows = [ln for ln in _csv_text().splitlines() if ln.strip() and not ln.startswith("#")]
    solids = []
    for rec in csv.DictReader(rows):
        if rec["prototype"] not in PROTOTYPES:
            raise WorkflowError(f"{DATA_FILE}: unknown prototype {rec['prototype']!r} for {rec['name']}")
        solids.append(
            Solid(
                name=rec["name"],
                formula=rec["formula"],
                prototype=rec["prototype"],
                a_exp=float(rec["a_exp"]),
                a_pbe=float(rec["a_pbe"]),
            )
        )
    return solids


def build_solid(solid: Solid, a: float | None = None) -> Atoms:
    """Primitive cell of ``solid`` at conventional lattice constant ``a``.

    Built with :func:`ase.build.bulk` (periodic, first element at the origin):
    fcc and bcc have 1 atom, diamond, rocksalt, zincblende and cesium chloride 2.
    Primitive volumes: fcc, diamond, rocksalt, zincblende a³/4; bcc a³/2;
    cesium chloride a³ (its primitive cell is the cubic cell).

    Args:
        solid: a :class:`Solid`.
        a: conventional cubic lattice constant, Å (> 0); default ``solid.a_exp``.

    Returns:
        the primitive cell as :class:`ase.Atoms`.

    Raises:
        ValueError: unknown prototype or non-positive ``a``.
    """
    from ase.build import bulk

    if solid.prototype not in PROTOTYPES:
        raise WorkflowError(f"unknown prototype {solid.prototype!r} of {solid.name}: expected one of {', '.join(PROTOTYPES)}")
    a = solid.a_exp if a is None else float(a)
    if not a > 0:
        raise WorkflowError(f"lattice constant a must be positive (Å), got {a!r} for {solid.name}")
    structure, _, n_prim = PROTOTYPES[solid.prototype]
    atoms = bulk(solid.formula, structure, a=a)
    if len(atoms) != n_prim:
        raise WorkflowError(f"{solid.name}: ase.build.bulk gave {len(atoms)} atoms for {solid.prototype}, expected {n_prim}")
    return atoms


def conventional_lattice_constant(atoms: Atoms, prototype: str) -> float:
    """Conventional cubic lattice constant (Å) from a primitive cell's volume.

    a = (V_prim · n_conv / n_prim)^(1/3), with n_conv / n_prim atoms per
    conventional / primitive cell of ``prototype`` (see :data:`PROTOTYPES`).

    Raises:
        ValueError: unknown prototype, or ``atoms`` does not have the number of
            atoms of that prototype's primitive cell.
    """
    if prototype not in PROTOTYPES:
        raise WorkflowError(f"unknown prototype {prototype!r}: expected one of {', '.join(PROTOTYPES)}")
    _, n_conv, n_prim = PROTOTYPES[prototype]
    if len(atoms) != n_prim:
        raise WorkflowError(f"a {prototype} primitive cell has {n_prim} atom(s), got {len(atoms)}")
    return float((abs(atoms.get_volume()) * n_conv / n_prim) ** (1.0 / 3.0))


def density(atoms: Atoms) -> float:
    """Mass density in g/cm³ of a periodic cell: Σ masses (amu, ASE's) / volume (Å³).

    Raises:
        ValueError: the cell has no volume.
    """
    volume = abs(atoms.get_volume()) if atoms.cell.rank == 3 else 0.0
    if not volume > 0:
        raise WorkflowError("density needs a cell with a non-zero volume")
    return float(atoms.get_masses().sum() * _amu_in_grams() / (volume * 1e-24))


def relative_error_percent(value: float, reference: float) -> float:
    """100 · (value − reference) / reference."""
    return 100.0 * (value - reference) / reference


@dataclass
class ModelResult:
    """One model's relaxed lattice constant of one solid.

    Attributes:
        a: relaxed conventional lattice constant, Å.
        density: density of the relaxed solid, g/cm³.
        rel_error_percent: 100 · (a − a_exp) / a_exp.
        converged: whether the relaxation reached ``fmax``.
        steps: optimizer steps taken.
        fmax: final largest force (atoms and cell rows of the filter), eV/Å.
        energy_per_atom: energy of the relaxed cell per atom, eV.
    """

    a: float
    density: float
    rel_error_percent: float
    converged: bool
    steps: int
    fmax: float
    energy_per_atom: float


@dataclass
class SolidResult:
    """Results of all models for one solid: ``models[name]`` is a :class:`ModelResult`."""

    solid: Solid
    models: dict[str, ModelResult] = field(default_factory=dict)

    @property
    def pbe_rel_error_percent(self) -> float:
        """100 · (a_pbe − a_exp) / a_exp."""
        return relative_error_percent(self.solid.a_pbe, self.solid.a_exp)


def _stats(errors: Sequence[float]) -> dict[str, float]:
    e = np.asarray(errors, dtype=float)
    if e.size == 0:
        return {"mare_percent": float("nan"), "mre_percent": float("nan")}
    return {"mare_percent": float(np.abs(e).mean()), "mre_percent": float(e.mean())}


@dataclass
class DensityBenchmark:
    """Result of :func:`density_benchmark`.

    Attributes:
        models: model names in the order they were run.
        solids: one :class:`SolidResult` per solid.
        protocol: relaxation settings (optimizer, cell filter, fmax, steps, ...).
    """

    models: list[str]
    solids: list[SolidResult]
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        """``{model: {"mare_percent", "mre_percent", "n_solids", "n_converged"}, "pbe": {...}}``:
        mean absolute and mean relative error of the lattice constant against
        a_exp, in %, over all solids (unconverged ones included and counted)."""
        out: dict[str, dict[str, float]] = {}
        for model in self.models:
            rows = [s.models[model] for s in self.solids]
            out[model] = {
                **_stats([r.rel_error_percent for r in rows]),
                "n_solids": len(rows),
                "n_converged": sum(bool(r.converged) for r in rows),
            }
        out[PBE] = {**_stats([s.pbe_rel_error_percent for s in self.solids]), "n_solids": len(self.solids)}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"summary": {MODEL: {"mare_percent", "mre_percent", ...},
        "pbe": {...}}, "solids": [{"name", "formula", "prototype", "a_exp", "a_pbe",
        "density_exp", "pbe_rel_error_percent", "models": {MODEL: {"a", "density",
        "rel_error_percent", "converged", "steps", "fmax", "energy_per_atom"}}}],
        "models": [...], "protocol": {...}, "units": {...}, "reference": str}``
        (Å, g/cm³, %, eV/Å, eV)."""
        solids = []
        for s in self.solids:
            solids.append(
                {
                    "name": s.solid.name,
                    "formula": s.solid.formula,
                    "prototype": s.solid.prototype,
                    "a_exp": s.solid.a_exp,
                    "a_pbe": s.solid.a_pbe,
                    "density_exp": density(build_solid(s.solid)),
                    "pbe_rel_error_percent": s.pbe_rel_error_percent,
                    "models": {
                        m: {
                            "a": r.a,
                            "density": r.density,
                            "rel_error_percent": r.rel_error_percent,
                            "converged": bool(r.converged),
                            "steps": int(r.steps),
                            "fmax": r.fmax,
                            "energy_per_atom": r.energy_per_atom,
                        }
                        for m, r in s.models.items()
                    },
                }
            )
        return {
            "summary": self.summary,
            "solids": solids,
            "models": list(self.models),
            "protocol": dict(self.protocol),
            "units": {
                "a": "angstrom (conventional cubic cell)",
                "density": "g/cm^3",
                "rel_error_percent": "100 (a - a_exp) / a_exp",
                "fmax": "eV/angstrom",
                "energy_per_atom": "eV/atom",
            },
            "reference": sol58lc_reference(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DensityBenchmark:
        """Rebuild a benchmark from :meth:`to_dict` output (e.g. a written JSON).

        Raises:
            ValueError: a required key is missing.
        """
        try:
            models = list(data["models"])
            solids = []
            for rec in data["solids"]:
                solid = Solid(rec["name"], rec["formula"], rec["prototype"], float(rec["a_exp"]), float(rec["a_pbe"]))
                results = {m: ModelResult(**r) for m, r in rec["models"].items()}
                solids.append(SolidResult(solid, results))
        except (KeyError, TypeError) as exc:
            raise WorkflowError(f"not a density benchmark dict: {exc}") from None
        return cls(models=models, solids=solids, protocol=dict(data.get("protocol", {})))

    @classmethod
    def read(cls, path: str | os.PathLike) -> DensityBenchmark:
        """Read a ``density_benchmark.json`` written by :meth:`write`.

        Raises:
            FileNotFoundError: no such file. ValueError: not a benchmark JSON.
        """
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def table(self) -> str:
        """Plain-text table: per solid a_exp, PBE error, and each model's a (Å)
        and relative error (%) (``*`` marks an unconverged relaxation); MARE
        and MRE rows at the end."""
        name_w = max([len("solid"), *(len(s.solid.name) for s in self.solids)])
        head = [f"{'solid':<{name_w}}", f"{'a_exp':>7}", f"{'pbe %':>7}"]
        for m in self.models:
            head += [f"{m + ' a':>{max(9, len(m) + 2)}}", f"{'%':>7}"]
        lines = ["  ".join(head)]
        lines.append("-" * len(lines[0]))
        for s in self.solids:
            cells = [f"{s.solid.name:<{name_w}}", f"{s.solid.a_exp:7.3f}", f"{s.pbe_rel_error_percent:7.2f}"]
            for m in self.models:
                r = s.models[m]
                mark = " " if r.converged else "*"
                cells += [f"{r.a:>{max(9, len(m) + 2) - 1}.4f}{mark}", f"{r.rel_error_percent:7.2f}"]
            lines.append("  ".join(cells))
        lines.append("-" * len(lines[0]))
        summary = self.summary
        for key, label in (("mare_percent", "MARE %"), ("mre_percent", "MRE %")):
            cells = [f"{label:<{name_w}}", f"{'':>7}", f"{summary[PBE][key]:7.3f}"]
            for m in self.models:
                cells += [f"{'':>{max(9, len(m) + 2)}}", f"{summary[m][key]:7.3f}"]
            lines.append("  ".join(cells))
        unconverged = sum(not s.models[m].converged for s in self.solids for m in self.models)
        if unconverged:
            lines.append(f"* not converged to fmax within the step limit ({unconverged} relaxation(s))")
        return "\n".join(lines)

    def to_csv(self) -> str:
        """CSV text: one row per solid with name, formula, prototype, a_exp,
        a_pbe (Å), density_exp (g/cm³), pbe_rel_error_percent and, per model,
        ``<model>_a``, ``<model>_density``, ``<model>_rel_error_percent``,
        ``<model>_converged``, ``<model>_steps``."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        header = ["name", "formula", "prototype", "a_exp", "a_pbe", "density_exp", "pbe_rel_error_percent"]
        for m in self.models:
            header += [f"{m}_a", f"{m}_density", f"{m}_rel_error_percent", f"{m}_converged", f"{m}_steps"]
        writer.writerow(header)
        for s in self.solids:
            row = [
                s.solid.name,
                s.solid.formula,
                s.solid.prototype,
                f"{s.solid.a_exp:.4f}",
                f"{s.solid.a_pbe:.4f}",
                f"{density(build_solid(s.solid)):.5f}",
                f"{s.pbe_rel_error_percent:.4f}",
            ]
            for m in self.models:
                r = s.models[m]
                row += [f"{r.a:.5f}", f"{r.density:.5f}", f"{r.rel_error_percent:.4f}", str(bool(r.converged)), r.steps]
            writer.writerow(row)
        return buf.getvalue()

    def plot(self, path: str | os.PathLike) -> Path:
        """Error plot (PNG): relative error of the lattice constant against
        experiment, 100 · (a − a_exp) / a_exp in %, for every solid, with the
        solids grouped by structure type (:data:`PROTOTYPES`, in order of first
        appearance; the order of :attr:`solids` within a group). One marker set per model and
        PBE for reference, a zero line, MARE and MRE in the legend; an
        unconverged relaxation is drawn as an open marker.

        Args:
            path: the PNG to write (atomically).

        Returns:
            ``path`` as a :class:`~pathlib.Path`.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        labels = {"rocksalt": "rock\nsalt", "cesium_chloride": "CsCl", "zincblende": "zinc\nblende"}
        groups: dict[str, list[SolidResult]] = {}
        for s in self.solids:
            groups.setdefault(s.solid.prototype, []).append(s)
        ordered = [s for members in groups.values() for s in members]
        x = np.arange(len(ordered), dtype=float)
        wide = len(ordered) > 20  # legend above the axes; else beside them, in one column
        width = 0.19 * len(ordered) + 1.6 if wide else 0.55 * len(ordered) + 5.0
        fig = Figure(figsize=(max(6.0, width), 5.0), dpi=150, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()

        start = 0
        for k, (prototype, members) in enumerate(groups.items()):
            stop = start + len(members)
            if k % 2:
                ax.axvspan(start - 0.5, stop - 0.5, color="0.93", zorder=0, lw=0)
            text = labels.get(prototype, prototype)
            ax.text((start + stop - 1) / 2, 1.01, text.replace("\n", " ") if wide else text,
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)  # fmt: skip
            start = stop
        ax.axhline(0.0, color="k", lw=0.8, zorder=1)

        summary = self.summary
        pbe = np.array([s.pbe_rel_error_percent for s in ordered])
        label = f"PBE (MARE {summary[PBE]['mare_percent']:.2f} %, MRE {summary[PBE]['mre_percent']:+.2f} %)"
        ax.scatter(x, pbe, marker="x", s=20, color="0.45", zorder=2, label=label)
        markers = ["o", "s", "^", "D", "v", "P"]
        n = len(self.models)
        for i, m in enumerate(self.models):
            colour = f"C{i}"
            offset = 0.0 if n == 1 else 0.3 * (i / (n - 1) - 0.5)
            err = np.array([s.models[m].rel_error_percent for s in ordered])
            conv = np.array([bool(s.models[m].converged) for s in ordered])
            label = f"{m} (MARE {summary[m]['mare_percent']:.2f} %, MRE {summary[m]['mre_percent']:+.2f} %)"
            ax.scatter(x[conv] + offset, err[conv], marker=markers[i % len(markers)], s=22, color=colour,
                       alpha=0.85, zorder=3, label=label)  # fmt: skip
            if not conv.all():
                ax.scatter(x[~conv] + offset, err[~conv], marker=markers[i % len(markers)], s=22, zorder=3,
                           facecolors="none", edgecolors=colour, label=f"{m}, not converged")  # fmt: skip

        ax.set_xticks(x)
        ax.set_xticklabels([s.solid.formula for s in ordered], rotation=90, fontsize=7)
        ax.set_xlim(-0.7, len(ordered) - 0.3)
        ax.set_ylabel("lattice constant error vs experiment (%)")
        ax.grid(axis="y", color="0.85", lw=0.5)
        ax.set_axisbelow(True)
        if wide:
            ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=3, fontsize=8, frameon=False)
        else:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
        title = f"Sol58LC lattice constants against experiment ({len(ordered)} solids; above 0: too large)"
        fig.suptitle(title, fontsize=10)
        target = Path(path)
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png")
        return target

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``density_benchmark.json`` (:meth:`to_dict`), ``density_benchmark.csv``
        (:meth:`to_csv`) and ``density_errors.png`` (:meth:`plot`) into
        ``output_dir`` (created if needed), each atomically.

        Returns:
            ``{"json": path, "csv": path, "png": path}``.
        """
        from crossfunctional.io import write_result_files

        return write_result_files(self, output_dir, "density_benchmark", "density_errors.png")


def _select_solids(solids: Iterable[Solid | str] | None) -> list[Solid]:
    table = load_sol58lc()
    if solids is None:
        return table
    by_name = {s.name: s for s in table}
    chosen = []
    for s in solids:
        if isinstance(s, Solid):
            chosen.append(s)
        elif isinstance(s, str) and s in by_name:
            chosen.append(by_name[s])
        else:
            raise WorkflowError(f"unknown solid {s!r}: expected a Solid or a Sol58LC name such as 'Cu_fcc', 'NaCl_b1'")
    if not chosen:
        raise WorkflowError("solids is empty: nothing to benchmark")
    return chosen


def density_benchmark(
    models: Sequence[str] | dict[str, Any] = ("chgnet-r2scan", "chgnet-0.3.0"),
    fmax: float = 0.01,
    steps: int = 1000,
    device: str = "cpu",
    dtype: str = "float32",
    solids: Iterable[Solid | str] | None = None,
    progress: bool = True,
    dispersion: str | None = None,
    dispersion_functional: str | None = None,
    partial: str | os.PathLike | None = None,
) -> DensityBenchmark:
    """Relax the Sol58LC solids with each model and compare lattice constants with experiment.

    Each solid starts as its primitive cell (:func:`build_solid`) at a_exp and
    is relaxed with FIRE + ``FrechetCellFilter`` (as ``chgnet.model.StructOptimizer``)
    to a largest force ``fmax`` in at most ``steps`` steps; the conventional
    lattice constant comes from the relaxed volume
    (:func:`conventional_lattice_constant`).

    Args:
        models: model names or paths (see :func:`crossfunctional.models.load_model`),
            each run in turn, or {label: model name, ASE calculator, or a
            class / factory that makes one} to benchmark any ASE calculator;
            labels must be distinct and not ``"pbe"``.
        fmax: force threshold, eV/Å.
        steps: maximum optimizer steps per relaxation.
        device: torch device (``"cpu"``, ``"cuda"``).
        dtype: ``"float32"`` (default, the weights' precision) or ``"float64"``.
        solids: subset of Sol58LC as :class:`Solid` objects or names
            (e.g. ``["Cu_fcc", "Si_diamond"]``); None for all 58.
        progress: show a tqdm progress bar (on standard error).
        dispersion, dispersion_functional: a dispersion correction added to
            every model (as for :class:`~crossfunctional.calculators.CrossFunctionalCalculator`);
            the results are then labelled ``<model>+<dispersion>``.
        partial: a JSON file where every relaxed solid is saved as it comes;
            a run interrupted before the end, restarted with the same settings
            and file, takes the saved solids from it (the command line keeps
            it in the output folder).

    Returns:
        :class:`DensityBenchmark` (``.summary``, ``.solids``, ``.to_dict()``,
        ``.table()``, ``.write(output_dir)``).

    Raises:
        ValueError: no or duplicate models, a model named ``"pbe"``, unknown
            solid name, empty selection.
        crossfunctional.models.ModelError: unknown model or unreadable file.
    """
    from tqdm.auto import tqdm

    from crossfunctional.calculators import CrossFunctionalCalculator

    if isinstance(models, str):
        models = (models,)
    if not isinstance(models, dict) and len({str(m) for m in models}) != len(list(models)):
        raise WorkflowError(f"models must be distinct, got {[str(m) for m in models]}")
    given = dict(models) if isinstance(models, dict) else {str(m): str(m) for m in models}
    models = list(given)
    if not models:
        raise WorkflowError("models is empty: give at least one model name")
    if len(set(models)) != len(models):
        raise WorkflowError(f"models must be distinct, got {models}")
    if PBE in models:
        raise WorkflowError(f"{PBE!r} is reserved for the PBE reference column; it cannot be a model name")
    chosen = _select_solids(solids)
    results = [SolidResult(s) for s in chosen]
    from crossfunctional.io import PartialResults

    saved = PartialResults(partial, {"benchmark": "density", "models": [str(given[m]) if isinstance(given[m], (str, os.PathLike))
                                                                          else m for m in models],
                                     "solids": [s.name for s in chosen], "fmax": fmax, "steps": steps, "dtype": str(dtype),
                                     "dispersion": dispersion, "dispersion_functional": dispersion_functional})
    bar = tqdm(total=len(models) * len(chosen), disable=not progress, desc="Sol58LC", unit="relax")
    labels = []
    try:
        for name in models:
            spec = given[name]
            if isinstance(spec, (str, os.PathLike)):
                calc = CrossFunctionalCalculator(
                    model=spec, device=device, dtype=dtype, dispersion=dispersion, dispersion_functional=dispersion_functional
                )
            elif hasattr(spec, "get_potential_energy") and not inspect.isclass(spec):
                calc = spec  # an ASE calculator
            else:
                calc = spec()  # a calculator class or factory
            model = name if dispersion is None else f"{name}+{dispersion}"
            labels.append(model)
            for res in results:
                solid = res.solid
                bar.set_postfix_str(f"{model} {solid.name}")
                previous = saved.get(model, solid.name)
                if previous is not None:
                    res.models[model] = ModelResult(**previous)
                    bar.update(1)
                    continue
                atoms = build_solid(solid)
                atoms.calc = calc
                out = relax(atoms, fmax=fmax, steps=steps, optimizer=OPTIMIZER, cell_filter=CELL_FILTER)
                a = conventional_lattice_constant(out.atoms, solid.prototype)
                res.models[model] = ModelResult(
                    a=a,
                    density=density(out.atoms),
                    rel_error_percent=relative_error_percent(a, solid.a_exp),
                    converged=out.converged,
                    steps=out.steps,
                    fmax=out.fmax,
                    energy_per_atom=out.energy / len(out.atoms),
                )
                saved.put(model, solid.name, asdict(res.models[model]))
                bar.update(1)
    finally:
        bar.close()
    from crossfunctional import __version__

    protocol = {
        "optimizer": OPTIMIZER,
        "cell_filter": CELL_FILTER,
        "fmax_eV_per_A": float(fmax),
        "max_steps": int(steps),
        "start": "primitive cell at a_exp (ase.build.bulk)",
        "device": str(device),
        "dtype": str(dtype),
        "dispersion": dispersion,
        "crossfunctional_version": __version__,
    }
    return DensityBenchmark(models=labels, solids=results, protocol=protocol)
