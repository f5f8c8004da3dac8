"""Structure relaxation with ASE optimizers and cell filters.

:func:`relax` minimises the energy of a structure with respect to the atomic
positions and, through a cell filter from :mod:`ase.filters`, the cell. With
the defaults (``FIRE`` + ``FrechetCellFilter``) it follows the protocol of
``chgnet.model.StructOptimizer``, the upstream reference.

Units are ASE's: energies in eV, forces in eV/Å, lengths in Å.
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from ase import Atoms

from crossfunctional.errors import WorkflowError
from crossfunctional.io import as_atoms, as_structure, atomic_path

log = logging.getLogger(__name__)

__all__ = ["CELL_FILTERS", "RelaxResult", "available_optimizers", "relax"]

#: Cell filters of :mod:`ase.filters` that :func:`relax` accepts by name.
CELL_FILTERS = ("FrechetCellFilter", "ExpCellFilter", "UnitCellFilter")


@dataclass
class RelaxResult:
    """Outcome of :func:`relax`.

    Attributes:
        atoms: the relaxed structure (a copy of the input; the calculator that
            relaxed it stays attached).
        energy: potential energy of the relaxed structure, eV.
        converged: True when the largest force on the optimised degrees of
            freedom fell below the requested ``fmax`` within ``steps``.
        steps: number of optimizer steps taken (0 when the input was already
            converged).
        fmax: final largest force, eV/Å: the maximum norm over the rows of the
            forces the optimizer sees, i.e. the atomic forces (after any
            constraint) and, with a cell filter, the filter's cell rows (for
            ASE's cell filters these are the virial scaled by the filter's
            ``exp_cell_factor``, by default divided by the number of atoms).
            This is the quantity compared with ``fmax`` to decide convergence.
        trajectory: path of the ASE trajectory file written, or None.
        final_structure: the relaxed structure as a pymatgen ``Structure``
            (``Molecule`` when not periodic), as upstream ``chgnet``'s
            ``StructOptimizer.relax`` returns it.
    """

    atoms: Atoms
    energy: float
    converged: bool
    steps: int
    fmax: float
    trajectory: Path | None = None

    @property
    def final_structure(self):
        return as_structure(self.atoms)


def _looks_like_slab(atoms: Atoms, gap: float = 5.0) -> bool:
    """Whether the atoms leave an empty gap of more than ``gap`` Å along one cell vector."""
    if len(atoms) == 0:
        return False
    frac = atoms.get_scaled_positions(wrap=True)
    lengths = atoms.cell.lengths()
    for k in range(3):
        s = np.sort(frac[:, k])
        widest = max(np.max(np.diff(s)) if len(s) > 1 else 0.0, 1.0 - s[-1] + s[0])
        if widest * lengths[k] > gap:
            return True
    return False


def available_optimizers() -> dict[str, type]:
    """ASE optimizers :func:`relax` accepts by name: ``{name: class}`` of every
    :class:`ase.optimize.optimize.Optimizer` subclass exported by :mod:`ase.optimize`
    (FIRE, FIRE2, BFGS, LBFGS, BFGSLineSearch, LBFGSLineSearch, MDMin, ...)."""
    import ase.optimize
    from ase.optimize.optimize import Optimizer

    return {
        name: obj
        for name, obj in sorted(vars(ase.optimize).items())
        if inspect.isclass(obj) and issubclass(obj, Optimizer) and obj is not Optimizer
    }


def _optimizer_class(optimizer: str | type) -> type:
    from ase.optimize.optimize import Optimizer

    if inspect.isclass(optimizer) and issubclass(optimizer, Optimizer):
        return optimizer
    options = available_optimizers()
    if isinstance(optimizer, str):
        if optimizer in options:
            return options[optimizer]
        by_lower = {name.lower(): cls for name, cls in options.items()}
        if optimizer.lower() in by_lower:
            return by_lower[optimizer.lower()]
    raise WorkflowError(
        f"unknown optimizer {optimizer!r}: expected the name of an ASE optimizer, one of "
        f"{', '.join(options)} (or an ase.optimize.optimize.Optimizer subclass)"
    )


def _cell_filter_class(cell_filter: str | type | None) -> type | None:
    import ase.filters

    if cell_filter is None:
        return None
    if inspect.isclass(cell_filter) and issubclass(cell_filter, ase.filters.Filter):
        return cell_filter
    if isinstance(cell_filter, str) and cell_filter in CELL_FILTERS:
        return getattr(ase.filters, cell_filter)
    raise WorkflowError(
        f"unknown cell_filter {cell_filter!r}: expected one of {', '.join(CELL_FILTERS)} "
        "(from ase.filters) or None to relax the atomic positions only"
    )


def relax(
    atoms: Atoms,
    fmax: float = 0.02,
    steps: int = 1000,
    optimizer: str | type = "FIRE",
    cell_filter: str | type | None = "FrechetCellFilter",
    fix_symmetry: bool = False,
    trajectory: str | os.PathLike | None = None,
    model: str | torch.nn.Module | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    logfile: str | IO | None = None,
) -> RelaxResult:
    """Relax atomic positions (and the cell, with a cell filter) of a copy of ``atoms``.

    Args:
        atoms: ASE Atoms or a pymatgen Structure with N atoms. It is not
            modified: a copy is relaxed.
        fmax: convergence threshold on the largest force, eV/Å (> 0). With a
            cell filter the filter's cell rows count too (see
            :attr:`RelaxResult.fmax`).
        steps: maximum number of optimizer steps (>= 0).
        optimizer: name of an ASE optimizer (case-insensitive; see
            :func:`available_optimizers`) or an ASE ``Optimizer`` subclass.
        cell_filter: ``"FrechetCellFilter"`` (default, as ``chgnet``'s
            ``StructOptimizer``), ``"ExpCellFilter"``, ``"UnitCellFilter"``, an
            :class:`ase.filters.Filter` subclass, or None to keep the cell
            fixed. A cell filter needs a fully periodic structure.
        fix_symmetry: keep the space group of the input (within spglib's
            ``symprec=0.01``) by adding :class:`ase.constraints.FixSymmetry`.
        trajectory: path of an ASE trajectory file (``.traj``) to write every
            step to (the unit cell atoms with energy, forces, stress); written
            to a temporary name and renamed once the relaxation finishes.
        model: None to use the calculator attached to ``atoms`` (or, when none
            is attached, a :class:`~crossfunctional.calculators.CrossFunctionalCalculator`
            with the default model ``"chgnet-r2scan"``); otherwise a model name,
            file path or loaded module for a new ``CrossFunctionalCalculator``.
        device: torch device of a calculator made here (``"cpu"``, ``"cuda"``).
        dtype: ``"float32"`` or ``"float64"`` for a calculator made here.
        logfile: the optimizer's log: None (default, silent), ``"-"`` for
            standard output, a file name or an open file.

    Returns:
        :class:`RelaxResult` with the relaxed copy, its energy (eV), the
        convergence flag, the number of steps, the final largest force (eV/Å)
        and the trajectory path.

    Raises:
        crossfunctional.errors.WorkflowError: empty structure, ``fmax`` <= 0, negative ``steps``, unknown
            optimizer or cell filter name (the message lists the options), or a
            cell filter asked for a structure that is not periodic in all three
            directions.
        crossfunctional.models.ModelError: unknown model name or unreadable
            model file.
        crossfunctional.neighbors.StructureError: a structure the model cannot
            evaluate (unknown element, atoms closer than 0.5 Å, NaN, ...).
    """
    atoms = as_atoms(atoms)
    if len(atoms) == 0:
        raise WorkflowError("atoms is empty: nothing to relax")
    if not fmax > 0:
        raise WorkflowError(f"fmax must be a positive force in eV/Å, got {fmax!r}")
    if int(steps) != steps or steps < 0:
        raise WorkflowError(f"steps must be a non-negative integer, got {steps!r}")
    opt_class = _optimizer_class(optimizer)
    filter_class = _cell_filter_class(cell_filter)
    if filter_class is not None and not atoms.pbc.all():
        raise WorkflowError(
            f"cell_filter {getattr(filter_class, '__name__', cell_filter)!r} needs a structure periodic in "
            f"all three directions (stress is defined only there), got pbc={atoms.pbc.tolist()}; "
            "pass cell_filter=None (command line: --cell-filter none) to relax the atomic positions only"
        )
    if filter_class is not None and _looks_like_slab(atoms):
        log.warning(
            "the cell has a vacuum gap: relaxing the cell of a slab also shrinks the vacuum; keep that direction "
            "fixed with a mask, e.g. FrechetCellFilter(atoms, mask=[1, 1, 0, 0, 0, 1]) for vacuum along z, or "
            "relax positions only (cell_filter=None, --cell-filter none)"
        )

    work = atoms.copy()
    if model is not None:
        from crossfunctional.calculators import CrossFunctionalCalculator

        work.calc = CrossFunctionalCalculator(model=model, device=device, dtype=dtype)
    elif atoms.calc is not None:
        work.calc = atoms.calc
    else:
        from crossfunctional.calculators import CrossFunctionalCalculator

        work.calc = CrossFunctionalCalculator(device=device, dtype=dtype)

    if fix_symmetry:
        from ase.constraints import FixSymmetry

        work.set_constraint([*work.constraints, FixSymmetry(work)])

    target = work if filter_class is None else filter_class(work)

    def run(traj_file: Path | None) -> tuple[bool, int]:
        opt = opt_class(target, logfile=logfile)
        writer = None
        if traj_file is not None:
            from ase.io.trajectory import Trajectory

            writer = Trajectory(str(traj_file), "w", atoms=work)
            opt.attach(writer.write, interval=1)
        try:
            with warnings.catch_warnings():
                # scipy's logm (FrechetCellFilter) warns about its accuracy at every step; the filter checks its result
                warnings.filterwarnings("ignore", message=".*logm result may be inaccurate.*")
                converged = bool(opt.run(fmax=fmax, steps=int(steps)))
        finally:
            if writer is not None:
                writer.close()
            if hasattr(opt, "close"):
                opt.close()
        return converged, int(opt.nsteps)

    traj_path = None
    if trajectory is not None:
        traj_path = Path(trajectory)
        with atomic_path(traj_path) as tmp:
            converged, nsteps = run(tmp)
    else:
        converged, nsteps = run(None)

    forces = target.get_forces()
    final_fmax = float((forces**2).sum(axis=1).max() ** 0.5)
    energy = float(work.get_potential_energy())
    return RelaxResult(
        atoms=work, energy=energy, converged=converged, steps=nsteps, fmax=final_fmax, trajectory=traj_path
    )
