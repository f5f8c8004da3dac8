"""AtomRef refit (Eq. 2), re-referencing (Eq. 3) and the correlation analysis (Fig. 2b)
of Huang et al., npj Comput. Mater. 2025.

CHGNet predicts the energy per atom as a composition part plus a graph part,
``E/N = c . E_elem + E_GNN/N``, where ``c`` [94] holds the element fractions
of the structure and ``E_elem`` [94] (eV/atom, element Z at index Z - 1) is
the AtomRef.

- **Eq. 2** fits ``E_elem = (A^T A)^-1 A^T E`` with ``A`` [n_structures, 94]
  the stacked composition fractions and ``E`` [n_structures] the energies per
  atom (eV/atom). Only elements present in the data are fitted (the others
  keep the source model's value); data whose composition matrix has lower
  rank than the number of elements it contains cannot separate some elements
  and is reported (:class:`RankDeficientError`), not silently solved.
- **Eq. 3** re-references a model: its AtomRef is replaced by the target one,
  nothing else changes, so every energy shifts by exactly
  ``sum_i (E_ref_target[Z_i] - E_ref_source[Z_i])`` and forces, stress and
  magmoms are unchanged.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossfunctional.io import atomic_write, save_figure
from crossfunctional.models.chgnet import MAX_Z
from crossfunctional.models.loading import ELEMENTS
from crossfunctional.transfer.data import LabelledStructure, TransferDataError

__all__ = [
    "DEFAULT_ALPHAS",
    "AtomRefFit",
    "CorrelationResult",
    "PriorAtomRefFit",
    "RankDeficientError",
    "composition_matrix",
    "correlate",
    "elemental_prior",
    "fit_atomref",
    "fit_atomref_with_prior",
    "get_atomref",
    "matpes_prior",
    "read_atomref",
    "rereference",
]

#: relative singular-value threshold below which a composition direction counts as undetermined
RANK_RTOL = 1e-8


class RankDeficientError(TransferDataError):
    """Composition data that cannot determine every present element's AtomRef."""


def composition_matrix(records: Sequence[LabelledStructure | Sequence[int]]) -> np.ndarray:
    """Element fractions ``A`` [n_structures, 94] (row sums 1; column Z - 1
    holds element Z), from records or from lists of atomic numbers."""
    A = np.zeros((len(records), MAX_Z))
    for k, rec in enumerate(records):
        z = rec.atomic_numbers if isinstance(rec, LabelledStructure) else np.asarray(rec, dtype=np.int64)
        if z.size == 0:
            raise TransferDataError(f"structure {k} has no atoms")
        if z.min() < 1 or z.max() > MAX_Z:
            raise TransferDataError(f"structure {k}: atomic numbers must be 1..{MAX_Z}, got {sorted(set(z.tolist()))}")
        A[k] = np.bincount(z - 1, minlength=MAX_Z) / z.size
    return A


def get_atomref(source: Any) -> np.ndarray:
    """AtomRef vector [94] (eV/atom, float64) of ``source``: a model name or
    file (chgnet checkpoint, TorchScript export), a loaded crossfunctional or
    upstream chgnet model, an :class:`AtomRefFit`, an ``atomref.json`` file, a
    {element: value} mapping, or a length-94 sequence.

    Raises:
        TransferDataError: a vector of the wrong length or with NaN, an
            unknown element name.
        crossfunctional.models.ModelError: a model that cannot be loaded.
    """
    if isinstance(source, AtomRefFit):
        return source.atomref.copy()
    if isinstance(source, torch.nn.Module):
        if hasattr(source, "composition_model"):  # upstream chgnet
            vec = source.composition_model.fc.weight.detach().reshape(-1)
        else:
            vec = source.atomref.detach()
        return vec.cpu().double().numpy().copy()
    if isinstance(source, dict):
        vec = np.full(MAX_Z, np.nan)
        for el, value in source.items():
            if el not in ELEMENTS:
                raise TransferDataError(f"unknown element {el!r} in AtomRef mapping")
            vec[ELEMENTS.index(el)] = float(value)
        return vec
    if isinstance(source, (str, os.PathLike)):
        if str(source).endswith(".json"):
            return read_atomref(source)
        from crossfunctional.models import load_model

        return get_atomref(load_model(source))
    vec = np.asarray(source, dtype=float).reshape(-1)
    if vec.shape != (MAX_Z,):
        raise TransferDataError(f"an AtomRef vector needs {MAX_Z} entries (Z = 1..{MAX_Z}), got {vec.shape}")
    return vec.copy()


