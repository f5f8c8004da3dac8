"""Layered solids: lattice constants and interlayer distances against experiment,
with and without a dispersion correction.

The shipped ``layered_solids_expt.csv`` lists graphite, hexagonal BN, 2H-MoS2
and black phosphorus with their experimental lattice parameters and a
citation for each value. :func:`build_layered_solid` builds each from its
prototype (space group and Wyckoff sites, :data:`PROTOTYPES`) with pymatgen at
the experimental lattice; :func:`layered_benchmark` relaxes it (cell and ions,
FIRE + ``FrechetCellFilter`` + ``FixSymmetry``) with each model and each
dispersion setting and compares the in-plane lattice constant(s) and the
interlayer distance (stacking-axis length / layers per cell) with experiment.

Interlayer binding in these solids is mostly dispersion, which neither
shipped model's training functional describes (r2SCAN captures some
intermediate-range attraction, PBE almost none). Without a correction the
layers may drift apart: the relaxation then ends with a large interlayer
distance or at the step limit; both are reported as they are. With a
correction added to a model trained on r2SCAN data, double counting of the
intermediate-range part is possible.

The experimental values are room-temperature lattice parameters (not
zero-point or thermally corrected); thermal expansion along the stacking axis
of these solids is of the order of 0.5 % from 0 to 300 K.

Units: Å, % (relative errors 100 (x - x_exp) / x_exp).
"""

from __future__ import annotations

import csv
import io
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
from crossfunctional.workflows.eos import relax_crystal

__all__ = ["PROTOTYPES", "LayeredBenchmark", "LayeredSolid", "build_layered_solid", "layered_benchmark", "load_layered_solids"]

log = logging.getLogger(__name__)

DATA_FILE = "layered_solids_expt.csv"

#: prototype -> (space group number, species, Wyckoff-site fractional coordinates). Internal
#: coordinates are the experimental ones of the cited structure determinations (starting points;
#: they relax): 2H-MoS2 z(S) = 0.621 (Bronsema et al. 1986), black phosphorus (Cmce, 8f)
#: y = 0.10168, z = 0.08056 (Brown and Rundqvist 1965).
PROTOTYPES: dict[str, tuple[int, list[str], list[list[float]]]] = {
    "graphite_2H": (194, ["C", "C"], [[0, 0, 0.25], [1 / 3, 2 / 3, 0.25]]),
    "hBN_2H": (194, ["B", "N"], [[1 / 3, 2 / 3, 0.25], [1 / 3, 2 / 3, 0.75]]),
    "MoS2_2H": (194, ["Mo", "S"], [[1 / 3, 2 / 3, 0.25], [1 / 3, 2 / 3, 0.621]]),
    "black_phosphorus": (64, ["P"], [[0, 0.10168, 0.08056]]),
}
_AXES = {"a": 0, "b": 1, "c": 2}


@dataclass(frozen=True)
class LayeredSolid:
    """One row of the layered-solids table.

    Attributes:
        name: e.g. ``"graphite"``.
        formula: chemical formula of the formula unit.
        prototype: key of :data:`PROTOTYPES`.
        a, b, c: experimental lattice parameters, Å (``b`` equals ``a`` for hexagonal cells).
        stacking_axis: ``"a"``, ``"b"`` or ``"c"``, the axis normal to the layers.
        layers_per_cell: layers along the stacking axis in the cell.
        citations: ``{"a": ..., "b": ..., "c": ...}``, the source of each value.
    """

    name: str
    formula: str
    prototype: str
    a: float
    b: float
    c: float
    stacking_axis: str
    layers_per_cell: int
    citations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def hexagonal(self) -> bool:
        return PROTOTYPES[self.prototype][0] in range(168, 195)

    @property
    def inplane_axes(self) -> tuple[str, ...]:
        """The independent in-plane lattice parameters: ``("a",)`` for hexagonal
        cells, the two axes other than the stacking axis otherwise."""
        if self.hexagonal:
            return ("a",)
        return tuple(ax for ax in "abc" if ax != self.stacking_axis)

    @property
    def interlayer_distance(self) -> float:
        """Experimental interlayer distance, Å."""
        return {"a": self.a, "b": self.b, "c": self.c}[self.stacking_axis] / self.layers_per_cell


