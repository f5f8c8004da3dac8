"""Elastic constants from stress-strain with relaxed ions.

:func:`elastic` relaxes a crystal (cell and ions), applies the 24
independent strains of pymatgen's :class:`~pymatgen.analysis.elasticity.strain.DeformedStructureSet`
(each of the six Green-Lagrange strain components at ±0.5 % and ±1 % by
default), relaxes the ions of every deformed cell at fixed cell (the
relaxed-ion tensor), and fits the 6x6 elastic tensor with pymatgen's
:meth:`~pymatgen.analysis.elasticity.elastic.ElasticTensor.from_independent_strains`
(a straight line through stress against strain for each component, the
relaxed cell's residual stress included as the zero-strain point; the
method of de Jong et al., Sci. Data 2, 150009 (2015)). The fitted matrix is
symmetrised, C = (C_fit + C_fit^T) / 2 (pymatgen's ``voigt_symmetrized``); its
largest asymmetry |C_fit - C_fit^T| is kept as a diagnostic of anharmonicity
within the strain range.

The CHGNet models' energy surfaces are not harmonic on the scale of 1 %
strain: for Si with the r2SCAN model the relaxed-ion C44 is 32, 22 and 17
GPa with strains of ±1 %, ±0.5 % and ±0.2 % (C11 94, 88, 89 GPa). The
constants therefore depend on ``norm_strains``/``shear_strains``; the default
(±0.5 % and ±1 %, as pymatgen's and matcalc's) is reported in the results.

From the tensor: the Voigt, Reuss and Voigt-Reuss-Hill bulk and shear moduli
(R. Hill, Proc. Phys. Soc. A 65, 349 (1952)), Young's modulus and Poisson's
ratio from the Hill averages, and the Born stability criterion in its
general form: a crystal without applied stress is mechanically stable when
the 6x6 Voigt matrix C is positive definite, i.e. all its eigenvalues are
positive (F. Mouhat, F.-X. Coudert, Phys. Rev. B 90, 224104 (2014)).

Units: GPa (stress, moduli), Voigt order xx, yy, zz, yz, xz, xy; the stress
sign is ASE's (positive tensile), so that C = dσ/dε is positive.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.units import GPa

from crossfunctional.io import atomic_write
from crossfunctional.models import DEFAULT_MODEL
from crossfunctional.errors import WorkflowError
from crossfunctional.workflows.eos import as_crystal, make_calculator, model_label, relax_crystal

__all__ = ["ElasticResult", "elastic"]

log = logging.getLogger(__name__)

VOIGT_LABELS = ("xx", "yy", "zz", "yz", "xz", "xy")


@dataclass
class ElasticResult:
    """Outcome of :func:`elastic`.

    Attributes:
        atoms: the relaxed structure (no calculator attached).
        elastic_tensor: pymatgen :class:`~pymatgen.analysis.elasticity.elastic.ElasticTensor`
            in GPa (its methods give more properties: sound velocities, ...).
        strains: [n, 3, 3] Green-Lagrange strains applied.
        stresses: [n, 3, 3] stresses of the deformed, ion-relaxed cells, GPa
            (positive tensile).
        asymmetry: largest |C_ij - C_ji| of the fit before symmetrisation, GPa.
        converged: [n] whether each ion relaxation converged.
        model: label of the calculator (model name and dispersion).
    """

    atoms: Atoms
    elastic_tensor: Any
    strains: np.ndarray
    stresses: np.ndarray
    asymmetry: float = 0.0
    converged: list[bool] = field(default_factory=list)
    model: str = ""

    @property
    def voigt(self) -> np.ndarray:
        """The 6x6 elastic tensor C_ij in Voigt notation, GPa."""
        return np.asarray(self.elastic_tensor.voigt)

    @property
    def k_voigt(self) -> float:
        """Voigt bulk modulus, GPa: (C11 + C22 + C33 + 2 (C12 + C13 + C23)) / 9."""
        return float(self.elastic_tensor.k_voigt)

    @property
    def k_reuss(self) -> float:
        """Reuss bulk modulus, GPa: 1 / (S11 + S22 + S33 + 2 (S12 + S13 + S23)), S = C⁻¹."""
        return float(self.elastic_tensor.k_reuss)

    @property
    def k_vrh(self) -> float:
        """Voigt-Reuss-Hill bulk modulus, GPa."""
        return float(self.elastic_tensor.k_vrh)

    @property
    def g_voigt(self) -> float:
        """Voigt shear modulus, GPa."""
        return float(self.elastic_tensor.g_voigt)

    @property
    def g_reuss(self) -> float:
        """Reuss shear modulus, GPa."""
        return float(self.elastic_tensor.g_reuss)

    @property
    def g_vrh(self) -> float:
        """Voigt-Reuss-Hill shear modulus, GPa."""
        return float(self.elastic_tensor.g_vrh)

    @property
    def youngs_modulus(self) -> float:
        """Isotropic Young's modulus from the Hill averages, GPa: 9 K G / (3 K + G)."""
        k, g = self.k_vrh, self.g_vrh
        return float(9 * k * g / (3 * k + g))

    @property
    def poisson_ratio(self) -> float:
        """Isotropic Poisson's ratio from the Hill averages: (3 K - 2 G) / (6 K + 2 G)."""
        k, g = self.k_vrh, self.g_vrh
        return float((3 * k - 2 * g) / (6 * k + 2 * g))

    @property
    def eigenvalues(self) -> np.ndarray:
        """[6] eigenvalues of the Voigt matrix, GPa, ascending."""
        return np.linalg.eigvalsh(self.voigt)

    @property
    def born_stable(self) -> bool:
        """Born criterion: C positive definite (every eigenvalue > 0)."""
        return bool(self.eigenvalues.min() > 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: formula, model, C_voigt (6x6 GPa), K/G Voigt, Reuss, Hill,
        Young's modulus, Poisson's ratio, eigenvalues, born_stable, cell, points."""
        return {
            "formula": self.atoms.get_chemical_formula(),
            "n_atoms": len(self.atoms),
            "model": self.model,
            "C_voigt_GPa": self.voigt.tolist(),
            "voigt_order": list(VOIGT_LABELS),
            "k_voigt": self.k_voigt,
            "k_reuss": self.k_reuss,
            "k_vrh": self.k_vrh,
            "g_voigt": self.g_voigt,
            "g_reuss": self.g_reuss,
            "g_vrh": self.g_vrh,
            "youngs_modulus": self.youngs_modulus,
            "poisson_ratio": self.poisson_ratio,
            "eigenvalues_GPa": self.eigenvalues.tolist(),
            "born_stable": self.born_stable,
            "fit_asymmetry_GPa": self.asymmetry,
            "cell": np.asarray(self.atoms.cell.array).tolist(),
            "points": [
                {"strain": np.asarray(e).tolist(), "stress_GPa": np.asarray(s).tolist(), "converged": bool(c)}
                for e, s, c in zip(self.strains, self.stresses, self.converged)
            ],
            "units": {"moduli": "GPa", "stress": "GPa, positive tensile", "strain": "Green-Lagrange"},
        }

    def text(self) -> str:
        """The tensor and the moduli as a few lines of text."""
        lines = [f"{self.atoms.get_chemical_formula()} ({self.model}): elastic tensor C_ij (GPa, Voigt, relaxed ions)"]
        lines += ["  " + " ".join(f"{x:9.2f}" for x in row) for row in self.voigt]
        lines += [
            f"  bulk modulus  K: Voigt {self.k_voigt:.2f}, Reuss {self.k_reuss:.2f}, Hill {self.k_vrh:.2f} GPa",
            f"  shear modulus G: Voigt {self.g_voigt:.2f}, Reuss {self.g_reuss:.2f}, Hill {self.g_vrh:.2f} GPa",
            f"  Young's modulus {self.youngs_modulus:.2f} GPa, Poisson's ratio {self.poisson_ratio:.3f}",
            f"  Born stability: {'stable' if self.born_stable else 'UNSTABLE'} "
            f"(smallest eigenvalue of C {self.eigenvalues.min():.2f} GPa)",
            f"  largest asymmetry of the fitted C_ij before symmetrisation: {self.asymmetry:.2f} GPa",
        ]
        return "\n".join(lines)

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``elastic.json`` (:meth:`to_dict`) and ``elastic_tensor.csv``
        (6x6, GPa) into ``output_dir``, each atomically.

        Returns:
            ``{"json": path, "csv": path}``.
        """
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "elastic.json", "csv": out / "elastic_tensor.csv"}
        with atomic_write(paths["json"], encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")
        rows = [",".join(["", *VOIGT_LABELS])]
        rows += [",".join([lab, *(f"{x:.4f}" for x in row)]) for lab, row in zip(VOIGT_LABELS, self.voigt)]
        with atomic_write(paths["csv"], encoding="utf-8", newline="") as handle:
            handle.write("\n".join(rows) + "\n")
        return paths


def elastic(
    atoms: Any,
    calculator: Any = None,
    *,
    model: Any = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str | None = None,
    dispersion: str | None = None,
    dispersion_functional: str | None = None,
    norm_strains: tuple[float, ...] = (-0.01, -0.005, 0.005, 0.01),
    shear_strains: tuple[float, ...] = (-0.01, -0.005, 0.005, 0.01),
    relax_first: bool = True,
    relax_ions: bool = True,
    fmax: float = 1e-3,
    steps: int = 1000,
    optimizer: str = "FIRE",
    logfile: Any = None,
) -> ElasticResult:
    """Full elastic tensor of a crystal from stress-strain, with relaxed ions.

    Args:
        atoms: the crystal (ASE Atoms or pymatgen Structure, periodic in 3
            directions). Not modified.
        calculator: any ASE calculator with stress; None for a
            :class:`~crossfunctional.calculators.CrossFunctionalCalculator`
            made from ``model``, ``device``, ``dtype``, ``dispersion``,
            ``dispersion_functional``.
        norm_strains: Green-Lagrange strains applied to each normal component
            (non-zero, at least two).
        shear_strains: the same for each shear component (tensor component
            ε_ij, i.e. half the engineering shear strain).
        relax_first: relax cell and ions first (FrechetCellFilter, ASE's
            FixSymmetry) to ``fmax``.
        relax_ions: relax the ions of each deformed cell (the relaxed-ion
            tensor); False gives the clamped-ion tensor.
        fmax: eV/Å, force threshold of every relaxation.
        steps: maximum optimizer steps per relaxation.
        optimizer: ASE optimizer name.
        logfile: the optimizers' log (None silent, ``"-"`` standard output).

    Returns:
        :class:`ElasticResult`.

    Raises:
        crossfunctional.io.InputFileError: ``atoms`` of another type.
        crossfunctional.errors.WorkflowError: not a 3D-periodic
            crystal, fewer than two strains or a zero strain, dispersion
            options with a ready calculator.
        crossfunctional.models.ModelError, crossfunctional.neighbors.StructureError,
        crossfunctional.calculators.dispersion.DispersionError: from the calculator.
    """
    from pymatgen.analysis.elasticity import DeformedStructureSet, ElasticTensor, Strain
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = as_crystal(atoms)
    for name, values in (("norm_strains", norm_strains), ("shear_strains", shear_strains)):
        values = [float(v) for v in values]
        if len(set(values)) < 2 or any(v == 0 for v in values) or any(abs(v) > 0.1 for v in values):
            raise WorkflowError(f"{name} must hold at least two distinct non-zero strains within ±0.1, got {values}")
    calc = make_calculator(calculator, model, device, dtype, dispersion, dispersion_functional)
    label = model_label(calc)

    if relax_first:
        relaxed = relax_crystal(atoms, calc, fmax, steps, optimizer, logfile, "FrechetCellFilter", True).atoms.copy()
    else:
        relaxed = atoms.copy()
    relaxed.set_constraint()
    relaxed.calc = None
    probe = relaxed.copy()
    probe.calc = calc
    eq_stress = _stress_gpa(probe)

    structure = AseAtomsAdaptor.get_structure(relaxed)
    deformed = DeformedStructureSet(structure, norm_strains=norm_strains, shear_strains=shear_strains, symmetry=False)
    strains, stresses, converged = [], [], []
    for deformation in deformed.deformations:
        work = relaxed.copy()  # lattice vectors a -> F a (rows: cell F^T), fractional coordinates kept
        work.set_cell(relaxed.cell.array @ np.asarray(deformation).T, scale_atoms=True)
        if relax_ions:
            res = relax_crystal(work, calc, fmax, steps, optimizer, logfile, None, False)
            work, ok = res.atoms, res.converged
        else:
            work.calc, ok = calc, True
        strains.append(np.asarray(Strain.from_deformation(deformation)))
        stresses.append(_stress_gpa(work))
        converged.append(ok)
    fit = ElasticTensor.from_independent_strains(
        [Strain(e) for e in strains], [np.asarray(s) for s in stresses], eq_stress=eq_stress
    )
    asymmetry = float(np.abs(fit.voigt - fit.voigt.T).max())
    result = ElasticResult(
        atoms=relaxed,
        elastic_tensor=fit.voigt_symmetrized,
        strains=np.array(strains),
        stresses=np.array(stresses),
        asymmetry=asymmetry,
        converged=converged,
        model=label,
    )
    if asymmetry > 0.02 * max(1.0, float(np.abs(fit.voigt).max())):
        log.warning(
            "%s: the fitted C_ij are asymmetric by up to %.2f GPa (anharmonic within the strain range); "
            "the symmetrised tensor is reported", relaxed.get_chemical_formula(), asymmetry,
        )  # fmt: skip
    if not result.born_stable:
        log.warning("%s: the elastic tensor is not positive definite (Born unstable)", relaxed.get_chemical_formula())
    return result


def _stress_gpa(atoms: Atoms) -> np.ndarray:
    """[3, 3] stress of ``atoms`` with its calculator, GPa, positive tensile."""
    from pymatgen.analysis.elasticity import Stress

    return np.asarray(Stress(atoms.get_stress(voigt=False) / GPa))