class _WritesJson:
    """``write(path)``: :meth:`as_dict` as JSON, atomically."""

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_write(path) as fh:
            json.dump(self.as_dict(), fh, indent=1)
        return path


@dataclass
class AtomRefFit(_WritesJson):
    """Result of :func:`fit_atomref`.

    Attributes:
        atomref: [94] eV/atom, element Z at index Z - 1 (fitted elements from
            the data, the others from the source, or 0 without a source).
        fitted_elements: elements present in the data (fitted).
        kept_from_source: elements absent from the data whose value is the source's.
        absent_elements: all elements absent from the data.
        rank: rank of the composition matrix restricted to present elements.
        rank_deficient: rank < len(fitted_elements).
        undetermined_elements: elements whose AtomRef the data cannot pin
            down (their values lie along null-space directions, kept at the
            source's there).
        n_structures: number of structures fitted.
        residual_mae: mean |E/N - c . E_elem| over the data, eV/atom.
        source: description of the source AtomRef.
    """

    atomref: np.ndarray
    fitted_elements: list[str]
    kept_from_source: list[str]
    absent_elements: list[str]
    rank: int
    rank_deficient: bool
    undetermined_elements: list[str]
    n_structures: int
    residual_mae: float
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The ``atomref.json`` layout: ``{"atomref": {ELEMENT: eV_per_atom},
        "fitted_elements", "kept_from_source", ...}``."""
        return {
            "atomref": {el: float(v) for el, v in zip(ELEMENTS, self.atomref)},
            "fitted_elements": self.fitted_elements,
            "kept_from_source": self.kept_from_source,
            "absent_elements": self.absent_elements,
            "units": "eV/atom",
            "method": "least squares of energy per atom on composition fractions (Huang et al. 2025, Eq. 2)",
            "n_structures": self.n_structures,
            "rank": self.rank,
            "rank_deficient": self.rank_deficient,
            "undetermined_elements": self.undetermined_elements,
            "residual_mae_eV_per_atom": self.residual_mae,
            "source": self.source,
            "notes": self.notes,
        }


    def summary(self) -> str:
        lines = [
            f"AtomRef fitted on {self.n_structures} structures: {len(self.fitted_elements)} elements fitted "
            f"(rank {self.rank}), residual MAE {1000 * self.residual_mae:.1f} meV/atom",
        ]
        if self.kept_from_source:
            lines.append(f"  kept from the source ({self.source}): {len(self.kept_from_source)} elements absent from the data")
        if self.rank_deficient:
            lines.append(f"  RANK-DEFICIENT: not determined by the data: {', '.join(self.undetermined_elements)}")
        return "\n".join(lines)


def read_atomref(path: str | os.PathLike) -> np.ndarray:
    """Read ``{"atomref": {ELEMENT: eV_per_atom}}`` JSON (as written by
    :meth:`AtomRefFit.write`) -> [94] vector, NaN for elements not listed.

    Raises:
        TransferDataError: unreadable file or no ``atomref`` mapping.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TransferDataError(f"cannot read AtomRef file {path}: {exc}") from None
    mapping = data.get("atomref") if isinstance(data, dict) else None
    if not isinstance(mapping, dict):
        raise TransferDataError(f"{path}: no 'atomref' mapping {{element: eV_per_atom}}")
    return get_atomref(mapping)