def load_layered_solids() -> list[LayeredSolid]:
    """The shipped layered solids, in the order of the csv.

    Raises:
        ValueError: the shipped file is malformed (unknown prototype or axis).
    """
    with open(data_path(DATA_FILE), encoding="utf-8", newline="") as handle:
        rows = [ln for ln in handle if ln.strip() and not ln.startswith("#")]
    solids = []
    for r in csv.DictReader(rows):
        if r["prototype"] not in PROTOTYPES or r["stacking_axis"] not in _AXES:
            raise ValueError(f"{DATA_FILE}: bad prototype or stacking axis in row {r['name']}")
        a = float(r["a_exp_A"])
        solids.append(
            LayeredSolid(
                name=r["name"],
                formula=r["formula"],
                prototype=r["prototype"],
                a=a,
                b=float(r["b_exp_A"]) if r["b_exp_A"] else a,
                c=float(r["c_exp_A"]),
                stacking_axis=r["stacking_axis"],
                layers_per_cell=int(r["layers_per_cell"]),
                citations={k: r[f"{k}_citation"] for k in "abc" if r[f"{k}_citation"]},
            )
        )
    return solids


def build_layered_solid(solid: LayeredSolid) -> Atoms:
    """The conventional cell of ``solid`` at its experimental lattice, from its
    prototype (pymatgen ``Structure.from_spacegroup``): graphite and h-BN 4
    atoms, 2H-MoS2 6, black phosphorus 8 (a, b, c along x, y, z for the
    orthorhombic cell; c along z for the hexagonal ones)."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    number, species, coords = PROTOTYPES[solid.prototype]
    if solid.hexagonal:
        lattice = Lattice.hexagonal(solid.a, solid.c)
    else:
        lattice = Lattice.orthorhombic(solid.a, solid.b, solid.c)
    structure = Structure.from_spacegroup(number, lattice, species, coords)
    return AseAtomsAdaptor.get_atoms(structure)


def lattice_parameters(atoms: Atoms) -> tuple[float, float, float]:
    """Lengths of the three cell vectors, Å."""
    return tuple(float(x) for x in atoms.cell.lengths())


@dataclass
class LayeredBenchmark:
    """Result of :func:`layered_benchmark`.

    Attributes:
        labels: ``model`` or ``model+dispersion`` labels, in run order.
        solids: the solids.
        results: ``results[solid name][label]`` = dict with ``a``, ``b``, ``c``
            (Å), ``interlayer`` (Å), their relative errors in % (``a_error``,
            ``b_error``, ``c_error``, ``interlayer_error``), ``converged``,
            ``steps``, ``energy_per_atom`` (eV).
        protocol: relaxation settings.
    """

    labels: list[str]
    solids: list[LayeredSolid]
    results: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        """Per label: mean absolute relative error (%) of the in-plane lattice
        constants (:attr:`LayeredSolid.inplane_axes`) and of the interlayer
        distance over all solids, and the number of converged relaxations."""
        out = {}
        for lab in self.labels:
            rows = [self.results[s.name][lab] for s in self.solids]
            inplane = [abs(r[f"{ax}_error"]) for r, s in zip(rows, self.solids) for ax in s.inplane_axes]
            out[lab] = {
                "inplane_mare_percent": float(np.mean(inplane)),
                "interlayer_mare_percent": float(np.mean([abs(r["interlayer_error"]) for r in rows])),
                "interlayer_mre_percent": float(np.mean([r["interlayer_error"] for r in rows])),
                "n_converged": int(sum(bool(r["converged"]) for r in rows)),
                "n_solids": len(rows),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: summary, solids (experiment with citations, and per
        label the relaxed values), labels, protocol, units."""
        return {
            "summary": self.summary,
            "solids": [
                {
                    "name": s.name,
                    "formula": s.formula,
                    "prototype": s.prototype,
                    "a_exp": s.a,
                    "b_exp": s.b,
                    "c_exp": s.c,
                    "stacking_axis": s.stacking_axis,
                    "interlayer_exp": s.interlayer_distance,
                    "citations": dict(s.citations),
                    "models": self.results[s.name],
                }
                for s in self.solids
            ],
            "labels": list(self.labels),
            "protocol": dict(self.protocol),
            "units": {"lengths": "angstrom", "errors": "percent, 100 (x - x_exp) / x_exp", "energy_per_atom": "eV/atom"},
        }

    def table(self) -> str:
        """Plain text: per solid and label a (and b), interlayer distance and their errors (%)."""
        lab_w = max(len("label"), *(len(lab) for lab in self.labels))
        lines = [f"{'solid':<9} {'label':<{lab_w}} {'a (Å)':>8} {'%':>6} {'d_layer (Å)':>11} {'%':>7}  conv"]
        lines.append("-" * len(lines[0]))
        for s in self.solids:
            lines.append(f"{s.name:<9} {'experiment':<{lab_w}} {s.a:8.4f} {'':>6} {s.interlayer_distance:11.4f} {'':>7}")
            for lab in self.labels:
                r = self.results[s.name][lab]
                lines.append(
                    f"{'':<9} {lab:<{lab_w}} {r['a']:8.4f} {r['a_error']:6.2f} {r['interlayer']:11.4f} "
                    f"{r['interlayer_error']:7.2f}  {'yes' if r['converged'] else 'NO'}"
                )
        lines.append("-" * len(lines[0]))
        for lab, row in self.summary.items():
            lines.append(
                f"{lab}: in-plane MARE {row['inplane_mare_percent']:.2f} %, interlayer MARE "
                f"{row['interlayer_mare_percent']:.2f} % (MRE {row['interlayer_mre_percent']:+.2f} %), "
                f"{row['n_converged']}/{row['n_solids']} converged"
            )
        return "\n".join(lines)

    def to_csv(self) -> str:
        """CSV: one row per solid and label with a, b, c, interlayer (Å), errors (%), converged."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["name", "label", "a", "b", "c", "interlayer", "a_error", "b_error", "c_error",
                         "interlayer_error", "converged", "steps"])  # fmt: skip
        for s in self.solids:
            writer.writerow([s.name, "experiment", s.a, s.b, s.c, f"{s.interlayer_distance:.4f}", "", "", "", "", "", ""])
            for lab in self.labels:
                r = self.results[s.name][lab]
                writer.writerow([s.name, lab] + [f"{r[k]:.5f}" for k in ("a", "b", "c", "interlayer")]
                                + [f"{r[k]:.3f}" for k in ("a_error", "b_error", "c_error", "interlayer_error")]
                                + [bool(r["converged"]), r["steps"]])  # fmt: skip
        return buf.getvalue()

    def plot(self, path: str | os.PathLike) -> Path:
        """Grouped bars (PNG): relative error of the interlayer distance and of
        a, per solid and label."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8.0, 3.6), dpi=150)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2)
        x = np.arange(len(self.solids))
        width = 0.8 / max(1, len(self.labels))
        for ax, key, title in ((axes[0], "interlayer_error", "interlayer distance"), (axes[1], "a_error", "in-plane a")):
            for i, lab in enumerate(self.labels):
                vals = [self.results[s.name][lab][key] for s in self.solids]
                ax.bar(x - 0.4 + width * (i + 0.5), np.clip(vals, -30, 30), width, label=lab)
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xticks(x, [s.name for s in self.solids], fontsize=8)
            ax.set_ylabel("error vs experiment (%)")
            ax.set_title(title + " (bars clipped at ±30 %)", fontsize=9)
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        return save_figure(fig, path, dpi=150)

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``layered_benchmark.json``, ``layered_benchmark.csv`` and
        ``layered_errors.png`` into ``output_dir``, each atomically."""
        from crossfunctional.io import write_result_files

        return write_result_files(self, output_dir, "layered_benchmark", "layered_errors.png")


def _rel(x: float, ref: float) -> float:
    return 100.0 * (x - ref) / ref


def layered_benchmark(
    models: Sequence[str] = ("chgnet-r2scan", "chgnet-0.3.0"),
    dispersions: Sequence[str | None] = (None, "d3bj", "d4"),
    solids: Iterable[LayeredSolid | str] | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float64",
    fmax: float = 1e-3,
    steps: int = 2000,
    progress: bool = True,
) -> LayeredBenchmark:
    """Relax the layered solids with every model and dispersion setting.

    Args:
        models: model names or files.
        dispersions: dispersion settings (None: no correction; ``"d3bj"``,
            ``"d4"``, ... as for the calculator), each combined with every model.
        solids: subset (objects or names, e.g. ``["graphite"]``); None for all.
        device, dtype: as for the calculator (float64 by default: small cells,
            and the stress along the soft stacking axis is small).
        fmax: eV/Å, force threshold (atoms and the cell filter's rows).
        steps: maximum FIRE steps.
        progress: tqdm progress bar.

    Returns:
        :class:`LayeredBenchmark`.

    Raises:
        ValueError: no models or dispersion settings, an unknown solid.
        crossfunctional.models.ModelError, crossfunctional.calculators.dispersion.DispersionError.
    """
    from tqdm.auto import tqdm

    from crossfunctional import __version__
    from crossfunctional.calculators import CrossFunctionalCalculator

    models = [models] if isinstance(models, str) else list(models)
    dispersions = list(dispersions)
    if not models or not dispersions:
        raise ValueError("give at least one model and one dispersion setting (None for none)")
    table = {s.name: s for s in load_layered_solids()}
    chosen = list(table.values()) if solids is None else []
    for s in solids or []:
        if isinstance(s, LayeredSolid):
            chosen.append(s)
        elif s in table:
            chosen.append(table[s])
        else:
            raise ValueError(f"unknown layered solid {s!r}: expected one of {', '.join(table)}")
    labels, results = [], {s.name: {} for s in chosen}
    bar = tqdm(total=len(models) * len(dispersions) * len(chosen), disable=not progress, desc="layered", unit="relax")
    try:
        for model in models:
            for disp in dispersions:
                label = str(model) if disp is None else f"{model}+{disp}"
                labels.append(label)
                calc = CrossFunctionalCalculator(model=model, device=device, dtype=dtype, dispersion=disp)
                for s in chosen:
                    bar.set_postfix_str(f"{label} {s.name}")
                    res = relax_crystal(build_layered_solid(s), calc, fmax, steps, "FIRE", None, "FrechetCellFilter", True)
                    a, b, c = lattice_parameters(res.atoms)
                    stack = {"a": a, "b": b, "c": c}[s.stacking_axis] / s.layers_per_cell
                    results[s.name][label] = {
                        "a": a, "b": b, "c": c, "interlayer": stack,
                        "a_error": _rel(a, s.a), "b_error": _rel(b, s.b), "c_error": _rel(c, s.c),
                        "interlayer_error": _rel(stack, s.interlayer_distance),
                        "converged": bool(res.converged), "steps": int(res.steps),
                        "energy_per_atom": res.energy / len(res.atoms),
                    }  # fmt: skip
                    bar.update(1)
    finally:
        bar.close()
    protocol = {
        "start": "experimental lattice, prototype coordinates (pymatgen Structure.from_spacegroup)",
        "relaxation": "FIRE + FrechetCellFilter + FixSymmetry",
        "fmax_eV_per_A": float(fmax),
        "max_steps": int(steps),
        "device": str(device),
        "dtype": str(dtype),
        "crossfunctional_version": __version__,
    }
    return LayeredBenchmark(labels=labels, solids=chosen, results=results, protocol=protocol)
