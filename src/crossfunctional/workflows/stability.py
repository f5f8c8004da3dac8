"""The stability benchmark (Huang et al., npj Comput. Mater. 2025, Table 1):
formation and decomposition energies of binary compounds against MP r2SCAN,
MP2020-corrected GGA/GGA+U and experiment.

Protocol, for every model:

1. elemental references: each element's ground-state crystal from the MatPES
   r2SCAN element file, and the PBE file's where its structure differs, relaxed
   with the model; the lowest energy per atom is the model's reference μ_el;
2. every compound relaxed from its MP (PBE) structure with the same model:
   FIRE with the Fréchet cell filter, fmax 0.02 eV/Å, at most 500 steps
   (:func:`~crossfunctional.workflows.batch_relax.relax_many` for our models,
   one by one with :func:`~crossfunctional.workflows.relax` for any other ASE
   calculator);
3. formation energy per atom ΔH_f = E/N - Σ_el x_el μ_el;
4. decomposition energy: for each chemical system with two or more compounds
   in the set, pymatgen's ``PhaseDiagram`` of the elements and the set's
   compounds, once from the DFT formation energies and once from the model's;
   a compound's energy relative to the hull of the others
   (``get_phase_separation_energy``, negative when it is stable). This is a
   hull of the set's own compounds, not of all of the Materials Project;
5. a relaxation fails, as the paper counts it, when it does not converge or
   leaves an atom more than 6 Å from its nearest neighbour.

Energies are in eV/atom throughout.
"""

from __future__ import annotations

import csv
import gzip
import importlib
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossfunctional.errors import WorkflowError
from crossfunctional.io import atomic_write, check_writable, clean_temporaries, save_figure

__all__ = ["StabilityBenchmark", "load_stability_data", "parse_calculator_spec", "stability_benchmark"]

log = logging.getLogger(__name__)

DATA_FILE = "mp_binaries_r2scan_formation.json.gz"
#: the DFT column a model is compared with by default
REFERENCE_DFT = {"chgnet-r2scan": "hf_r2scan", "chgnet-0.3.0": "hf_gga_gga_u"}
DFT_COLUMNS = ("hf_r2scan", "hf_gga_gga_u")
MAX_NEIGHBOUR_DISTANCE = 6.0  # Å: an atom farther from all others is a failed relaxation