def fit_atomref(
    records: Sequence[LabelledStructure],
    source: Any = None,
    allow_rank_deficient: bool = False,
    energies_per_atom: Sequence[float] | None = None,
) -> AtomRefFit:
    """Fit the AtomRef to labelled data (Huang et al. 2025, Eq. 2).

    Solves ``min ||A w - E||`` over the elements present, with ``A``
    [n, 94] the composition fractions (:func:`composition_matrix`) and ``E``
    [n] the energies per atom in eV/atom (from the records, or
    ``energies_per_atom``): for full-rank data this is exactly
    ``(A^T A)^-1 A^T E``, computed by an SVD-based solver.

    Args:
        records: labelled structures (energies needed unless
            ``energies_per_atom`` is given).
        source: AtomRef kept for elements absent from the data (anything
            :func:`get_atomref` takes); without it those entries are 0.
        allow_rank_deficient: for rank-deficient data, return the
            least-squares solution closest to the source AtomRef (undetermined
            directions keep the source's values) and report it, instead of
            raising.
        energies_per_atom: [n] eV/atom, overriding the records' labels.

    Returns:
        :class:`AtomRefFit` with the [94] vector and what was fitted, kept or
        undetermined.

    Raises:
        TransferDataError: no data, missing or non-finite energies.
        RankDeficientError: the data cannot separate some elements (e.g. two
            elements always in the same proportion, or fewer structures than
            elements) and ``allow_rank_deficient`` is false.
    """
    if len(records) == 0:
        raise TransferDataError("cannot fit AtomRef to an empty data set")
    if energies_per_atom is None:
        e = np.array([r.energy_per_atom for r in records], dtype=float)
    else:
        e = np.asarray(energies_per_atom, dtype=float).reshape(-1)
        if e.shape != (len(records),):
            raise TransferDataError(f"energies_per_atom has {e.size} values for {len(records)} structures")
    bad = np.flatnonzero(~np.isfinite(e))
    if bad.size:
        shown = ", ".join(getattr(records[k], "source", str(k)) or str(k) for k in bad[:5])
        raise TransferDataError(f"{bad.size} structures have no finite energy label ({shown})")
    A = composition_matrix(records)
    present = np.flatnonzero(A.any(axis=0))
    src = np.zeros(MAX_Z) if source is None else get_atomref(source)
    src_desc = "" if source is None else (source if isinstance(source, str) else type(source).__name__)
    src = np.nan_to_num(src, nan=0.0)  # elements a partial atomref.json does not list count as 0
    Ap = A[:, present]
    u, s, vt = np.linalg.svd(Ap, full_matrices=True)
    rank = int((s > RANK_RTOL * s.max()).sum())
    fitted = [ELEMENTS[k] for k in present]
    null = vt[rank:]  # rows spanning the null space of Ap
    undetermined = [fitted[j] for j in range(len(present)) if null.shape[0] and np.linalg.norm(null[:, j]) > 1e-6]
    rank_deficient = rank < len(present)
    notes = []
    if rank_deficient:
        msg = (
            f"rank-deficient AtomRef fit: the {len(records)} structures' composition matrix has rank {rank} "
            f"for {len(present)} elements; cannot separate {', '.join(undetermined)}"
            + (" (fewer structures than elements)" if len(records) < len(present) else
               " (they always appear in the same proportions)")
        )
        if not allow_rank_deficient:
            raise RankDeficientError(
                msg + ". Add structures with other compositions of these elements, or allow a rank-deficient "
                "fit that keeps the source AtomRef along the undetermined directions."
            )
        warnings.warn(msg, stacklevel=2)
        notes.append(msg + "; undetermined directions kept at the source AtomRef")
    w0 = src[present]
    # least squares closest to the source: exact Eq. 2 when full rank
    pinv = (vt[:rank].T / s[:rank]) @ u[:, :rank].T
    wp = w0 + pinv @ (e - Ap @ w0)
    atomref = src.copy()
    atomref[present] = wp
    absent = [ELEMENTS[k] for k in range(MAX_Z) if k not in set(present.tolist())]
    return AtomRefFit(
        atomref=atomref,
        fitted_elements=fitted,
        kept_from_source=absent if source is not None else [],
        absent_elements=absent,
        rank=rank,
        rank_deficient=rank_deficient,
        undetermined_elements=undetermined,
        n_structures=len(records),
        residual_mae=float(np.mean(np.abs(Ap @ wp - e))),
        source=str(src_desc),
        notes=notes,
    )


