"""The phonon workflow: :func:`phonons` (pre-relaxation, supercell and
displacements with phonopy, force evaluation, force constants, band structure,
mesh, DOS, thermal properties, imaginary-mode check, non-analytical
correction), :func:`evaluate_forces`, and the size and memory guard.

The memory guard (:func:`memory_estimate`) counts phonopy's force constants
and the model evaluation of the displaced supercells that are evaluated
together: a calculator with ``predict_batch`` gets up to ``batch_size`` of them
per call, and the batch is made smaller when the limit (``max_memory_gb``, by
default the memory available) would otherwise be exceeded.

Sources:
    A. Togo, L. Chaput, T. Tadano, I. Tanaka, J. Phys.: Condens. Matter 35,
    353001 (2023); A. Togo, J. Phys. Soc. Jpn. 92, 012001 (2023) (phonopy).
    X. Gonze, C. Lee, Phys. Rev. B 55, 10355 (1997) (non-analytical correction).
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from crossfunctional.io import as_atoms
from crossfunctional.models import DEFAULT_MODEL
from crossfunctional.workflows.phonons.cells import (
    DEFAULT_MIN_LENGTH,
    PhononError,
    _as_supercell_matrix,
    _phonopy_labels,
    _to_ase_atoms,
    _to_phonopy_atoms,
    mesh_for_length,
    perpendicular_widths,
    seekpath_band_path,
    supercell_matrix_for_length,
)
from crossfunctional.workflows.phonons.results import _R, PhononResult, PhononSummary, _imaginary_modes, _locate

if TYPE_CHECKING:  # pragma: no cover
    from phonopy import Phonopy

    from crossfunctional.workflows.relax import RelaxResult

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_IMAGINARY_THRESHOLD",
    "DEFAULT_MAX_ATOMS",
    "evaluate_forces",
    "memory_estimate",
    "phonons",
]

log = logging.getLogger(__name__)

#: Largest supercell (atoms) accepted unless ``max_atoms`` says otherwise.
DEFAULT_MAX_ATOMS = 2000
#: Frequencies below this (THz) count as imaginary (negative = imaginary, phonopy's sign).
DEFAULT_IMAGINARY_THRESHOLD = -0.05
#: Displaced supercells per ``predict_batch`` call, unless the memory limit asks for fewer.
DEFAULT_BATCH_SIZE = 8
#: Peak memory of one float64 CHGNet force evaluation per directed edge, bytes
#: (measured ~50 kB/edge on Si supercells of 64-512 atoms; rounded up).
_BYTES_PER_EDGE = 40_000
#: Peak memory per angle (pair of short bonds, < 3 Å, at one atom), bytes
_BYTES_PER_ANGLE = 35_000
BOND_GRAPH_CUTOFF = 3.0  # Å, CHGNet's short bonds, between which angles are built


def _require_phonopy() -> None:
    try:
        import phonopy  # noqa: F401
        import seekpath  # noqa: F401
    except ImportError as exc:
        raise PhononError(
            f"phonon calculations need the optional packages phonopy and seekpath ({exc.name} is missing): "
            'pip install "crossfunctional[phonons]"'
        ) from None


def evaluate_forces(
    calculator, supercells: Sequence[Atoms], progress: bool = True, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """Forces on each supercell with ``calculator``.

    This is the single place where displaced supercells are evaluated. A
    calculator with a method ``predict_batch(frames)`` that returns one dict
    per frame with ``"forces"`` ([N, 3] eV/Å) gets the supercells
    ``batch_size`` at a time (for a graph network, typically as one batched
    graph); any other ASE calculator is called one supercell at a time
    (``atoms.calc = calculator; atoms.get_forces()``).

    Args:
        calculator: an ASE calculator (for phonons, float64).
        supercells: S structures of N atoms each.
        progress: show a tqdm progress bar on stderr.
        batch_size: supercells per ``predict_batch`` call (>= 1).

    Returns:
        [S, N, 3] float64 forces, eV/Å.

    Raises:
        PhononError: ``batch_size`` < 1; ``predict_batch`` returned a number of
            results different from the number of frames it was given.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise PhononError(f"batch_size must be a positive number of supercells, got {batch_size!r}")
    predict_batch = getattr(calculator, "predict_batch", None)
    out = []
    with tqdm(total=len(supercells), desc="displaced supercells", unit="cell", disable=not progress, leave=False) as bar:
        if callable(predict_batch):
            for start in range(0, len(supercells), batch_size):
                chunk = list(supercells[start : start + batch_size])
                results = predict_batch(chunk)
                if len(results) != len(chunk):
                    raise PhononError(
                        f"{type(calculator).__name__}.predict_batch returned {len(results)} results "
                        f"for {len(chunk)} frames"
                    )
                out.extend(np.array(r["forces"], dtype=np.float64) for r in results)
                bar.update(len(chunk))
        else:
            for sc in supercells:
                work = sc.copy()
                work.calc = calculator
                out.append(np.array(work.get_forces(), dtype=np.float64))
                work.calc = None
                bar.update(1)
    return np.stack(out) if out else np.zeros((0, 0, 3))


