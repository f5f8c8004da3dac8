"""Equation of state: energy against volume and the Birch-Murnaghan fit.

:func:`eos` relaxes a crystal, evaluates it at ``n_volumes`` volumes spread
evenly over ±``volume_range`` around the relaxed volume and fits an
equation of state with pymatgen (:class:`pymatgen.analysis.eos.EOS`; by
default the third-order Birch-Murnaghan form, F. Birch, Phys. Rev. 71, 809
(1947)):

    E(V) = E0 + 9 V0 B0 / 16 {[(V0/V)^(2/3) - 1]^3 B0' + [(V0/V)^(2/3) - 1]^2 [6 - 4 (V0/V)^(2/3)]}.

Cubic cells keep their shape (scaled isotropically, ions relaxed at each
volume); other cells have shape and ions relaxed at each fixed volume
(ASE's ``FrechetCellFilter(constant_volume=True)``), so that B0 is the
bulk modulus under hydrostatic pressure (the Reuss bound of the elastic
tensor for a single crystal).

Units: Å³ (volumes, per cell), eV (energies, per cell), GPa (B0).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.filters import FrechetCellFilter
from ase.units import GPa

from crossfunctional.errors import WorkflowError
from crossfunctional.io import as_atoms, atomic_write, save_figure
from crossfunctional.models import DEFAULT_MODEL
from crossfunctional.workflows.relax import relax

__all__ = ["EOSResult", "eos", "is_cubic"]

log = logging.getLogger(__name__)


class _ConstantVolumeFilter(FrechetCellFilter):
    """ASE's FrechetCellFilter relaxing the cell shape at fixed volume."""

    def __init__(self, atoms: Atoms, **kwargs) -> None:
        super().__init__(atoms, constant_volume=True, **kwargs)


# ------------------------------------------------------------------ shared helpers
def as_crystal(structure: Any) -> Atoms:
    """A periodic crystal as a copy of ASE Atoms (from ASE Atoms or a pymatgen
    Structure, through :func:`crossfunctional.io.as_atoms`).

    Raises:
        crossfunctional.io.InputFileError: neither type. WorkflowError: empty,
            not periodic in three directions, or without a cell volume.
    """
    atoms = as_atoms(structure).copy()
    atoms.calc = None
    atoms.set_constraint()
    if len(atoms) == 0:
        raise WorkflowError("empty structure: no atoms")
    if not atoms.pbc.all():
        raise WorkflowError(
            f"{atoms.get_chemical_formula()} is periodic only along {atoms.pbc.tolist()}: "
            "a crystal periodic in 3 directions is needed"
        )
    if abs(atoms.get_volume()) < 1e-6:
        raise WorkflowError(f"{atoms.get_chemical_formula()} has no cell volume")
    return atoms


def make_calculator(
    calculator: Any,
    model: Any,
    device: str,
    dtype: str | None,
    dispersion: str | None,
    dispersion_functional: str | None,
):
    """``calculator`` itself, or a new :class:`~crossfunctional.calculators.CrossFunctionalCalculator`.

    Raises:
        WorkflowError: dispersion options together with a ready calculator.
    """
    if calculator is not None:
        if dispersion is not None or dispersion_functional is not None:
            raise WorkflowError(
                "dispersion= applies to a calculator made here; pass "
                "CrossFunctionalCalculator(..., dispersion=...) as calculator instead"
            )
        return calculator
    from crossfunctional.calculators import CrossFunctionalCalculator

    return CrossFunctionalCalculator(
        model=model, device=device, dtype=dtype, dispersion=dispersion, dispersion_functional=dispersion_functional
    )


def model_label(calculator: Any) -> str:
    """``model_name`` from a crossfunctional calculator's metadata plus its
    dispersion (e.g. ``"chgnet-r2scan+r2scan-D3(BJ)"``), else the calculator's class name."""
    meta = getattr(calculator, "metadata", None)
    name = str(meta.get("model_name")) if isinstance(meta, dict) and meta.get("model_name") else type(calculator).__name__
    disp = getattr(calculator, "dispersion", None)
    return f"{name}+{disp.label}" if disp is not None else name