def rereference(model: Any, atomref: Any) -> torch.nn.Module:
    """Energy re-referencing (Huang et al. 2025, Eq. 3): a copy of ``model``
    whose AtomRef is replaced by ``atomref``; all other weights are unchanged.

    Args:
        model: a crossfunctional model (eager or TorchScript), an upstream
            ``chgnet.model.CHGNet``, or a name/file for :func:`load_model`.
        atomref: the new AtomRef (anything :func:`get_atomref` takes); NaN
            entries (elements an ``atomref.json`` does not list) keep the
            model's own value.

    Returns:
        The re-referenced copy; energies change by exactly
        ``sum_i (new[Z_i] - old[Z_i])`` per structure, forces, stress and
        magmoms not at all. For crossfunctional models the metadata's
        ``atomref`` is updated too, so an export carries the new reference.
    """
    if isinstance(model, (str, os.PathLike)):
        from crossfunctional.models import load_model

        model = load_model(model)
    old = get_atomref(model)
    new = get_atomref(atomref)
    new = np.where(np.isnan(new), old, new)
    if hasattr(model, "composition_model"):  # upstream chgnet
        out = copy.deepcopy(model)
        weight = out.composition_model.fc.weight
        with torch.no_grad():
            weight.copy_(torch.as_tensor(new, dtype=weight.dtype).view_as(weight))
        return out
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.atomref.copy_(torch.as_tensor(new, dtype=out.atomref.dtype, device=out.atomref.device))
    meta = json.loads(out.metadata_json)
    meta["atomref"] = {el: float(v) for el, v in zip(ELEMENTS, new)}
    meta["rereferenced"] = "AtomRef replaced (Huang et al. 2025, Eq. 3)"
    out.metadata_json = json.dumps(meta)
    return out


# ----------------------------------------------------------------- correlation
def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() < 1e-12 or y.std() < 1e-12:
        return float("nan")  # degenerate: one side constant
    return float(np.corrcoef(x, y)[0, 1])