def _check_crystal(atoms: Atoms) -> None:
    if not isinstance(atoms, Atoms):
        raise TypeError(f"atoms must be an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise PhononError("empty structure: no atoms")
    volume = abs(np.linalg.det(np.asarray(atoms.cell.array, dtype=float)))
    if volume < 1e-6:
        raise PhononError(
            f"{atoms.get_chemical_formula()} has no cell (volume {volume:.3g} Å^3): phonons need a crystal "
            "periodic in three directions; for the vibrations of a molecule use ase.vibrations.Vibrations"
        )
    if not np.all(atoms.pbc):
        raise PhononError(
            f"{atoms.get_chemical_formula()} is periodic only along {atoms.pbc.tolist()}: phonons need a crystal "
            "periodic in all three directions (set atoms.pbc = True for a bulk crystal)"
        )


def _available_memory_bytes() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_estimate(unit: Atoms, n_cells: int, cutoff: float | None, batch: int = 1) -> float:
    """Estimated peak memory of a phonon calculation, bytes.

    Two parts. phonopy's full force constants, [N_s, N_s, 3, 3] float64 for
    the N_s = ``n_cells · len(unit)`` atoms of the supercell, counted twice (a
    working copy): ``2 · 9 · 8 · N_s²``. And, for a model with a neighbour
    cutoff, the float64 force evaluation of ``batch`` displaced supercells
    together: ``batch · N_s · (E · 40 kB + A · 35 kB)``, with E the directed
    edges per atom of the unit cell within ``cutoff`` and A the angles per atom
    (ordered pairs of bonds shorter than 3 Å at an atom). The two constants
    were fitted to the measured peak of CHGNet on Si and MgO supercells
    (about 29 kB per edge and 26 kB per angle) and rounded up by a third.
    A batched graph of B supercells has B times the edges of one, hence the
    factor; a calculator that splits a batch into smaller graphs needs less,
    so this is an upper bound.

    Args:
        unit: the unit cell (N atoms, periodic).
        n_cells: unit cells in the supercell, ``det`` of the supercell matrix.
        cutoff: Å, the model's neighbour cutoff (``calculator.cutoff``), or
            None for a calculator whose memory is not modelled (only the force
            constants count then).
        batch: displaced supercells evaluated together (0 counts the force
            constants alone).

    Returns:
        Bytes.
    """
    n_super = n_cells * len(unit)
    fc = 2.0 * n_super**2 * 9 * 8
    if cutoff is None or batch == 0:
        return fc
    import numpy as np

    from crossfunctional.neighbors import neighbor_list

    edges = neighbor_list(unit, float(cutoff))
    edges_per_atom = edges.edge_index.shape[1] / len(unit)
    short = np.linalg.norm(edges.edge_vectors, axis=1) < BOND_GRAPH_CUTOFF
    per_center = np.bincount(edges.edge_index[0][short], minlength=len(unit))
    angles_per_atom = float((per_center * (per_center - 1)).sum()) / len(unit)
    return fc + batch * n_super * (edges_per_atom * _BYTES_PER_EDGE + angles_per_atom * _BYTES_PER_ANGLE)


def _batch_for_memory(unit: Atoms, n_cells: int, cutoff: float | None, largest: int, limit: float | None) -> int:
    """The most displaced supercells, at most ``largest``, whose evaluation
    together fits in ``limit`` bytes by :func:`memory_estimate` (``largest``
    when the limit is unknown); 0 when not even one fits."""
    if limit is None:
        return largest
    fixed = memory_estimate(unit, n_cells, cutoff, batch=0)
    per_supercell = memory_estimate(unit, n_cells, cutoff, batch=1) - fixed
    if fixed + per_supercell > limit:
        return 0
    if per_supercell <= 0:
        return largest
    return int(min(largest, (limit - fixed) // per_supercell))


def _relaxed(
    atoms: Atoms, calculator, fmax: float, steps: int, optimizer: str, relax_cell: bool, symprec: float, logfile
) -> tuple[Atoms, RelaxResult]:
    from ase.spacegroup.symmetrize import refine_symmetry

    from crossfunctional.workflows.relax import relax as relax_structure

    work = atoms.copy()
    work.set_constraint()
    refine_symmetry(work, symprec=symprec, verbose=False)
    work.calc = calculator
    res = relax_structure(
        work,
        fmax=fmax,
        steps=steps,
        optimizer=optimizer,
        cell_filter="FrechetCellFilter" if relax_cell else None,
        fix_symmetry=True,
        logfile=logfile,
    )
    if not res.converged:
        raise PhononError(
            f"{atoms.get_chemical_formula()} did not relax: largest force {res.fmax:.2e} eV/Å after {res.steps} "
            f"{optimizer} steps (fmax = {fmax:g} eV/Å was asked); phonons of a structure away from a minimum are "
            "not meaningful. Raise relax_steps, loosen fmax, start from a better structure, or pass relax=False "
            "for a structure that is already relaxed"
        )
    relaxed = res.atoms.copy()
    relaxed.set_constraint()
    relaxed.calc = None
    v0, v1 = atoms.get_volume(), relaxed.get_volume()
    if abs(v1 / v0 - 1) > 0.25:
        log.warning("relaxation changed the volume of %s by %+.0f %%", atoms.get_chemical_formula(), 100 * (v1 / v0 - 1))
    return relaxed, res


def _model_label(calculator) -> str:
    """The model's name from a crossfunctional calculator's metadata, else the calculator's class name."""
    meta = getattr(calculator, "metadata", None)
    if isinstance(meta, dict) and meta.get("model_name"):
        return str(meta["model_name"])
    return type(calculator).__name__


def _formula_unit(atoms: Atoms) -> tuple[str, int]:
    from ase.formula import Formula

    reduced, n_fu = Formula(atoms.get_chemical_formula()).reduce()
    return str(reduced), len(atoms) // n_fu


def phonons(
    atoms: Atoms,
    model: str | Any = DEFAULT_MODEL,
    calculator=None,
    *,
    device: str = "cpu",
    relax: bool = True,
    fmax: float = 1e-4,
    relax_steps: int = 1000,
    optimizer: str = "BFGS",
    relax_cell: bool = True,
    relax_symprec: float = 0.01,
    supercell_matrix: Any = None,
    supercell_min_length: float = DEFAULT_MIN_LENGTH,
    displacement: float = 0.01,
    is_plusminus: str | bool = "auto",
    primitive_matrix: Any = "auto",
    symprec: float = 1e-5,
    symmetrize_fc: bool = True,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    max_memory_gb: float | None = None,
    mesh_length: float = 80.0,
    band_npoints: int = 51,
    t_min: float = 0.0,
    t_max: float = 1000.0,
    t_step: float = 10.0,
    imaginary_threshold: float = DEFAULT_IMAGINARY_THRESHOLD,
    born: str | os.PathLike | dict | None = None,
    progress: bool = True,
    logfile: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PhononResult:
    """Harmonic phonons of a crystal by finite displacements with phonopy.

    Steps: (1) unless ``relax=False``, symmetrise the structure (spglib,
    ``relax_symprec``) and relax cell and positions to ``fmax`` with ASE's
    FixSymmetry and FrechetCellFilter (:func:`crossfunctional.workflows.relax.relax`);
    (2) pick the supercell (:func:`supercell_matrix_for_length`, or
    ``supercell_matrix``), check its size and memory, let phonopy generate the
    symmetry-reduced displacements; (3) evaluate the forces on every displaced
    supercell (:func:`evaluate_forces`); (4) force constants (symmetrised unless
    ``symmetrize_fc=False``), band structure along the seekpath path, total DOS
    and thermal properties on a Γ-centred mesh chosen by ``mesh_length``;
    (5) search the band path and the mesh for frequencies below
    ``imaginary_threshold`` and check the acoustic modes at Γ;
    (6) with ``born``, the non-analytical correction.

    Args:
        atoms: the unit cell (N atoms, periodic in 3 directions). Not modified.
        model: model name or file for a float64 :class:`CrossFunctionalCalculator`
            (ignored when ``calculator`` is given).
        calculator: any ASE calculator with forces (and stress, to relax the
            cell). For meaningful force constants it should be float64; a
            float32 crossfunctional calculator is accepted with a warning.
        device: torch device for a calculator made here.
        relax: pre-relax (True) or use ``atoms`` as given (False).
        fmax: eV/Å, convergence of the pre-relaxation (atomic forces and the
            cell filter's virial rows).
        relax_steps: maximum optimizer steps.
        optimizer: ASE optimizer name (BFGS converges tight tolerances in few steps
            near a minimum).
        relax_cell: relax the cell too (FrechetCellFilter) or positions only.
        relax_symprec: Å, tolerance to find and impose the symmetry before relaxing.
        supercell_matrix: int, 3 ints or 3x3 (phonopy's convention) instead of the search.
        supercell_min_length: Å, minimum perpendicular width of the supercell.
        displacement: Å, finite displacement.
        is_plusminus: phonopy's choice of ± displacements ("auto", True, False).
        primitive_matrix: phonopy's primitive matrix ("auto" resolved here
            with phonopy's guess, "P", or a 3x3 matrix).
        symprec: Å, phonopy's symmetry tolerance.
        symmetrize_fc: apply phonopy's translational/permutation symmetrisation.
        max_atoms: largest supercell accepted.
        max_memory_gb: memory limit for the run (default: the memory available now).
        mesh_length: Å, the mesh has ``ceil(mesh_length · |b_i|)`` points along b_i.
        band_npoints: q-points per band-path segment.
        t_min, t_max, t_step: K, temperatures of the thermal properties.
        imaginary_threshold: THz; lower frequencies count as imaginary.
        born: a phonopy ``BORN`` file (path) or phonopy ``nac_params`` dict
            (``born`` [N_prim, 3, 3] e, ``dielectric`` [3, 3], ``factor``).
        progress: progress bar over the displaced supercells.
        logfile: the optimizer's log (None silent, "-" stdout).
        batch_size: the most displaced supercells evaluated together by a
            calculator with a ``predict_batch`` method (:func:`evaluate_forces`);
            fewer when :func:`memory_estimate` for the batch would exceed the
            memory limit. Other calculators take one supercell at a time.

    Returns:
        :class:`PhononResult`.

    Raises:
        TypeError: ``atoms`` is not an ase.Atoms.
        PhononError: not periodic in 3 directions or no cell (a molecule); the
            structure does not relax within ``relax_steps``; a supercell over
            ``max_atoms`` or whose evaluation does not fit in the memory limit;
            a bad ``supercell_matrix``; ``batch_size`` < 1;
            an unreadable BORN file; phonopy or seekpath not installed.
        crossfunctional.models.ModelError, crossfunctional.neighbors.StructureError:
            as the calculator raises them.
    """
    atoms = as_atoms(atoms)
    _check_crystal(atoms)
    _require_phonopy()
    if not displacement > 0:
        raise PhononError(f"displacement must be a positive length in Å, got {displacement!r}")
    if not batch_size >= 1:
        raise PhononError(f"batch_size must be a positive number of supercells, got {batch_size!r}")
    from phonopy import Phonopy
    from phonopy.structure.cells import guess_primitive_matrix

    if calculator is None:
        from crossfunctional.calculators import CrossFunctionalCalculator

        calculator = CrossFunctionalCalculator(model=model, device=device, dtype="float64")
    else:
        dtype = getattr(calculator, "dtype", None)
        if dtype is not None and "float32" in str(dtype):
            log.warning(
                "the calculator runs in float32: finite-difference force constants need float64 "
                "(CrossFunctionalCalculator(..., dtype='float64')); expect noisy low frequencies"
            )
    label = _model_label(calculator)

    # (1) pre-relaxation
    relax_result = None
    if relax:
        unit, relax_result = _relaxed(atoms, calculator, fmax, relax_steps, optimizer, relax_cell, relax_symprec, logfile)
    else:
        unit = atoms.copy()
        unit.set_constraint()
        unit.calc = None
    probe = unit.copy()
    probe.calc = calculator
    residual = float(np.linalg.norm(probe.get_forces(), axis=1).max())
    if not relax and residual > 1e-3:
        log.warning(
            "relax=False but the largest force on the unit cell is %.2e eV/Å: the force constants include the "
            "response to a structure away from equilibrium",
            residual,
        )

    # (2) supercell and displacements
    unit_ph = _to_phonopy_atoms(unit)
    if supercell_matrix is not None:
        smat = _as_supercell_matrix(supercell_matrix)
    else:
        import spglib

        sym = spglib.get_symmetry(
            (np.array(unit.cell.array), unit.get_scaled_positions(), unit.get_atomic_numbers()), symprec=symprec
        )
        rotations = None if sym is None else sym["rotations"]
        smat = supercell_matrix_for_length(unit.cell.array, supercell_min_length, rotations)
    n_cells = int(round(np.linalg.det(smat)))
    n_super = n_cells * len(unit)
    if n_super > max_atoms:
        raise PhononError(
            f"the supercell would have {n_super} atoms ({n_cells} unit cells of {len(unit)}; matrix "
            f"{smat.tolist()}), more than max_atoms = {max_atoms}: lower supercell_min_length "
            f"(now {supercell_min_length:g} Å), start from the primitive cell, give supercell_matrix, "
            "or raise max_atoms"
        )
    cutoff = getattr(calculator, "cutoff", None)
    cutoff = None if cutoff is None else float(cutoff)
    largest = batch_size if callable(getattr(calculator, "predict_batch", None)) else 1
    limit = max_memory_gb * 1e9 if max_memory_gb is not None else _available_memory_bytes()
    batch = _batch_for_memory(unit, n_cells, cutoff, largest, limit)
    if batch == 0:
        need = memory_estimate(unit, n_cells, cutoff, batch=1)
        raise PhononError(
            f"the {n_super}-atom supercell needs about {need / 1e9:.3g} GB of memory, more than the "
            f"{limit / 1e9:.3g} GB {'allowed (max_memory_gb)' if max_memory_gb is not None else 'available'}: "
            "use a smaller supercell"
        )
    if batch < largest:
        log.info(
            "%d displaced supercells at a time instead of %d, to stay within %.3g GB of memory",
            batch,
            largest,
            limit / 1e9,
        )
    if isinstance(primitive_matrix, str) and primitive_matrix == "auto":
        pmat = guess_primitive_matrix(unit_ph, symprec=symprec)
    else:
        pmat = primitive_matrix
    ph = Phonopy(unit_ph, supercell_matrix=smat, primitive_matrix=pmat, symprec=symprec)
    ph.generate_displacements(distance=displacement, is_plusminus=is_plusminus)
    supercells = [_to_ase_atoms(sc) for sc in ph.supercells_with_displacements]

    # (3) forces
    forces = evaluate_forces(calculator, supercells, progress=progress, batch_size=batch)
    drift = float(np.linalg.norm(forces.mean(axis=1), axis=1).max()) if len(forces) else 0.0

    # (4) force constants, NAC, band structure, mesh, DOS, thermal properties
    ph.forces = forces
    ph.produce_force_constants()
    if symmetrize_fc:
        ph.symmetrize_force_constants()
    if born is not None:
        ph.nac_params = _nac_params(born, ph, symprec)

    prim = ph.primitive
    segments, seg_labels, connections, points = seekpath_band_path(
        prim.cell, prim.scaled_positions, prim.numbers, npoints=band_npoints, symprec=symprec
    )
    ph.run_band_structure(segments, path_connections=connections, labels=_phonopy_labels(seg_labels, connections))
    bs = ph.band_structure
    band = {
        "labels": seg_labels,
        "connections": connections,
        "points": {k: v.tolist() for k, v in points.items()},
        "qpoints": [np.array(q) for q in bs.qpoints],
        "distances": [np.array(d) for d in bs.distances],
        "frequencies": [np.array(f) for f in bs.frequencies],
    }
    band_points = {k: np.asarray(v) for k, v in band["points"].items()}

    mesh = mesh_for_length(prim.cell, mesh_length)
    ph.run_mesh(mesh, is_gamma_center=True)
    mesh_q = np.array(ph.mesh.qpoints)
    mesh_f = np.array(ph.mesh.frequencies)
    ph.run_total_dos()
    dos = {"frequency": np.array(ph.total_dos.frequency_points), "dos": np.array(ph.total_dos.dos)}
    temps = np.arange(t_min, t_max + 0.5 * t_step, t_step)
    # the three zero-frequency acoustic modes at Γ have zero weight in the
    # Brillouin-zone integral; leave them out where phonopy offers the option
    exclude = "exclude_gamma_acoustic" in inspect.signature(ph.run_thermal_properties).parameters
    ph.run_thermal_properties(temperatures=temps, **({"exclude_gamma_acoustic": True} if exclude else {}))
    tp = ph.thermal_properties
    fu, atoms_per_fu = _formula_unit(unit)
    n_prim = len(prim)
    z = n_prim / atoms_per_fu
    thermal = {
        "temperature": np.array(tp.temperatures),
        "free_energy_fu": np.array(tp.free_energy) / z,
        "entropy_fu": np.array(tp.entropy) / z,
        "heat_capacity_fu": np.array(tp.heat_capacity) / z,
        "free_energy_atom": np.array(tp.free_energy) / n_prim,
        "entropy_atom": np.array(tp.entropy) / n_prim,
        "heat_capacity_atom": np.array(tp.heat_capacity) / n_prim,
        "formula_unit": fu,
        "atoms_per_formula_unit": atoms_per_fu,
    }

    # (5) acoustic modes at Γ, imaginary modes
    ph.run_qpoints([[0.0, 0.0, 0.0]])
    gamma = np.array(ph.qpoints.frequencies[0])
    acoustic = sorted(gamma, key=abs)[:3]
    rot_recip = np.array(ph.primitive_symmetry.pointgroup_operations, dtype=float)
    modes, n_imag = _imaginary_modes(band, mesh_q, mesh_f, imaginary_threshold, rot_recip)
    all_q = np.concatenate([*band["qpoints"], mesh_q])
    all_min = np.concatenate([f.min(axis=1) for f in band["frequencies"]] + [mesh_f.min(axis=1)])
    k = int(np.argmin(all_min))
    n_band = sum(len(q) for q in band["qpoints"])
    seg = None
    if k < n_band:
        lengths = np.cumsum([len(q) for q in band["qpoints"]])
        seg = seg_labels[int(np.searchsorted(lengths, k, side="right"))]
    where = _locate(all_q[k], band_points, rot_recip, seg)
    max_f = float(max(mesh_f.max(), *(f.max() for f in band["frequencies"])))

    idx300 = np.argmin(np.abs(thermal["temperature"] - 300.0)) if len(temps) else None
    cv_at = lambda i: float(thermal["heat_capacity_atom"][i])  # noqa: E731
    summary = PhononSummary(
        formula=unit.get_chemical_formula(),
        model=label,
        n_atoms_unitcell=len(unit),
        n_atoms_primitive=n_prim,
        n_atoms_supercell=n_super,
        supercell_matrix=smat.tolist(),
        supercell_widths=[float(w) for w in perpendicular_widths(np.array(ph.supercell.cell))],
        displacement=float(displacement),
        n_displacements=len(supercells),
        relaxed=bool(relax),
        relaxed_cell=bool(relax and relax_cell),
        relax_steps=None if relax_result is None else int(relax_result.steps),
        relax_fmax=None if relax_result is None else float(relax_result.fmax),
        residual_force=residual,
        max_force_drift=drift,
        lattice=np.array(unit.cell.array).tolist(),
        mesh=[int(x) for x in mesh],
        nac=born is not None,
        min_frequency=float(all_min[k]),
        min_frequency_qpoint=[float(x) for x in all_q[k]],
        min_frequency_where=where,
        max_frequency=max_f,
        acoustic_gamma=[float(x) for x in acoustic],
        imaginary_threshold=float(imaginary_threshold),
        has_imaginary=n_imag > 0,
        n_imaginary_qpoints=n_imag,
        imaginary_modes=modes,
        t_max=float(temps[-1]) if len(temps) else float(t_max),
        heat_capacity_300K=None if idx300 is None else cv_at(idx300),
        heat_capacity_tmax=cv_at(-1) if len(temps) else None,
        dulong_petit_ratio=cv_at(-1) / (3 * _R) if len(temps) and temps[-1] > 0 else None,
    )
    if summary.has_imaginary:
        log.warning("%s: imaginary modes down to %.3f THz (%s)", summary.formula, modes[0].frequency, modes[0].where)
    # leave the band structure as the last phonopy run, for phonopy's own plotting
    ph.run_band_structure(segments, path_connections=connections, labels=_phonopy_labels(seg_labels, connections))
    return PhononResult(
        phonopy=ph,
        summary=summary,
        atoms=unit,
        band=band,
        dos=dos,
        thermal=thermal,
        forces=forces,
        relaxation=relax_result,
    )


def _nac_params(born: str | os.PathLike | dict, ph: Phonopy, symprec: float) -> dict:
    """Non-analytical-correction parameters from a BORN file or a dict."""
    if isinstance(born, dict):
        params = dict(born)
        if "born" not in params or "dielectric" not in params:
            raise PhononError("born dict needs the keys 'born' ([N_prim, 3, 3]) and 'dielectric' ([3, 3])")
        params["born"] = np.asarray(params["born"], dtype=float)
        params["dielectric"] = np.asarray(params["dielectric"], dtype=float)
        if params["born"].shape != (len(ph.primitive), 3, 3) or params["dielectric"].shape != (3, 3):
            raise PhononError(
                f"born has shape {params['born'].shape} and dielectric {params['dielectric'].shape}; expected "
                f"({len(ph.primitive)}, 3, 3) and (3, 3)"
            )
        return params
    from phonopy.file_IO import parse_BORN

    path = Path(born)
    if not path.is_file():
        raise PhononError(f"BORN file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parse_BORN(ph.primitive, symprec=symprec, filename=path)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PhononError(f"cannot read {path} as a phonopy BORN file ({reason})") from None