def load_stability_data(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The compound records (default: the shipped 348 MP binaries; see
    ``crossfunctional/data/README.md``): ``material_id``, ``formula``,
    ``structure`` (pymatgen dict), ``hf_r2scan``, ``hf_gga_gga_u``,
    ``hf_exp_nbs`` (eV/atom).

    Raises:
        WorkflowError: unreadable file or records without those keys.
    """
    from crossfunctional.data import data_path

    path = Path(path) if path is not None else data_path(DATA_FILE)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            records = json.load(fh)
    except (OSError, ValueError) as exc:
        raise WorkflowError(f"cannot read {path} as stability data: {exc}") from None
    need = ("material_id", "formula", "structure", "hf_r2scan", "hf_gga_gga_u", "hf_exp_nbs")
    for k, rec in enumerate(records if isinstance(records, list) else [None]):
        if not isinstance(rec, dict) or any(key not in rec for key in need):
            raise WorkflowError(f"{path}: record {k} lacks one of {', '.join(need)}")
    return records


def parse_calculator_spec(spec: str) -> tuple[str, Callable[[], Any]]:
    """``NAME=module:factory[:json kwargs]`` -> (NAME, a function that builds
    the ASE calculator), e.g. ``7net-mf=sevenn.calculator:SevenNetCalculator:{"model": "7net-mf-0", "modal": "R2SCAN"}``.

    Raises:
        WorkflowError: a spec that does not have that form or kwargs that are not a JSON object.
    """
    name, sep, rest = spec.partition("=")
    parts = rest.split(":", 2)
    if not sep or not name or len(parts) < 2 or not parts[0] or not parts[1]:
        raise WorkflowError(f"calculator spec {spec!r}: write NAME=module:factory[:json kwargs]")
    module, factory = parts[0], parts[1]
    kwargs: dict[str, Any] = {}
    if len(parts) == 3 and parts[2]:
        try:
            kwargs = json.loads(parts[2])
        except json.JSONDecodeError as exc:
            raise WorkflowError(f"calculator spec {spec!r}: kwargs are not JSON ({exc})") from None
        if not isinstance(kwargs, dict):
            raise WorkflowError(f"calculator spec {spec!r}: kwargs must be a JSON object")

    def build():
        try:
            return getattr(importlib.import_module(module), factory)(**kwargs)
        except (ImportError, AttributeError) as exc:
            raise WorkflowError(f"calculator {name}: cannot load {module}:{factory} ({exc})") from None

    return name, build


# --------------------------------------------------------------------------- references
def _element_structures() -> dict[str, list]:
    """{element: [pymatgen Structure, ...]}: the MatPES r2SCAN ground state and,
    where it differs, the PBE one."""
    from pymatgen.core import Structure

    from crossfunctional.data import data_path

    out: dict[str, list] = {}
    files = {}
    for level in ("r2scan", "pbe"):
        with gzip.open(data_path(f"matpes_{level}_element_refs.json.gz"), "rt") as fh:
            files[level] = json.load(fh)
    for el, rec in files["r2scan"].items():
        out[el] = [Structure.from_dict(rec["structure"])]
        pbe = files["pbe"].get(el)
        if pbe is not None and pbe.get("matpes_id") != rec.get("matpes_id"):
            out[el].append(Structure.from_dict(pbe["structure"]))
    return out


def _isolated(atoms) -> bool:
    """Whether an atom ends more than MAX_NEIGHBOUR_DISTANCE from all others (periodic images included)."""
    if len(atoms) == 1:
        return False
    from ase.neighborlist import neighbor_list

    i = neighbor_list("i", atoms, MAX_NEIGHBOUR_DISTANCE, self_interaction=False)
    return np.unique(i).size < len(atoms)


# --------------------------------------------------------------------------- metrics
def _metrics(pred: Sequence[float], ref: Sequence[float]) -> dict[str, float]:
    p, r = np.asarray(pred, float), np.asarray(ref, float)
    ok = np.isfinite(p) & np.isfinite(r)
    p, r = p[ok], r[ok]
    if p.size == 0:
        return {"n": 0, "mae": math.nan, "rmse": math.nan, "mse": math.nan, "r2": math.nan}
    err = p - r
    ss = float(((r - r.mean()) ** 2).sum())
    return {"n": int(p.size), "mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())),
            "mse": float(err.mean()), "r2": float(1 - (err**2).sum() / ss) if ss > 0 else math.nan}


def _classification(pred: Sequence[float], ref: Sequence[float]) -> dict[str, float]:
    """Stable (decomposition energy <= 0) vs unstable: precision, recall, F1 of 'stable'."""
    p, r = np.asarray(pred, float), np.asarray(ref, float)
    ok = np.isfinite(p) & np.isfinite(r)
    ps, rs = p[ok] <= 0, r[ok] <= 0
    tp, fp, fn = int((ps & rs).sum()), int((ps & ~rs).sum()), int((~ps & rs).sum())
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * precision * recall / (precision + recall) if tp else math.nan
    return {"n": int(ok.sum()), "precision": precision, "recall": recall, "f1": f1,
            "accuracy": float((ps == rs).mean()) if ok.any() else math.nan}


def _decomposition_energies(formulas: Sequence[str], hf: Sequence[float]) -> list[float]:
    """Energy above (positive) or below (negative) the hull of the other
    compounds of the same chemical system, eV/atom, from formation energies
    per atom; NaN for a compound alone in its system or without a value."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    out = [math.nan] * len(formulas)
    systems: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for k, formula in enumerate(formulas):
        systems[tuple(sorted(el.symbol for el in Composition(formula).elements))].append(k)
    for elements, members in systems.items():
        members = [k for k in members if np.isfinite(hf[k])]
        if len(members) < 2:
            continue
        entries = [PDEntry(Composition(el), 0.0) for el in elements]
        compounds = []
        for k in members:
            comp = Composition(formulas[k])
            entry = PDEntry(comp, float(hf[k]) * comp.num_atoms)
            compounds.append((k, entry))
        pd = PhaseDiagram(entries + [e for _, e in compounds])
        for k, entry in compounds:
            out[k] = float(pd.get_phase_separation_energy(entry))
    return out


# --------------------------------------------------------------------------- result
@dataclass
class StabilityBenchmark:
    """Result of :func:`stability_benchmark`.

    Attributes:
        compounds: one dict per compound: ``material_id``, ``formula``, the DFT
            and experimental formation energies, the DFT decomposition energies
            (``ed_r2scan``, ``ed_gga_gga_u``) and ``models``: {model:
            {"formation_energy", "decomposition_energy", "energy_per_atom",
            "converged", "failed", "steps"}} (eV/atom).
        references: {model: {element: μ_el, eV/atom}}.
        summary: {model: metrics} (see :meth:`as_dict`).
        settings: protocol and timings.
    """

    compounds: list[dict[str, Any]]
    references: dict[str, dict[str, float]]
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    dft: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "dft": self.dft, "settings": self.settings,
                "references": self.references, "compounds": self.compounds}

    def table(self) -> str:
        """The summary as a plain-text table (eV/atom)."""
        lines = [f"{'model':<22} {'ΔHf MAE vs DFT':>15} {'vs exp.':>9} {'Ed MAE':>8} {'F1 stable':>10} {'failed':>7}"]
        for name, s in self.summary.items():
            lines.append(f"{name:<22} {s['formation_mae_vs_dft_ev']:>15.4f} {s['formation_mae_vs_exp_ev']:>9.4f} "
                         f"{s['decomposition_mae_ev']:>8.4f} {s['stability_classification']['f1']:>10.3f} "
                         f"{s['failed_relaxations']:>7d}")
        for name, s in self.dft.items():
            lines.append(f"{name + ' (DFT)':<22} {'':>15} {s['formation_vs_exp']['mae']:>9.4f}")
        lines.append(f"decomposition energies: hull of the set's own compounds ({self.settings.get('n_hull_compounds', 0)} "
                     f"compounds in {self.settings.get('n_hull_systems', 0)} chemical systems), not of all of MP")
        return "\n".join(lines)

    def write(self, directory: str | os.PathLike) -> dict[str, Path]:
        """``stability_benchmark.json``, ``stability_benchmark.csv`` and the
        parity plots ``stability_vs_dft.png``, ``stability_vs_experiment.png``."""
        directory = Path(directory)
        check_writable(directory, directory=True)
        directory.mkdir(parents=True, exist_ok=True)
        clean_temporaries(directory)  # left by a killed earlier write
        paths = {"json": directory / "stability_benchmark.json", "csv": directory / "stability_benchmark.csv"}
        with atomic_write(paths["json"]) as fh:
            json.dump(_finite(self.as_dict()), fh, indent=1)
        models = list(self.references)
        with atomic_write(paths["csv"], newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["material_id", "formula", "hf_r2scan", "hf_gga_gga_u", "hf_exp_nbs", "ed_r2scan", "ed_gga_gga_u"]
                       + [f"{m}:{q}" for m in models for q in ("formation_energy", "decomposition_energy", "converged", "failed")])
            for c in self.compounds:
                w.writerow([c["material_id"], c["formula"], c["hf_r2scan"], c["hf_gga_gga_u"], c["hf_exp_nbs"],
                            c["ed_r2scan"], c["ed_gga_gga_u"]]
                           + [c["models"][m][q] for m in models for q in ("formation_energy", "decomposition_energy", "converged", "failed")])
        paths["plot_dft"] = self.plot(directory / "stability_vs_dft.png", against="dft")
        paths["plot_exp"] = self.plot(directory / "stability_vs_experiment.png", against="exp")
        return paths

    def plot(self, path: str | os.PathLike, against: str = "dft") -> Path:
        """Parity plot of the models' formation energies against DFT (each
        model's reference column) or experiment (NBS)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 5))
        lo, hi = 0.0, 0.0
        for k, name in enumerate(self.references):
            column = self.settings["reference_dft"].get(name, "hf_r2scan") if against == "dft" else "hf_exp_nbs"
            x = np.array([c[column] for c in self.compounds], float)
            y = np.array([c["models"][name]["formation_energy"] for c in self.compounds], float)
            ok = np.isfinite(x) & np.isfinite(y)
            mae = float(np.abs(x[ok] - y[ok]).mean()) if ok.any() else math.nan
            ax.scatter(x[ok], y[ok], s=9, alpha=0.6, color=f"C{k}", label=f"{name} vs {column}: MAE {1000 * mae:.0f} meV/atom")
            if ok.any():
                lo, hi = min(lo, x[ok].min(), y[ok].min()), max(hi, x[ok].max(), y[ok].max())
        ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8)
        ax.set_xlabel(("DFT" if against == "dft" else "experimental (NBS)") + " formation energy (eV/atom)")
        ax.set_ylabel("model formation energy (eV/atom)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return save_figure(fig, path)


def _finite(obj: Any) -> Any:
    """NaN -> None for JSON."""
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- workflow
def _relax_all(structures: list, model: Any, fmax: float, steps: int, device: str, dtype: str, progress: bool,
               saved, group: str) -> list[dict[str, Any]]:
    """{"energy_per_atom", "converged", "steps", "failed"} of every structure,
    relaxed batched for our models and one by one with relax() for any other
    ASE calculator (or calculator factory); results already in ``saved``
    (:class:`~crossfunctional.io.PartialResults`, under ``group``) are taken
    from there, new ones are saved as they come."""
    import inspect

    from crossfunctional.calculators import CrossFunctionalCalculator
    from crossfunctional.io import as_atoms
    from crossfunctional.workflows.batch_relax import relax_many
    from crossfunctional.workflows.relax import relax

    out: list[dict[str, Any] | None] = [saved.get(group, str(k)) for k in range(len(structures))]
    todo = [k for k, r in enumerate(out) if r is None]

    def keep(k: int, res) -> None:
        out[k] = {"energy_per_atom": res.energy / len(res.atoms), "converged": bool(res.converged),
                  "steps": int(res.steps), "failed": (not res.converged) or _isolated(res.atoms)}
        saved.put(group, str(k), out[k])

    if not todo:
        return out  # type: ignore[return-value]
    batch = [structures[k] for k in todo]
    if isinstance(model, CrossFunctionalCalculator) or isinstance(model, str) or hasattr(model, "parameters"):
        kwargs = {"calculator": model} if isinstance(model, CrossFunctionalCalculator) else {"model": model, "device": device, "dtype": dtype}
        relax_many(batch, fmax=fmax, steps=steps, progress=progress, on_result=lambda j, res: keep(todo[j], res), **kwargs)
        return out  # type: ignore[return-value]
    is_instance = hasattr(model, "get_potential_energy") and not inspect.isclass(model)
    calc = model if is_instance else model()  # an ASE calculator, or a class / factory that makes one
    for k, s in zip(todo, batch):
        atoms = as_atoms(s).copy()
        atoms.calc = calc
        keep(k, relax(atoms, fmax=fmax, steps=steps))
    return out  # type: ignore[return-value]


def stability_benchmark(
    models: Sequence[Any] | dict[str, Any] = ("chgnet-r2scan", "chgnet-0.3.0"),
    data: str | os.PathLike | None = None,
    limit: int | None = None,
    fmax: float = 0.02,
    steps: int = 500,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = False,
    partial: str | os.PathLike | None = None,
) -> StabilityBenchmark:
    """Formation and decomposition energies of the compounds of ``data`` with
    every model, against DFT and experiment (protocol in the module docstring).

    Args:
        models: model names or files, or {label: name, file, calculator
            or calculator factory} for any ASE calculator.
        data: compound records in the shipped layout (default: the 348 MP binaries).
        limit: only the first ``limit`` compounds (a quick look).
        fmax, steps: relaxation protocol (eV/Å; FIRE steps).
        device, dtype: for our models.
        progress: tqdm bars.
        partial: a JSON file where every relaxed structure is saved as it
            comes; a run interrupted before the end, restarted with the same
            settings and file, takes the saved structures from it (the command
            line keeps it in the output folder).

    Returns:
        :class:`StabilityBenchmark`.

    Raises:
        crossfunctional.errors.WorkflowError: unreadable data, no models, a
            compound with an element that has no reference structure.
    """
    from pymatgen.core import Composition, Structure

    records = load_stability_data(data)
    if limit is not None:
        records = records[: int(limit)]
    named = dict(models) if isinstance(models, dict) else {str(m): m for m in models}
    if not named:
        raise WorkflowError("no models to benchmark")
    element_structures = _element_structures()
    elements = sorted({el.symbol for r in records for el in Composition(r["formula"]).elements})
    missing = [el for el in elements if el not in element_structures]
    if missing:
        raise WorkflowError(f"no elemental reference structure for {', '.join(missing)}")
    ref_list = [(el, s) for el in elements for s in element_structures[el]]
    structures = [Structure.from_dict(r["structure"]) for r in records]

    compounds = [
        {"material_id": r["material_id"], "formula": r["formula"], "hf_r2scan": r["hf_r2scan"],
         "hf_gga_gga_u": r["hf_gga_gga_u"], "hf_exp_nbs": r["hf_exp_nbs"], "models": {}}
        for r in records
    ]
    formulas = [r["formula"] for r in records]
    for column, key in (("hf_r2scan", "ed_r2scan"), ("hf_gga_gga_u", "ed_gga_gga_u")):
        for c, e in zip(compounds, _decomposition_energies(formulas, [r[column] for r in records])):
            c[key] = e
    from crossfunctional.io import PartialResults

    saved = PartialResults(partial, {
        "benchmark": "stability", "models": [m if isinstance(m, (str, os.PathLike)) else n for n, m in named.items()],
        "compounds": [r["material_id"] for r in records], "fmax": fmax, "steps": steps, "dtype": dtype,
    })
    references: dict[str, dict[str, float]] = {}
    timings = {}
    for name, model in named.items():
        t0 = time.perf_counter()
        log.info("%s: relaxing %d elemental references and %d compounds", name, len(ref_list), len(structures))
        ref_results = _relax_all([s for _, s in ref_list], model, fmax, steps, device, dtype, progress, saved, f"{name}:refs")
        mu: dict[str, float] = {}
        for (el, _), res in zip(ref_list, ref_results):
            mu[el] = min(mu.get(el, math.inf), res["energy_per_atom"])
        references[name] = mu
        results = _relax_all(structures, model, fmax, steps, device, dtype, progress, saved, f"{name}:compounds")
        hf = []
        for c, res in zip(compounds, results):
            comp = Composition(c["formula"]).fractional_composition
            formation = res["energy_per_atom"] - sum(x * mu[el.symbol] for el, x in comp.items())
            c["models"][name] = {"formation_energy": float(formation), **res}
            hf.append(formation)
        for c, e in zip(compounds, _decomposition_energies(formulas, hf)):
            c["models"][name]["decomposition_energy"] = e
        timings[name] = time.perf_counter() - t0

    exp = [c["hf_exp_nbs"] for c in compounds]
    dft = {col: {"formation_vs_exp": _metrics([c[col] for c in compounds], exp)} for col in DFT_COLUMNS}
    summary = {}
    for name in named:
        hf = [c["models"][name]["formation_energy"] for c in compounds]
        ed = [c["models"][name]["decomposition_energy"] for c in compounds]
        columns = [REFERENCE_DFT[name]] if name in REFERENCE_DFT else list(DFT_COLUMNS)
        vs_dft = {col: _metrics(hf, [c[col] for c in compounds]) for col in DFT_COLUMNS}
        ed_col = "ed_" + columns[0].removeprefix("hf_")
        ed_ref = [c[ed_col] for c in compounds]
        summary[name] = {
            "reference_dft": columns[0],
            "formation_mae_vs_dft_ev": vs_dft[columns[0]]["mae"],
            "formation_mae_vs_exp_ev": _metrics(hf, exp)["mae"],
            "decomposition_mae_ev": _metrics(ed, ed_ref)["mae"],
            "failed_relaxations": int(sum(c["models"][name]["failed"] for c in compounds)),
            "formation_vs_dft": vs_dft,
            "formation_vs_exp": _metrics(hf, exp),
            "decomposition_vs_dft": _metrics(ed, ed_ref),
            "stability_classification": _classification(ed, ed_ref),
            "wall_time_s": timings[name],
        }
    hull = [c for c in compounds if np.isfinite(c["ed_r2scan"])]
    settings = {
        "fmax_eV_per_A": fmax, "steps": steps, "optimizer": "FIRE + FrechetCellFilter", "dtype": dtype,
        "n_compounds": len(compounds), "reference_dft": {n: s["reference_dft"] for n, s in summary.items()},
        "n_hull_compounds": len(hull),
        "n_hull_systems": len({tuple(sorted(el.symbol for el in Composition(c["formula"]).elements)) for c in hull}),
        "elemental_references": "MatPES r2SCAN ground states (and the PBE ones where the structure differs), relaxed with each model",
        "units": "eV/atom",
    }
    return StabilityBenchmark(compounds=compounds, references=references, summary=summary, dft=dft, settings=settings)