@dataclass
class CorrelationResult:
    """Pearson correlation between a source model's energies and target labels
    before and after subtracting each side's AtomRef (Huang et al. 2025, Fig. 2b).

    Arrays are [n] in eV/atom: ``source`` (source model), ``target`` (labels),
    and the same with ``c . E_elem`` of each side's AtomRef subtracted
    (``source_referenced``, ``target_referenced``). ``pearson_after`` is NaN
    when one side is constant after referencing (e.g. one structure per element).
    """

    n: int
    pearson_before: float
    pearson_after: float
    source: np.ndarray
    target: np.ndarray
    source_referenced: np.ndarray
    target_referenced: np.ndarray
    source_atomref_from: str
    target_atomref_from: str
    material_ids: list[str]
    target_fit: AtomRefFit | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "pearson_before": self.pearson_before,
            "pearson_after": self.pearson_after,
            "units": "eV/atom",
            "source_atomref": self.source_atomref_from,
            "target_atomref": self.target_atomref_from,
            "target_fit": None if self.target_fit is None else {
                k: v for k, v in self.target_fit.as_dict().items() if k != "atomref"
            },
            "mae_after_eV_per_atom": float(np.mean(np.abs(self.source_referenced - self.target_referenced))),
        }

    def plot(self, path: str | os.PathLike, title: str = "") -> Path:
        """Two scatter panels (before / after referencing), written atomically."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.4))
        panels = (
            (self.source, self.target, f"total energies: ρ = {self.pearson_before:.3f}", "source model E/N (eV/atom)", "target label E/N (eV/atom)"),
            (self.source_referenced, self.target_referenced, f"AtomRef subtracted: ρ = {self.pearson_after:.3f}",
             f"source E/N - AtomRef ({self.source_atomref_from})", f"target E/N - AtomRef ({self.target_atomref_from})"),
        )
        for ax, (x, y, t, xl, yl) in zip(axes, panels):
            ax.scatter(x, y, s=8, alpha=0.6, edgecolors="none")
            ax.set_title(t, fontsize=10)
            ax.set_xlabel(xl, fontsize=8)
            ax.set_ylabel(yl, fontsize=8)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return save_figure(fig, path)

    def write(self, directory: str | os.PathLike, title: str = "") -> Path:
        """``DIR/correlation.json`` (summary), ``correlation.csv`` (per
        structure) and ``correlation.png`` (scatter), each written atomically."""
        directory = Path(directory)
        with atomic_write(directory / "correlation.json") as fh:
            json.dump(self.as_dict(), fh, indent=1)
        with atomic_write(directory / "correlation.csv", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["material_id", "source_eV_per_atom", "target_eV_per_atom", "source_referenced", "target_referenced"])
            for row in zip(self.material_ids, self.source, self.target, self.source_referenced, self.target_referenced):
                w.writerow([row[0]] + [f"{v:.6f}" for v in row[1:]])
        self.plot(directory / "correlation.png", title=title)
        return directory / "correlation.json"


def correlate(
    records: Sequence[LabelledStructure],
    source: Any = "chgnet-0.3.0",
    target_atomref: Any = None,
    source_atomref: Any = None,
    source_energies: Sequence[float] | None = None,
) -> CorrelationResult:
    """Correlation of a source model with target labels (Huang et al. 2025, Fig. 2b).

    Args:
        records: structures with target energy labels (eV).
        source: the source model (name, file or module) whose energies are
            compared with the labels.
        target_atomref: AtomRef subtracted from the labels; default: the Eq. 2
            fit on these labels (:func:`fit_atomref`; a rank-deficient fit is
            allowed and recorded in ``target_fit``).
        source_atomref: AtomRef subtracted from the source energies; default:
            the source model's own.
        source_energies: [n] eV/atom source predictions, if already computed.

    Returns:
        :class:`CorrelationResult` with Pearson ρ before and after.

    Raises:
        TransferDataError: fewer than 3 structures or missing energies.
    """
    from crossfunctional.transfer.data import check_records

    check_records(records, name="correlation data")
    if len(records) < 3:
        raise TransferDataError(f"correlation needs at least 3 structures, got {len(records)}")
    target = np.array([r.energy_per_atom for r in records])
    model = None
    if source_energies is None:
        from crossfunctional.calculators import predict_batch
        from crossfunctional.models import load_model

        model = source if isinstance(source, torch.nn.Module) else load_model(source)
        preds = predict_batch([r.atoms() for r in records], model, max_edges=50_000)
        src_e = np.array([p["energy"] / r.n_atoms for p, r in zip(preds, records)])
    else:
        src_e = np.asarray(source_energies, dtype=float).reshape(-1)
        if src_e.shape != target.shape:
            raise TransferDataError(f"source_energies has {src_e.size} values for {target.size} structures")
    A = composition_matrix(records)
    if source_atomref is None:
        if model is None and not isinstance(source, (str, os.PathLike, torch.nn.Module)):
            raise TransferDataError("source_atomref is needed when the source is not a model")
        s_ref = get_atomref(model if model is not None else source)
        s_from = f"{source if isinstance(source, str) else 'source model'} (own)"
    else:
        s_ref = get_atomref(source_atomref)
        s_from = source_atomref if isinstance(source_atomref, str) else "given"
    fit = None
    if target_atomref is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_atomref(records, source=s_ref, allow_rank_deficient=True)
        t_ref = fit.atomref
        t_from = "Eq. 2 fit on the labels"
    else:
        t_ref = get_atomref(target_atomref)
        t_from = target_atomref if isinstance(target_atomref, str) else "given"
    s_ref = np.where(np.isnan(s_ref), 0.0, s_ref)
    t_ref = np.where(np.isnan(t_ref), 0.0, t_ref)
    src_r = src_e - A @ s_ref
    tgt_r = target - A @ t_ref
    return CorrelationResult(
        n=len(records),
        pearson_before=_pearson(src_e, target),
        pearson_after=_pearson(src_r, tgt_r),
        source=src_e,
        target=target,
        source_referenced=src_r,
        target_referenced=tgt_r,
        source_atomref_from=str(s_from),
        target_atomref_from=str(t_from),
        material_ids=[r.material_id for r in records],
        target_fit=fit,
    )


# ---------------------------------------------------------------------------
# AtomRef refit with an elemental prior (an extension of Eq. 2 for small data)
#
# Eq. 2 needs many compounds per element. The cross-functional shift is mostly
# elemental, so a prior taken from the elemental ground states computed at
# both levels of theory, Δ_el = E_target/N(el) - E_source/N(el), carries most
# of it. Writing the label of structure s as
#     y_s = E_label,s / N_s ≈ m_s + c_s . (Δ + w),
# with m_s the base model's energy per atom and c_s [94] its composition
# fractions, the residual per atom r_s = y_s - m_s - c_s . Δ is fitted by
# ridge regression,
#     w = argmin_w ||C w - r||² + α ||w||²  =  (CᵀC + α I)⁻¹ Cᵀ r,
# over the elements present in the data (the others keep w = 0, i.e. the prior
# alone). The new AtomRef is A_base + Δ + w. For α -> 0 and full-rank data this
# is exactly Eq. 2 fitted to the labels (the prior cancels); for α -> ∞ it is
# the prior alone. α is chosen by k-fold cross-validation on the data.

#: ridge penalties tried by :func:`fit_atomref_with_prior` (dimensionless: C holds fractions)
DEFAULT_ALPHAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def elemental_prior(source: Any, target: Any) -> np.ndarray:
    """Per-element energy shift between two levels of theory from their
    elemental ground states: ``Δ[Z-1] = E_target/N - E_source/N`` (eV/atom).

    Args:
        source, target: elemental reference calculations at the source (e.g.
            PBE) and target (e.g. r2SCAN) level, each a JSON file in any layout
            :func:`crossfunctional.transfer.data.read_json` reads (MatPES
            element files: a dict element -> record) or a list of
            :class:`LabelledStructure`. For an element with several structures
            the lowest energy per atom is its ground state.

    Returns:
        [94] eV/atom; NaN for elements missing at either level.

    Raises:
        TransferDataError: a structure with more than one element, or no
            element in common.
    """
    def lowest(refs: Any) -> np.ndarray:
        from crossfunctional.transfer.data import read_json

        records = read_json(refs) if isinstance(refs, (str, os.PathLike)) else list(refs)
        out = np.full(MAX_Z, np.nan)
        for rec in records:
            numbers = set(rec.structure.atomic_numbers)
            if len(numbers) != 1:
                raise TransferDataError(f"{rec.source or rec.material_id}: an elemental reference must hold one element, "
                                        f"got {rec.structure.composition.reduced_formula}")
            z = numbers.pop()
            e = rec.energy_per_atom
            if np.isfinite(e) and not (e >= out[z - 1]):
                out[z - 1] = e
        return out

    delta = lowest(target) - lowest(source)
    if not np.isfinite(delta).any():
        raise TransferDataError("the source and target elemental references have no element in common")
    return delta


def matpes_prior() -> np.ndarray:
    """:func:`elemental_prior` of the shipped MatPES element files: r2SCAN minus
    PBE energy per atom of each element's ground state (eV/atom, [94]).

    Data: MatPES (Kaplan et al. 2025), ``crossfunctional/data``."""
    from crossfunctional.data import data_path

    return elemental_prior(data_path("matpes_pbe_element_refs.json.gz"), data_path("matpes_r2scan_element_refs.json.gz"))


@dataclass
class PriorAtomRefFit(_WritesJson):
    """Result of :func:`fit_atomref_with_prior`.

    Attributes:
        atomref: [94] eV/atom, ``base + prior + residual`` (element Z at index Z - 1).
        base_atomref: [94] the base model's AtomRef.
        prior: [94] the elemental prior Δ (0 where none was available).
        residual: [94] the ridge fit w of the remaining per-element error
            (0 for elements absent from the data).
        alpha: the ridge penalty used (chosen by cross-validation unless given).
        cv_mae: {alpha: cross-validated MAE in eV/atom} of the candidates.
        fitted_elements: elements present in the data.
        no_prior_elements: elements present in the data without a prior.
        n_structures: structures fitted.
        residual_mae: mean |y - m - c . (Δ + w)| over the data, eV/atom.
        base: description of the base model.
    """

    atomref: np.ndarray
    base_atomref: np.ndarray
    prior: np.ndarray
    residual: np.ndarray
    alpha: float
    cv_mae: dict[float, float]
    fitted_elements: list[str]
    no_prior_elements: list[str]
    n_structures: int
    residual_mae: float
    base: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The ``atomref.json`` layout (readable by :func:`read_atomref`) plus the parts of the fit."""
        def per_element(v):
            return {el: float(x) for el, x in zip(ELEMENTS, v)}

        return {
            "atomref": per_element(self.atomref),
            "units": "eV/atom",
            "method": "base AtomRef + elemental prior + ridge fit of the residual per element "
            "(extension of Huang et al. 2025, Eq. 2)",
            "base": self.base,
            "base_atomref": per_element(self.base_atomref),
            "prior": per_element(self.prior),
            "residual": per_element(self.residual),
            "alpha": self.alpha,
            "cv_mae_eV_per_atom": {f"{a:g}": v for a, v in self.cv_mae.items()},
            "fitted_elements": self.fitted_elements,
            "no_prior_elements": self.no_prior_elements,
            "n_structures": self.n_structures,
            "residual_mae_eV_per_atom": self.residual_mae,
        }


    def summary(self) -> str:
        text = (f"AtomRef = base ({self.base}) + elemental prior + ridge residual (alpha {self.alpha:g}), "
                f"{self.n_structures} structures, {len(self.fitted_elements)} elements; "
                f"residual MAE {1000 * self.residual_mae:.1f} meV/atom, cross-validated "
                f"{1000 * self.cv_mae.get(self.alpha, float('nan')):.1f} meV/atom")
        if self.no_prior_elements:
            text += f"\n  no prior for: {', '.join(self.no_prior_elements)} (residual fit only)"
        return text