def is_cubic(atoms: Atoms, symprec: float = 0.01) -> bool:
    """True when spglib finds a cubic space group (195-230) within ``symprec`` Å."""
    import spglib

    data = spglib.get_symmetry_dataset(
        (np.asarray(atoms.cell.array), atoms.get_scaled_positions(), atoms.numbers), symprec=symprec
    )
    return data is not None and int(data.number) >= 195


def relax_crystal(
    atoms: Atoms, calculator: Any, fmax: float, steps: int, optimizer: str, logfile: Any, cell_filter: Any, fix_symmetry: bool
):
    """:func:`~crossfunctional.workflows.relax.relax` of a copy of ``atoms`` with
    ``calculator``; a non-converged relaxation is logged, not raised."""
    work = atoms.copy()
    work.calc = calculator
    res = relax(
        work, fmax=fmax, steps=steps, optimizer=optimizer, cell_filter=cell_filter, fix_symmetry=fix_symmetry, logfile=logfile
    )
    if not res.converged:
        log.warning(
            "%s: relaxation not converged after %d steps (largest force %.2e eV/Å, fmax %.1e asked)",
            atoms.get_chemical_formula(), res.steps, res.fmax, fmax,
        )  # fmt: skip
    return res


# ------------------------------------------------------------------ the result
@dataclass
class EOSResult:
    """Outcome of :func:`eos`.

    Attributes:
        atoms: the relaxed structure (no calculator attached).
        volumes: [n] cell volumes evaluated, Å³.
        energies: [n] energies of the cell at those volumes, eV.
        v0: equilibrium volume of the cell from the fit, Å³.
        e0: energy at ``v0``, eV.
        b0: bulk modulus, GPa.
        b0_prime: pressure derivative of the bulk modulus, dB/dP (dimensionless).
        eos_name: the pymatgen EOS form fitted (e.g. ``"birch_murnaghan"``).
        relaxed_at_volume: True when shape and ions were relaxed at each
            volume, False when the cell was scaled isotropically (ions relaxed).
        converged: [n] whether each fixed-volume relaxation converged.
        rms_residual: root mean square of energy - fit over the points, eV/atom.
        model: label of the calculator (model name and dispersion).
    """

    atoms: Atoms
    volumes: np.ndarray
    energies: np.ndarray
    v0: float
    e0: float
    b0: float
    b0_prime: float
    eos_name: str
    relaxed_at_volume: bool
    converged: list[bool] = field(default_factory=list)
    rms_residual: float = float("nan")
    model: str = ""

    def fitted_energy(self, volumes: np.ndarray) -> np.ndarray:
        """The fitted E(V), eV, at ``volumes`` (Å³) (pymatgen's EOS form)."""
        from pymatgen.analysis.eos import EOS

        fit = EOS(self.eos_name).fit(self.volumes, self.energies)
        return np.asarray(fit.func(np.asarray(volumes, dtype=float)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: formula, n_atoms, v0 (Å³), v0_per_atom, e0 (eV),
        e0_per_atom, b0 (GPa), b0_prime, eos, relaxed_at_volume, rms_residual
        (eV/atom), points [{volume, energy, converged}], cell (Å), model."""
        n = len(self.atoms)
        return {
            "formula": self.atoms.get_chemical_formula(),
            "n_atoms": n,
            "model": self.model,
            "eos": self.eos_name,
            "v0": self.v0,
            "v0_per_atom": self.v0 / n,
            "e0": self.e0,
            "e0_per_atom": self.e0 / n,
            "b0": self.b0,
            "b0_prime": self.b0_prime,
            "relaxed_at_volume": self.relaxed_at_volume,
            "rms_residual": self.rms_residual,
            "points": [
                {"volume": float(v), "energy": float(e), "converged": bool(c)}
                for v, e, c in zip(self.volumes, self.energies, self.converged)
            ],
            "cell": np.asarray(self.atoms.cell.array).tolist(),
            "units": {"volume": "angstrom^3 per cell", "energy": "eV per cell", "b0": "GPa", "rms_residual": "eV/atom"},
        }

    def text(self) -> str:
        """A few lines: formula, model, V0, E0, B0, B0'."""
        n = len(self.atoms)
        return "\n".join(
            [
                f"{self.atoms.get_chemical_formula()} ({self.model}), {self.eos_name} fit of {len(self.volumes)} volumes",
                f"  V0 = {self.v0:.4f} Å^3 ({self.v0 / n:.4f} Å^3/atom)",
                f"  E0 = {self.e0:.6f} eV ({self.e0 / n:.6f} eV/atom)",
                f"  B0 = {self.b0:.2f} GPa, B0' = {self.b0_prime:.2f}",
                f"  rms residual of the fit {1e3 * self.rms_residual:.3f} meV/atom",
            ]
        )

    def plot(self, path: str | os.PathLike) -> Path:
        """E(V) points and the fitted curve, per atom, as a PNG at ``path``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        n = len(self.atoms)
        fig = Figure(figsize=(5.0, 4.0), dpi=150)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        grid = np.linspace(self.volumes.min(), self.volumes.max(), 200)
        ax.plot(grid / n, self.fitted_energy(grid) / n, color="C0", lw=1.2, label=f"{self.eos_name.replace('_', '-')} fit")
        ax.plot(self.volumes / n, self.energies / n, "o", color="C1", ms=5, label="calculated")
        ax.axvline(self.v0 / n, color="0.6", lw=0.8, ls="--")
        ax.set_xlabel("volume (Å³/atom)")
        ax.set_ylabel("energy (eV/atom)")
        ax.set_title(f"{self.atoms.get_chemical_formula()}: B0 = {self.b0:.1f} GPa, B0' = {self.b0_prime:.2f}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return save_figure(fig, path, dpi=150)

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``eos.json`` (:meth:`to_dict`), ``eos.csv`` (volume, energy,
        converged) and ``eos.png`` (:meth:`plot`) into ``output_dir``, each atomically.

        Returns:
            ``{"json": path, "csv": path, "png": path}``.
        """
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "eos.json", "csv": out / "eos.csv", "png": out / "eos.png"}
        with atomic_write(paths["json"], encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["volume_A3", "energy_eV", "converged"])
        for v, e, c in zip(self.volumes, self.energies, self.converged):
            writer.writerow([f"{v:.6f}", f"{e:.8f}", bool(c)])
        with atomic_write(paths["csv"], encoding="utf-8", newline="") as handle:
            handle.write(buf.getvalue())
        self.plot(paths["png"])
        return paths


# ------------------------------------------------------------------ the workflow
def eos(
    atoms: Any,
    calculator: Any = None,
    *,
    model: Any = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str | None = None,
    dispersion: str | None = None,
    dispersion_functional: str | None = None,
    n_volumes: int = 11,
    volume_range: float = 0.06,
    relax_first: bool = True,
    relax_at_volume: bool | None = None,
    fmax: float = 1e-3,
    steps: int = 1000,
    optimizer: str = "FIRE",
    eos_name: str = "birch_murnaghan",
    symprec: float = 0.01,
    logfile: Any = None,
) -> EOSResult:
    """Energy-volume curve of a crystal and its equation-of-state fit.

    Steps: (1) unless ``relax_first=False``, relax cell and ions
    (FrechetCellFilter, ASE's FixSymmetry) to ``fmax``; (2) ``n_volumes``
    volumes V_k = V_relaxed (1 + x_k), x_k evenly spaced in
    [-``volume_range``, +``volume_range``]; at each, the relaxed cell scaled
    isotropically and then, for cubic cells, the ions relaxed, for other
    cells shape and ions relaxed at fixed volume (``relax_at_volume``
    overrides the choice); (3) the fit with pymatgen's ``EOS(eos_name)``.

    Args:
        atoms: the crystal (ASE Atoms or pymatgen Structure, periodic in 3
            directions). Not modified.
        calculator: any ASE calculator with energy, forces and stress; None
            for a :class:`~crossfunctional.calculators.CrossFunctionalCalculator`
            made from ``model``, ``device``, ``dtype``, ``dispersion``,
            ``dispersion_functional``.
        n_volumes: number of volumes (>= 5).
        volume_range: relative half-width of the volume range (0 < x < 0.3).
        relax_first: relax the input before building the volumes.
        relax_at_volume: None (default: False for cubic cells, True otherwise),
            or force either.
        fmax: eV/Å, force threshold of every relaxation (atoms and the cell
            filter's rows).
        steps: maximum optimizer steps per relaxation.
        optimizer: ASE optimizer name.
        eos_name: a pymatgen EOS form: ``"birch_murnaghan"`` (default),
            ``"murnaghan"``, ``"birch"``, ``"vinet"``, ``"pourier_tarantola"``.
        symprec: Å, tolerance of the cubic test and of FixSymmetry.
        logfile: the optimizers' log (None silent, ``"-"`` standard output).

    Returns:
        :class:`EOSResult` (``v0`` Å³, ``e0`` eV, ``b0`` GPa, ``b0_prime``).

    Raises:
        crossfunctional.io.InputFileError: ``atoms`` of another type.
        crossfunctional.errors.WorkflowError: not a 3D-periodic
            crystal, bad ``n_volumes``/``volume_range``/``eos_name``,
            dispersion options with a ready calculator, or a fit that fails.
        crossfunctional.models.ModelError, crossfunctional.neighbors.StructureError,
        crossfunctional.calculators.dispersion.DispersionError: from the calculator.
    """
    from pymatgen.analysis.eos import EOS, EOSError as PymatgenEOSError

    atoms = as_crystal(atoms)
    if int(n_volumes) != n_volumes or n_volumes < 5:
        raise WorkflowError(f"n_volumes must be an integer >= 5 (the fit has 4 parameters), got {n_volumes!r}")
    if not 0 < volume_range < 0.3:
        raise WorkflowError(f"volume_range must be a fraction between 0 and 0.3, got {volume_range!r}")
    if eos_name not in EOS.MODELS or eos_name in ("numerical_eos", "deltafactor"):
        choices = ", ".join(k for k in EOS.MODELS if k not in ("numerical_eos", "deltafactor"))
        raise WorkflowError(f"unknown eos_name {eos_name!r}: expected one of {choices}")
    calc = make_calculator(calculator, model, device, dtype, dispersion, dispersion_functional)
    label = model_label(calc)

    if relax_first:
        res = relax_crystal(atoms, calc, fmax, steps, optimizer, logfile, "FrechetCellFilter", True)
        relaxed = res.atoms.copy()
    else:
        relaxed = atoms.copy()
    relaxed.set_constraint()
    relaxed.calc = None
    cubic = is_cubic(relaxed, symprec)
    shape_relax = (not cubic) if relax_at_volume is None else bool(relax_at_volume)
    volumes, energies, converged = [], [], []
    for x in np.linspace(-volume_range, volume_range, int(n_volumes)):
        work = relaxed.copy()
        work.set_cell(relaxed.cell.array * (1 + x) ** (1 / 3), scale_atoms=True)
        cell_filter = _ConstantVolumeFilter if shape_relax else None
        res = relax_crystal(work, calc, fmax, steps, optimizer, logfile, cell_filter, True)
        volumes.append(res.atoms.get_volume())
        energies.append(res.energy)
        converged.append(res.converged)
    volumes_arr, energies_arr = np.array(volumes), np.array(energies)
    try:
        fit = EOS(eos_name).fit(volumes_arr, energies_arr)
    except (PymatgenEOSError, RuntimeError, ValueError) as exc:
        raise WorkflowError(f"{relaxed.get_chemical_formula()}: the {eos_name} fit failed ({exc})") from None
    rms = float(np.sqrt(np.mean((energies_arr - fit.func(volumes_arr)) ** 2)) / len(relaxed))
    if not volumes_arr.min() <= fit.v0 <= volumes_arr.max():
        log.warning(
            "%s: fitted V0 = %.3f Å³ lies outside the volumes evaluated (%.3f-%.3f Å³); relax first or widen volume_range",
            relaxed.get_chemical_formula(), fit.v0, volumes_arr.min(), volumes_arr.max(),
        )  # fmt: skip
    return EOSResult(
        atoms=relaxed,
        volumes=volumes_arr,
        energies=energies_arr,
        v0=float(fit.v0),
        e0=float(fit.e0),
        b0=float(fit.b0) / GPa,
        b0_prime=float(fit.b1),
        eos_name=eos_name,
        relaxed_at_volume=shape_relax,
        converged=converged,
        rms_residual=rms,
        model=label,
    )