def _ridge(C: np.ndarray, r: np.ndarray, alpha: float) -> np.ndarray:
    """w [94] = (CᵀC + αI)⁻¹ Cᵀ r over the columns present in C, 0 elsewhere."""
    present = np.flatnonzero(C.any(axis=0))
    Cp = C[:, present]
    w = np.zeros(C.shape[1])
    w[present] = np.linalg.solve(Cp.T @ Cp + alpha * np.eye(present.size), Cp.T @ r)
    return w


def fit_atomref_with_prior(
    records: Sequence[LabelledStructure],
    base: Any = "chgnet-0.3.0",
    prior: Any = "matpes",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    alpha: float | None = None,
    folds: int = 5,
    seed: int = 0,
    base_energies: Sequence[float] | None = None,
) -> PriorAtomRefFit:
    """Refit a base model's AtomRef to target labels with an elemental prior
    and a ridge fit of the remaining per-element error (see the derivation
    above this function: an extension of Huang et al. 2025, Eq. 2, for data
    with few compounds per element).

    Args:
        records: structures with target energy labels (eV, total).
        base: the model whose AtomRef is refitted (name, file or module).
        prior: ``"matpes"`` (:func:`matpes_prior`), a [94] array in eV/atom,
            a ``(source, target)`` pair for :func:`elemental_prior`, or None
            (no prior: a ridge-regularised Eq. 2 on the model's error).
        alphas: ridge penalties tried by ``folds``-fold cross-validation
            (seeded by ``seed``); ignored when ``alpha`` is given.
        base_energies: [n] base-model energies per atom (eV/atom), if
            already computed; otherwise the base model is evaluated.

    Returns:
        :class:`PriorAtomRefFit`; its ``atomref`` goes into :func:`rereference`.

    Raises:
        TransferDataError: no or non-finite labels, fewer structures than folds,
            an empty ``alphas``.
    """
    from crossfunctional.transfer.data import check_records

    check_records(records, name="AtomRef data")
    y = np.array([r.energy_per_atom for r in records], dtype=float)
    if not np.isfinite(y).all():
        raise TransferDataError("every structure needs a finite energy label")
    model = None
    if base_energies is None:
        from crossfunctional.calculators import predict_batch
        from crossfunctional.models import load_model

        model = base if isinstance(base, torch.nn.Module) else load_model(base)
        preds = predict_batch([r.atoms() for r in records], model, max_edges=50_000)
        m = np.array([p["energy"] / r.n_atoms for p, r in zip(preds, records)])
    else:
        m = np.asarray(base_energies, dtype=float).reshape(-1)
        if m.shape != y.shape:
            raise TransferDataError(f"base_energies has {m.size} values for {y.size} structures")
    base_ref = np.nan_to_num(get_atomref(model if model is not None else base), nan=0.0)
    if prior is None:
        delta = np.zeros(MAX_Z)
    elif isinstance(prior, str) and prior == "matpes":
        delta = matpes_prior()
    elif isinstance(prior, tuple) and len(prior) == 2:
        delta = elemental_prior(*prior)
    else:
        delta = np.asarray(prior, dtype=float).reshape(-1)
        if delta.shape != (MAX_Z,):
            raise TransferDataError(f"a prior must have {MAX_Z} entries (eV/atom, element Z at index Z - 1), got {delta.size}")
    C = composition_matrix(records)
    present = np.flatnonzero(C.any(axis=0))
    no_prior = [ELEMENTS[k] for k in present if not np.isfinite(delta[k])]
    delta = np.nan_to_num(delta, nan=0.0)
    r = y - m - C @ delta

    cv: dict[float, float] = {}
    if alpha is None:
        if len(alphas) == 0:
            raise TransferDataError("no ridge penalty to try (alphas is empty)")
        if len(records) < folds:
            raise TransferDataError(f"{folds}-fold cross-validation needs at least {folds} structures, got {len(records)}")
        parts = np.array_split(np.random.default_rng(seed).permutation(len(records)), folds)
        for a in alphas:
            err = np.empty(len(records))
            for k, test in enumerate(parts):
                train = np.concatenate([p for j, p in enumerate(parts) if j != k])
                w = _ridge(C[train], r[train], a)
                err[test] = r[test] - C[test] @ w
            cv[float(a)] = float(np.mean(np.abs(err)))
        alpha = min(cv, key=cv.get)
    w = _ridge(C, r, alpha)
    return PriorAtomRefFit(
        atomref=base_ref + delta + w,
        base_atomref=base_ref,
        prior=delta,
        residual=w,
        alpha=float(alpha),
        cv_mae=cv,
        fitted_elements=[ELEMENTS[k] for k in present],
        no_prior_elements=no_prior,
        n_structures=len(records),
        residual_mae=float(np.mean(np.abs(r - C @ w))),
        base=base if isinstance(base, str) else type(base).__name__,
    )
