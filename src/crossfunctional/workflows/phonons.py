"""Harmonic phonons with phonopy: band structure, DOS, thermal properties and
an imaginary-mode check, for any ASE calculator (by default the r2SCAN CHGNet).

The finite-displacement (frozen-phonon) method: a tight, symmetry-keeping
pre-relaxation in float64; a supercell whose perpendicular widths all reach a
minimum length; phonopy's symmetry-reduced set of displaced supercells, each
evaluated with the calculator; force constants; then the dynamical matrix along
the seekpath band path, on a Γ-centred mesh (DOS, thermal properties) and a
search for imaginary frequencies.

Python::

    from crossfunctional.workflows.phonons import phonons
    result = phonons(atoms, model="chgnet-r2scan")
    print(result.summary.text())
    result.phonopy.run_qpoints([[0.5, 0, 0.5]])      # phonopy as usual, THz
    result.write("si_phonons/")

Command line::

    crossfunctional phonons Si.cif --supercell-min-length 15 -o si_phonons/

Units: Å, eV, eV/Å (ASE); frequencies in THz (phonopy's ν, not ω; imaginary
frequencies are reported as negative numbers, phonopy's convention); thermal
properties per mole of formula units and per mole of atoms (kJ/mol, J/K/mol).

Polar materials: the model has no Born effective charges or dielectric tensor,
so the LO–TO splitting near Γ is absent unless a phonopy ``BORN`` file is passed
(``born=``), which is then applied as the non-analytical correction (phonopy's
default Gonze–Lee dipole–dipole scheme). That scheme assumes the supercell
force constants contain the dipole–dipole interaction and subtracts it before
adding its Ewald sum; a short-ranged model's force constants never contained
it, so away from Γ the corrected LO branch can dip and wiggle (visible along
Γ–X in ``examples/phonons/mgo/mgo_band_structure.png``). The splitting at Γ
itself is right for the given charges.

The finite displacement matters more for these models than for DFT: CHGNet's
energy surface for Si is strongly anharmonic on the 0.001–0.03 Å scale (see
``benchmarks/results/phonons/README.md``), so compare runs at the same
``displacement``.

phonopy and seekpath are an optional extra: ``pip install "crossfunctional[phonons]"``.
They are imported only when a phonon calculation runs, so this module (and the
command line) loads without them.

Sources:
    A. Togo, L. Chaput, T. Tadano, I. Tanaka, J. Phys.: Condens. Matter 35,
    353001 (2023); A. Togo, J. Phys. Soc. Jpn. 92, 012001 (2023) (phonopy).
    Y. Hinuma, G. Pizzi, Y. Kumagai, F. Oba, I. Tanaka, Comput. Mater. Sci. 128,
    140 (2017) (seekpath band paths).
    X. Gonze, C. Lee, Phys. Rev. B 55, 10355 (1997) (non-analytical correction).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from crossfunctional.errors import CrossFunctionalError
from crossfunctional.io import atomic_path, atomic_write
from crossfunctional.models import DEFAULT_MODEL

if TYPE_CHECKING:  # pragma: no cover
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    from crossfunctional.workflows.relax import RelaxResult

__all__ = [
    "DEFAULT_IMAGINARY_THRESHOLD",
    "DEFAULT_MAX_ATOMS",
    "DEFAULT_MIN_LENGTH",
    "ImaginaryMode",
    "PhononError",
    "PhononResult",
    "PhononSummary",
    "evaluate_forces",
    "mesh_for_length",
    "perpendicular_widths",
    "phonons",
    "plot_band_structure",
    "plot_dos",
    "seekpath_band_path",
    "supercell_matrix_for_length",
]

log = logging.getLogger(__name__)

#: Minimum perpendicular width of the supercell, Å.
DEFAULT_MIN_LENGTH = 15.0
#: Largest supercell (atoms) accepted unless ``max_atoms`` says otherwise.
DEFAULT_MAX_ATOMS = 2000
#: Frequencies below this (THz) count as imaginary (negative = imaginary, phonopy's sign).
DEFAULT_IMAGINARY_THRESHOLD = -0.05
#: Peak memory of one float64 CHGNet force evaluation per directed edge, bytes
#: (measured ~50 kB/edge on Si supercells of 64-512 atoms; rounded up).
_BYTES_PER_EDGE = 60_000
#: Reference kB: Boltzmann constant in J/K and Avogadro's number (CODATA 2018, exact).
_KB_J = 1.380649e-23
_NA = 6.02214076e23
_R = _KB_J * _NA  # J/K/mol


class PhononError(CrossFunctionalError, ValueError):
    """Input a phonon calculation cannot use: not a periodic crystal, a
    supercell beyond the size or memory limit, a structure that does not
    relax, an unreadable BORN file, a missing optional dependency."""


def _require_phonopy() -> None:
    try:
        import phonopy  # noqa: F401
        import seekpath  # noqa: F401
    except ImportError as exc:
        raise PhononError(
            f"phonon calculations need the optional packages phonopy and seekpath ({exc.name} is missing): "
            'pip install "crossfunctional[phonons]"'
        ) from None


# ----------------------------------------------------------------------------
# Geometry: supercells, meshes, band paths
# ----------------------------------------------------------------------------


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of a cell.

    Args:
        cell: [3, 3] (Å), lattice vectors as rows, or a stack [..., 3, 3].

    Returns:
        [3] (or [..., 3]) widths in Å: ``w_i = V / |a_j × a_k|`` for (i, j, k)
        cyclic, the height of the cell over the face spanned by the other two
        vectors. A sphere of diameter ``min(w)`` fits in the cell, so every
        periodic image of an atom is at least ``min(w)`` away from it.
    """
    cell = np.asarray(cell, dtype=float)
    a0, a1, a2 = cell[..., 0, :], cell[..., 1, :], cell[..., 2, :]
    crosses = np.stack([np.cross(a1, a2), np.cross(a2, a0), np.cross(a0, a1)], axis=-2)
    volume = np.abs(np.einsum("...i,...i->...", a0, crosses[..., 0, :]))
    return volume[..., None] / np.linalg.norm(crosses, axis=-1)


def _offsets() -> np.ndarray:
    grid = np.array(np.meshgrid(*([[-1, 0, 1]] * 9), indexing="ij")).reshape(9, -1).T
    return grid.reshape(-1, 3, 3)


def _keeps_symmetry(q: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """For a stack [K, 3, 3] of supercell matrices ``q`` (supercell vectors as
    columns, in unit-cell fractional coordinates): [K] bool, True where every
    rotation W maps the supercell lattice onto itself, i.e. Q⁻¹ W Q is integer."""
    qinv = np.linalg.inv(q)
    c = np.einsum("kij,rjl,klm->krim", qinv, rotations, q)
    return np.all(np.abs(c - np.rint(c)) < 1e-6, axis=(1, 2, 3))


def supercell_matrix_for_length(
    cell: np.ndarray,
    min_length: float = DEFAULT_MIN_LENGTH,
    rotations: np.ndarray | None = None,
) -> np.ndarray:
    """Smallest integer supercell whose perpendicular widths are all >= ``min_length``.

    The search: for cube edges ``s`` from ``min_length`` up to that of the
    plain diagonal solution, every integer matrix within ±1 (element by element)
    of ``s · cell⁻¹`` (the matrix that would make the supercell a cube of edge
    ``s``) is a candidate, together with the diagonal matrix
    ``diag(ceil(min_length / w_i))``. Among the candidates whose widths reach
    ``min_length``, the one with the fewest unit cells wins (ties: the larger
    smallest width, then the fewer non-zero elements). With ``rotations``,
    candidates that break the point group of the lattice are skipped
    (``n·I`` always keeps it, so a solution always exists). A cube is the
    shape with the largest smallest width for a given volume, hence the
    near-cubic candidates.

    Args:
        cell: [3, 3] Å, unit-cell vectors as rows.
        min_length: Å; <= 0 returns the identity.
        rotations: optional [R, 3, 3] int, the crystal's rotations in the
            unit cell's fractional coordinates (spglib's ``rotations``).

    Returns:
        [3, 3] int, phonopy's ``supercell_matrix`` convention: the supercell
        vectors as columns are ``(a b c) @ M``, i.e. as rows ``M.T @ cell``.
        ``det(M) > 0`` unit cells.

    Raises:
        PhononError: a degenerate cell.
    """
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    if volume < 1e-6:
        raise PhononError("the cell has zero volume: no supercell can be built")
    if min_length <= 0:
        return np.eye(3, dtype=int)
    widths = perpendicular_widths(cell)
    n_diag = np.maximum(1, np.ceil(min_length / widths - 1e-9)).astype(int)
    rot = None if rotations is None else np.asarray(rotations, dtype=float)

    n_iso = int(np.ceil(min_length / widths.min() - 1e-9))
    fallback = [np.diag(n_diag), n_iso * np.eye(3, dtype=int)]
    best_det = int(np.prod(n_diag))
    inv = np.linalg.inv(cell)
    offsets = _offsets()
    found = [np.stack(fallback)]
    s_max = (best_det * volume) ** (1.0 / 3.0) * 1.05
    for s in np.linspace(min_length, max(min_length, s_max), 25):
        p = np.rint(s * inv).astype(int)[None] + offsets  # rows convention: P @ cell ~ s·I
        det = np.rint(np.linalg.det(p)).astype(int)
        p = p[(det > 0) & (det <= best_det)]
        if len(p):
            w = perpendicular_widths(p.astype(float) @ cell).min(axis=1)
            found.append(p[w >= min_length - 1e-8])
    p = np.ascontiguousarray(np.concatenate(found).reshape(-1, 9).astype(np.int16))
    _, first = np.unique(p.view(np.dtype((np.void, p.dtype.itemsize * 9))).ravel(), return_index=True)
    p = p[np.sort(first)].reshape(-1, 3, 3).astype(int)
    det = np.rint(np.linalg.det(p)).astype(int)
    w = perpendicular_widths(p.astype(float) @ cell).min(axis=1)
    nnz = np.count_nonzero(p.reshape(-1, 9), axis=1)
    p = p[np.lexsort((nnz, -np.round(w, 6), det))]
    best = None
    for start in range(0, len(p), 512):
        m = np.swapaxes(p[start : start + 512], 1, 2).astype(float)  # phonopy convention: columns
        ok = np.ones(len(m), dtype=bool) if rot is None else _keeps_symmetry(m, rot)
        if ok.any():
            best = np.rint(m[int(np.argmax(ok))]).astype(int)
            break
    if best is None:  # unreachable: n·I keeps every symmetry
        best = n_iso * np.eye(3, dtype=int)
    log.debug("supercell %s (%d unit cells)", best.tolist(), round(np.linalg.det(best)))
    return np.asarray(best, dtype=int)


def _as_supercell_matrix(value: Any) -> np.ndarray:
    m = np.asarray(value)
    if m.size == 1:
        m = np.eye(3) * m.reshape(())
    elif m.shape == (3,):
        m = np.diag(m)
    elif m.size == 9:
        m = m.reshape(3, 3)
    else:
        raise PhononError(f"supercell_matrix must be an integer, 3 integers or a 3x3 integer matrix, got {value!r}")
    if not np.allclose(m, np.rint(m)):
        raise PhononError(f"supercell_matrix must be integer, got {m.tolist()}")
    m = np.rint(m).astype(int)
    det = round(np.linalg.det(m))
    if det <= 0:
        raise PhononError(f"supercell_matrix must have a positive determinant, got {m.tolist()} (det {det})")
    return m


def mesh_for_length(cell: np.ndarray, length: float) -> np.ndarray:
    """Γ-centred q-point mesh with spacing at most ``1 / length`` along each
    reciprocal vector: ``n_i = max(1, ceil(length · |b_i|))``.

    Args:
        cell: [3, 3] Å, primitive-cell vectors as rows.
        length: Å (the real-space length the mesh resolves; larger is denser).

    Returns:
        [3] int mesh numbers.
    """
    recip = np.linalg.inv(np.asarray(cell, dtype=float)).T  # rows b_i, no 2π
    return np.maximum(1, np.ceil(length * np.linalg.norm(recip, axis=1) - 1e-9)).astype(int)


def _pretty_label(label: str) -> str:
    return "Γ" if label.upper() in ("GAMMA", "G", "Γ") else label.replace("_", "")


def seekpath_band_path(
    cell: np.ndarray,
    scaled_positions: np.ndarray,
    numbers: Sequence[int],
    npoints: int = 51,
    symprec: float = 1e-5,
) -> tuple[list[np.ndarray], list[tuple[str, str]], list[bool], dict[str, np.ndarray]]:
    """High-symmetry band path of seekpath, in the given cell's reciprocal basis.

    seekpath returns the path in the reciprocal basis of its own standardised
    primitive cell, which may be rotated and differently oriented with respect
    to the input. Each labelled point is taken to Cartesian coordinates
    (seekpath's ``rotation_matrix`` R maps input Cartesian vectors to the
    standardised frame, so q_input = Rᵀ q_std) and then to fractional
    coordinates of ``cell``'s reciprocal lattice (q_i = a_i · q).

    Args:
        cell: [3, 3] Å, rows; normally phonopy's primitive cell.
        scaled_positions: [N, 3] fractional.
        numbers: [N] atomic numbers (or any species labels as integers).
        npoints: q-points per segment, end points included.
        symprec: spglib tolerance, Å.

    Returns:
        (segments, labels, connections, points): ``segments`` is a list of
        [npoints, 3] fractional q-points; ``labels`` a list of (start, end)
        label pairs ("Γ" for Γ); ``connections[i]`` is True when segment i+1
        starts where segment i ends; ``points`` maps labels to fractional q.

    Source: Hinuma et al., Comput. Mater. Sci. 128, 140 (2017).
    """
    import seekpath

    cell = np.asarray(cell, dtype=float)
    res = seekpath.get_path(
        (cell, np.asarray(scaled_positions, dtype=float), list(numbers)), with_time_reversal=True, symprec=symprec
    )
    if "rotation_matrix" not in res:
        raise PhononError("seekpath is too old (no rotation_matrix in get_path): pip install 'seekpath>=2.0'")
    rot = np.asarray(res["rotation_matrix"], dtype=float)
    recip_std = np.linalg.inv(np.asarray(res["primitive_lattice"], dtype=float)).T

    def convert(frac_std: Sequence[float]) -> np.ndarray:
        q_std = np.asarray(frac_std, dtype=float) @ recip_std
        q_in = rot.T @ q_std
        return np.round(cell @ q_in, 12) + 0.0

    points = {_pretty_label(k): convert(v) for k, v in res["point_coords"].items()}
    labels = [(_pretty_label(a), _pretty_label(b)) for a, b in res["path"]]
    segments = [np.linspace(points[a], points[b], npoints) for a, b in labels]
    connections = [labels[i][1] == labels[i + 1][0] for i in range(len(labels) - 1)] + [False]
    return segments, labels, connections, points


def _phonopy_labels(labels: list[tuple[str, str]], connections: list[bool]) -> list[str]:
    """phonopy's label list: segment end points, shared ones once."""
    out: list[str] = []
    for i, (a, b) in enumerate(labels):
        if i == 0 or not connections[i - 1]:
            out.append(a)
        out.append(b)
    return ["$\\Gamma$" if x == "Γ" else x for x in out]


# ----------------------------------------------------------------------------
# ASE <-> phonopy, force evaluation
# ----------------------------------------------------------------------------


def _to_phonopy_atoms(atoms: Atoms) -> PhonopyAtoms:
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=np.array(atoms.cell.array, dtype=float),
        scaled_positions=atoms.get_scaled_positions(wrap=False),
        masses=atoms.get_masses(),
    )


def _to_ase_atoms(cell: PhonopyAtoms) -> Atoms:
    return Atoms(
        symbols=list(cell.symbols),
        cell=np.array(cell.cell, dtype=float),
        scaled_positions=np.array(cell.scaled_positions, dtype=float),
        masses=np.array(cell.masses, dtype=float),
        pbc=True,
    )


def evaluate_forces(calculator, supercells: Sequence[Atoms], progress: bool = True, batch_size: int = 8) -> np.ndarray:
    """Forces on each supercell with ``calculator``.

    This is the single place where displaced supercells are evaluated. With a
    :class:`~crossfunctional.calculators.CrossFunctionalCalculator` the
    supercells go through :func:`~crossfunctional.calculators.predict_batch`,
    ``batch_size`` at a time as one batched graph; any other ASE calculator is
    called one supercell at a time.

    Args:
        calculator: an ASE calculator (for phonons, float64).
        supercells: S structures of N atoms each.
        progress: show a tqdm progress bar on stderr.
        batch_size: supercells per batched graph.

    Returns:
        [S, N, 3] float64 forces, eV/Å.
    """
    from tqdm.auto import tqdm

    from crossfunctional.calculators import CrossFunctionalCalculator, predict_batch

    out = []
    with tqdm(total=len(supercells), desc="displaced supercells", unit="cell", disable=not progress, leave=False) as bar:
        if isinstance(calculator, CrossFunctionalCalculator):
            for start in range(0, len(supercells), batch_size):
                chunk = list(supercells[start : start + batch_size])
                out.extend(np.array(r["forces"], dtype=np.float64) for r in predict_batch(chunk, calculator))
                bar.update(len(chunk))
        else:
            for sc in supercells:
                work = sc.copy()
                work.calc = calculator
                out.append(np.array(work.get_forces(), dtype=np.float64))
                work.calc = None
                bar.update(1)
    return np.stack(out) if out else np.zeros((0, 0, 3))


# ----------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------


@dataclass
class ImaginaryMode:
    """A q-point where the lowest frequency is below the threshold.

    Attributes:
        qpoint: [3] fractional, reciprocal basis of phonopy's primitive cell.
        frequency: lowest frequency there, THz (negative: imaginary).
        n_modes: number of branches below the threshold there.
        where: "X", "on Γ–X", or "mesh point" (with equivalent labels found
            by the point-group operations of the crystal).
    """

    qpoint: list[float]
    frequency: float
    n_modes: int
    where: str


@dataclass
class PhononSummary:
    """What a phonon run found; :meth:`text` prints it, :meth:`as_dict` for JSON.

    Frequencies in THz, lengths in Å, forces in eV/Å. ``heat_capacity_*`` in
    J/K per mole of atoms; ``dulong_petit_ratio`` is C_V / (3 N k_B) at
    ``t_max``.
    """

    formula: str
    model: str
    n_atoms_unitcell: int
    n_atoms_primitive: int
    n_atoms_supercell: int
    supercell_matrix: list[list[int]]
    supercell_widths: list[float]
    displacement: float
    n_displacements: int
    relaxed: bool
    relaxed_cell: bool
    relax_steps: int | None
    relax_fmax: float | None
    residual_force: float
    max_force_drift: float
    lattice: list[list[float]]
    mesh: list[int]
    nac: bool
    min_frequency: float
    min_frequency_qpoint: list[float]
    min_frequency_where: str
    max_frequency: float
    acoustic_gamma: list[float]
    imaginary_threshold: float
    has_imaginary: bool
    n_imaginary_qpoints: int
    imaginary_modes: list[ImaginaryMode] = field(default_factory=list)
    t_max: float = 1000.0
    heat_capacity_300K: float | None = None
    heat_capacity_tmax: float | None = None
    dulong_petit_ratio: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (units in the key names where not obvious)."""
        return asdict(self)

    def text(self) -> str:
        """A human-readable report."""
        lines = [
            f"{self.formula} with {self.model}: {self.n_atoms_primitive} atoms in the primitive cell, "
            f"supercell of {self.n_atoms_supercell} atoms (matrix {self.supercell_matrix}, "
            f"widths {', '.join(f'{w:.2f}' for w in self.supercell_widths)} Å), "
            f"{self.n_displacements} displacement(s) of {self.displacement:g} Å",
        ]
        if self.relaxed:
            lines.append(
                f"pre-relaxed ({'cell and positions' if self.relaxed_cell else 'positions'}, symmetry kept) in "
                f"{self.relax_steps} steps to max force "
                f"{self.relax_fmax:.1e} eV/Å"
            )
        else:
            lines.append("not pre-relaxed (relax=False)")
        lines.append(
            f"residual max force on the unit cell {self.residual_force:.1e} eV/Å; "
            f"largest force drift in a displaced supercell {self.max_force_drift:.1e} eV/Å"
        )
        lines.append(
            f"frequencies from {self.min_frequency:.3f} THz ({self.min_frequency_where}) "
            f"to {self.max_frequency:.3f} THz; q mesh {self.mesh} (Γ-centred)"
        )
        lines.append("acoustic modes at Γ: " + ", ".join(f"{f:+.4f}" for f in self.acoustic_gamma) + " THz")
        if self.has_imaginary:
            lines.append(
                f"IMAGINARY MODES: {self.n_imaginary_qpoints} q-point(s) with frequencies below "
                f"{self.imaginary_threshold:g} THz: the structure is dynamically unstable (a saddle point of "
                "the model's energy); lowest:"
            )
            for m in self.imaginary_modes[:10]:
                q = ", ".join(f"{x:.4f}" for x in m.qpoint)
                lines.append(f"  {m.frequency:+.3f} THz at q = ({q}) [{m.where}], {m.n_modes} branch(es)")
        else:
            lines.append(f"no imaginary modes (none below {self.imaginary_threshold:g} THz): dynamically stable")
        if not self.nac:
            lines.append("no non-analytical correction: LO–TO splitting absent (pass a BORN file for polar materials)")
        if self.heat_capacity_tmax is not None:
            lines.append(
                f"C_V at 300 K: {self.heat_capacity_300K:.3f} J/K/mol-atoms; at {self.t_max:g} K: "
                f"{self.heat_capacity_tmax:.3f} J/K/mol-atoms = {self.dulong_petit_ratio:.4f} × 3R (Dulong–Petit)"
            )
        return "\n".join(lines)


@dataclass
class PhononResult:
    """Outcome of :func:`phonons`.

    Attributes:
        phonopy: the ``phonopy.Phonopy`` object with displacements, forces and
            force constants (and the BORN parameters when given); band
            structure, mesh and thermal properties have been run on it.
        summary: :class:`PhononSummary`.
        atoms: the unit cell used (pre-relaxed unless ``relax=False``), no calculator.
        band: ``{"labels": [(start, end)], "connections": [bool], "qpoints":
            [[n, 3]], "distances": [[n]], "frequencies": [[n, 3 N_prim]] THz,
            "points": {label: [3]}}``.
        dos: ``{"frequency": [F] THz, "dos": [F] states/THz per primitive cell}``.
        thermal: ``{"temperature": K, "free_energy_fu": kJ/mol, "entropy_fu":
            J/K/mol, "heat_capacity_fu": J/K/mol, and the same with ``_atom``
            per mole of atoms}``, arrays [T]; ``"formula_unit"``,
            ``"atoms_per_formula_unit"``.
        forces: [S, N_super, 3] eV/Å, forces on the displaced supercells.
        relaxation: the pre-relaxation's RelaxResult, or None.
    """

    phonopy: Phonopy
    summary: PhononSummary
    atoms: Atoms
    band: dict[str, Any]
    dos: dict[str, np.ndarray]
    thermal: dict[str, Any]
    forces: np.ndarray
    relaxation: RelaxResult | None = None

    def frequencies(self, qpoints: Sequence[Sequence[float]]) -> np.ndarray:
        """Frequencies (THz) at q-points [Q, 3] (fractional, primitive reciprocal
        basis): [Q, 3 N_prim], sorted per q-point, imaginary as negative."""
        self.phonopy.run_qpoints(np.asarray(qpoints, dtype=float).reshape(-1, 3))
        return np.array(self.phonopy.qpoints.frequencies)

    def write(self, output_dir: str | os.PathLike, fc_format: str = "text") -> dict[str, Path]:
        """Write everything into ``output_dir`` (created if needed), each file atomically.

        Files: ``phonopy_params.yaml`` (unit cell, supercell matrix,
        displacements and forces, BORN data; ``phonopy.load`` reopens it),
        ``band.yaml`` (phonopy's band-structure file), ``band_structure.png``,
        ``dos.png``, ``total_dos.dat``, ``thermal_properties.csv`` (per formula
        unit and per mole of atoms, units in the header) and
        ``thermal_properties.yaml`` (phonopy's, per mole of primitive cells),
        ``FORCE_CONSTANTS`` (compact, primitive-atom rows; ``fc_format="text"``)
        or ``force_constants.hdf5`` (``"hdf5"``), ``unitcell.vasp``,
        ``summary.json`` and ``summary.txt``.

        Returns:
            {name: path} of the files written.

        Raises:
            ValueError: unknown ``fc_format``.
        """
        from ase.io import write as ase_write
        from phonopy.file_IO import write_force_constants_to_hdf5, write_FORCE_CONSTANTS

        if fc_format not in ("text", "hdf5"):
            raise ValueError(f"fc_format must be 'text' or 'hdf5', got {fc_format!r}")
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        ph = self.phonopy
        written: dict[str, Path] = {}

        def target(name: str) -> Path:
            written[name] = out / name
            return out / name

        with atomic_path(target("phonopy_params.yaml")) as tmp:
            ph.save(filename=tmp)
        with atomic_path(target("band.yaml")) as tmp:
            self._rerun_band()
            ph.write_yaml_band_structure(filename=tmp)
        with atomic_path(target("thermal_properties.yaml")) as tmp:
            ph.write_yaml_thermal_properties(filename=tmp)
        p2s = ph.primitive.p2s_map
        fc = ph.force_constants
        compact = fc[p2s] if fc.shape[0] == fc.shape[1] else fc  # rows of the primitive-cell atoms only
        if fc_format == "text":
            with atomic_path(target("FORCE_CONSTANTS")) as tmp:
                write_FORCE_CONSTANTS(compact, filename=tmp, p2s_map=p2s)
        else:
            with atomic_path(target("force_constants.hdf5")) as tmp:
                write_force_constants_to_hdf5(compact, filename=str(tmp), p2s_map=p2s)
        with atomic_path(target("unitcell.vasp")) as tmp:
            ase_write(tmp, self.atoms, format="vasp", direct=True)

        with atomic_write(target("total_dos.dat")) as fh:
            fh.write("# frequency (THz)   DOS (states/THz per primitive cell)\n")
            for f, d in zip(self.dos["frequency"], self.dos["dos"]):
                fh.write(f"{f:14.6f} {d:16.8f}\n")

        th = self.thermal
        fu = th["formula_unit"]
        with atomic_write(target("thermal_properties.csv")) as fh:
            fh.write(
                f"# harmonic thermal properties of {fu} ({th['atoms_per_formula_unit']} atoms per formula unit); "
                "_fu: per mole of formula units, _atom: per mole of atoms\n"
            )
            fh.write(
                "T_K,F_kJ_per_mol_fu,S_J_per_K_mol_fu,Cv_J_per_K_mol_fu,"
                "F_kJ_per_mol_atom,S_J_per_K_mol_atom,Cv_J_per_K_mol_atom,Cv_per_3R\n"
            )
            for k, t in enumerate(th["temperature"]):
                fh.write(
                    f"{t:.2f},{th['free_energy_fu'][k]:.6f},{th['entropy_fu'][k]:.6f},{th['heat_capacity_fu'][k]:.6f},"
                    f"{th['free_energy_atom'][k]:.6f},{th['entropy_atom'][k]:.6f},"
                    f"{th['heat_capacity_atom'][k]:.6f},{th['heat_capacity_atom'][k] / (3 * _R):.6f}\n"
                )

        with atomic_write(target("summary.json")) as fh:
            json.dump(self.summary.as_dict(), fh, indent=1)
        with atomic_write(target("summary.txt")) as fh:
            fh.write(self.summary.text() + "\n")

        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        plot_band_structure(self, ax=ax)
        ax.set_title(f"{self.thermal['formula_unit']} ({self.summary.model})")
        fig.tight_layout()
        with atomic_path(target("band_structure.png")) as tmp:
            fig.savefig(tmp, dpi=150)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(5.0, 3.6))
        plot_dos(self, ax=ax)
        ax.set_title(f"{self.thermal['formula_unit']} ({self.summary.model})")
        fig.tight_layout()
        with atomic_path(target("dos.png")) as tmp:
            fig.savefig(tmp, dpi=150)
        plt.close(fig)
        return written

    def _rerun_band(self) -> None:
        """Make the phonopy band structure current (a user may have run other q-points)."""
        b = self.band
        self.phonopy.run_band_structure(
            [np.asarray(s) for s in b["qpoints"]],
            path_connections=b["connections"],
            labels=_phonopy_labels(b["labels"], b["connections"]),
        )


def plot_band_structure(
    result: PhononResult,
    ax=None,
    color: str = "C0",
    label: str | None = None,
    reference: PhononResult | None = None,
    **kwargs,
):
    """Plot the band structure of ``result`` (frequencies in THz along the
    seekpath path; imaginary frequencies drawn as negative) on ``ax``.

    Args:
        result: a :class:`PhononResult`.
        ax: matplotlib Axes (a new figure when None).
        color, label, kwargs: passed to ``ax.plot``.
        reference: another result on the same band path (e.g. another model)
            whose path lengths set the x axis, so that both share the ticks.

    Returns:
        The matplotlib Axes.

    Raises:
        ValueError: ``reference`` has a different band path.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots()
    b = result.band
    xaxis = b
    if reference is not None:
        xaxis = reference.band
        if xaxis["labels"] != b["labels"] or [len(d) for d in xaxis["distances"]] != [len(d) for d in b["distances"]]:
            raise ValueError("reference has a different band path; plot it on its own axes")
    first = True
    for d, f in zip(xaxis["distances"], b["frequencies"]):
        lines = ax.plot(d, f, color=color, lw=1.0, **kwargs)
        if first and label is not None:
            lines[0].set_label(label)
        first = False
    ticks, names = _band_ticks(xaxis)
    for x in ticks:
        ax.axvline(x, color="0.7", lw=0.6, zorder=0)
    ax.axhline(0.0, color="k", lw=0.6, zorder=0)
    ax.set_xticks(ticks)
    ax.set_xticklabels(names)
    ax.set_xlim(ticks[0], ticks[-1])
    ax.set_ylabel("Frequency (THz)")
    return ax


def _band_ticks(band: dict[str, Any]) -> tuple[list[float], list[str]]:
    labels, conn, dist = band["labels"], band["connections"], band["distances"]
    ticks = [float(dist[0][0])]
    names = [labels[0][0]]
    for i, (a, b) in enumerate(labels):
        end = float(dist[i][-1])
        if i + 1 < len(labels) and not conn[i]:
            ticks.append(end)
            names.append(f"{b}|{labels[i + 1][0]}")
        else:
            ticks.append(end)
            names.append(b)
    return ticks, names


def plot_dos(result: PhononResult, ax=None, color: str = "C0", label: str | None = None):
    """Plot the total phonon DOS (states/THz per primitive cell vs THz).

    Returns:
        The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots()
    ax.plot(result.dos["frequency"], result.dos["dos"], color=color, lw=1.0, label=label)
    ax.fill_between(result.dos["frequency"], result.dos["dos"], color=color, alpha=0.2, lw=0)
    ax.axvline(0.0, color="k", lw=0.6)
    ax.set_xlabel("Frequency (THz)")
    ax.set_ylabel("DOS (states/THz per primitive cell)")
    ax.set_ylim(bottom=0)
    return ax


# ----------------------------------------------------------------------------
# The workflow
# ----------------------------------------------------------------------------


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


def _estimate_memory(unit: Atoms, n_cells: int, calculator) -> float:
    """Peak bytes: full force constants (plus a working copy) and, for a
    crossfunctional calculator, one float64 model evaluation of the supercell."""
    n_super = n_cells * len(unit)
    fc = 2.0 * n_super**2 * 9 * 8
    cutoff = getattr(calculator, "cutoff", None)
    if cutoff is None:
        return fc
    from crossfunctional.neighbors import neighbor_list

    edges_per_atom = neighbor_list(unit, float(cutoff)).edge_index.shape[1] / len(unit)
    return fc + n_super * edges_per_atom * _BYTES_PER_EDGE


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


def _model_label(model: Any, calculator) -> str:
    meta = getattr(calculator, "metadata", None)
    if isinstance(meta, dict) and meta.get("model_name"):
        return str(meta["model_name"])
    if isinstance(model, (str, os.PathLike)) and calculator is None:
        return str(model)
    return type(calculator).__name__


def _formula_unit(atoms: Atoms) -> tuple[str, int]:
    from ase.formula import Formula

    reduced, n_fu = Formula(atoms.get_chemical_formula()).reduce()
    return str(reduced), len(atoms) // n_fu


def _locate(
    q: np.ndarray, points: dict[str, np.ndarray], rotations: np.ndarray | None, segment: tuple[str, str] | None
) -> str:
    """Name of the labelled point equivalent to q (fractional; by a point-group
    operation, time reversal and a reciprocal lattice vector), else its band
    segment ("on Γ–X"), else "mesh point"."""
    ops = np.eye(3)[None] if rotations is None else np.asarray(rotations, dtype=float)
    images = np.einsum("j,rjk->rk", np.asarray(q, dtype=float), ops)
    images = np.concatenate([images, -images])  # [2R, 3]
    for name, p in points.items():
        d = images - np.asarray(p)
        if np.any(np.all(np.abs(d - np.rint(d)) < 1e-6, axis=1)):
            return name
    if segment is not None:
        return f"on {segment[0]}–{segment[1]}"
    return "mesh point"


def _imaginary_modes(
    band: dict[str, Any],
    mesh_q: np.ndarray,
    mesh_f: np.ndarray,
    threshold: float,
    rotations: np.ndarray | None,
    keep: int = 20,
) -> tuple[list[ImaginaryMode], int]:
    """The ``keep`` lowest q-points (band path and mesh, duplicates merged)
    whose lowest frequency is below ``threshold``, and how many there are."""
    found: dict[tuple, tuple[float, int, np.ndarray, tuple[str, str] | None]] = {}
    sources = [(np.asarray(q), np.asarray(f), seg) for q, f, seg in zip(band["qpoints"], band["frequencies"], band["labels"])]
    sources.append((mesh_q, mesh_f, None))
    for qs, fs, seg in sources:
        low = fs < threshold
        for i in np.flatnonzero(low.any(axis=1)):
            key = tuple(np.round(np.mod(qs[i] + 1e-9, 1.0), 6))
            fmin = float(fs[i].min())
            if key not in found or fmin < found[key][0]:
                found[key] = (fmin, int(low[i].sum()), qs[i], seg)
    ranked = sorted(found.values(), key=lambda t: t[0])[:keep]
    points = {k: np.asarray(v) for k, v in band["points"].items()}
    modes = [
        ImaginaryMode(qpoint=[float(x) for x in q], frequency=f, n_modes=n, where=_locate(q, points, rotations, seg))
        for f, n, q, seg in ranked
    ]
    return modes, len(found)


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
    force_evaluator: Callable[[Any, Sequence[Atoms], bool], np.ndarray] | None = None,
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
        force_evaluator: replaces :func:`evaluate_forces` (same signature), e.g.
            a batched evaluation.

    Returns:
        :class:`PhononResult`.

    Raises:
        TypeError: ``atoms`` is not an ase.Atoms.
        PhononError: not periodic in 3 directions or no cell (a molecule); the
            structure does not relax within ``relax_steps``; a supercell over
            ``max_atoms`` or over the memory limit; a bad ``supercell_matrix``;
            an unreadable BORN file; phonopy or seekpath not installed.
        crossfunctional.models.ModelError, crossfunctional.neighbors.StructureError:
            as the calculator raises them.
    """
    _check_crystal(atoms)
    _require_phonopy()
    if not displacement > 0:
        raise PhononError(f"displacement must be a positive length in Å, got {displacement!r}")
    from phonopy import Phonopy
    from phonopy.structure.cells import guess_primitive_matrix

    made_here = calculator is None
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
    label = _model_label(model if made_here else None, calculator)

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
    need = _estimate_memory(unit, n_cells, calculator)
    limit = max_memory_gb * 1e9 if max_memory_gb is not None else _available_memory_bytes()
    if limit is not None and need > limit:
        raise PhononError(
            f"the {n_super}-atom supercell needs about {need / 1e9:.1f} GB of memory, more than the "
            f"{limit / 1e9:.1f} GB {'allowed (max_memory_gb)' if max_memory_gb is not None else 'available'}: "
            "use a smaller supercell"
        )
    if isinstance(primitive_matrix, str) and primitive_matrix == "auto":
        pmat = guess_primitive_matrix(unit_ph, symprec=symprec)
    else:
        pmat = primitive_matrix
    ph = Phonopy(unit_ph, supercell_matrix=smat, primitive_matrix=pmat, symprec=symprec)
    ph.generate_displacements(distance=displacement, is_plusminus=is_plusminus)
    supercells = [_to_ase_atoms(sc) for sc in ph.supercells_with_displacements]

    # (3) forces
    evaluator = force_evaluator or evaluate_forces
    forces = np.asarray(evaluator(calculator, supercells, progress), dtype=np.float64)
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
    import inspect

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


# ----------------------------------------------------------------------------
# Command line (registered by crossfunctional.cli)
# ----------------------------------------------------------------------------


def add_phonons_command(subparsers) -> None:
    """Register ``crossfunctional phonons`` on an argparse sub-parser set."""
    p = subparsers.add_parser(
        "phonons",
        help="phonon band structure, DOS, thermal properties and imaginary-mode check (phonopy)",
        description="Finite-displacement phonons with phonopy: writes band.yaml, band_structure.png, dos.png, "
        "thermal_properties.csv, FORCE_CONSTANTS, phonopy_params.yaml and a summary into the output folder.",
    )
    p.add_argument("structure", help="structure file (the last frame is used)")
    p.add_argument("-o", "--output", default="phonons", help="output folder (default ./phonons)")
    p.add_argument("--supercell-min-length", type=float, default=DEFAULT_MIN_LENGTH,
                   help=f"minimum perpendicular width of the supercell, Å (default {DEFAULT_MIN_LENGTH:g})")
    p.add_argument("--supercell", type=int, nargs="+", metavar="N",
                   help="supercell matrix instead: 1, 3 or 9 integers (phonopy's convention)")
    p.add_argument("--displacement", type=float, default=0.01, help="displacement, Å (default 0.01)")
    p.add_argument("--no-relax", action="store_true", help="skip the pre-relaxation (structure already relaxed)")
    p.add_argument("--fmax", type=float, default=1e-4, help="pre-relaxation force tolerance, eV/Å (default 1e-4)")
    p.add_argument("--relax-steps", type=int, default=1000, help="maximum pre-relaxation steps (default 1000)")
    p.add_argument("--mesh-length", type=float, default=80.0, help="q-mesh length, Å (default 80)")
    p.add_argument("--band-points", type=int, default=51, help="q-points per band segment (default 51)")
    p.add_argument("--tmax", type=float, default=1000.0, help="highest temperature, K (default 1000)")
    p.add_argument("--tstep", type=float, default=10.0, help="temperature step, K (default 10)")
    p.add_argument("--imaginary-threshold", type=float, default=DEFAULT_IMAGINARY_THRESHOLD,
                   help=f"frequencies below this count as imaginary, THz (default {DEFAULT_IMAGINARY_THRESHOLD:g})")
    p.add_argument("--born", help="phonopy BORN file: apply the non-analytical (LO-TO) correction")
    p.add_argument("--max-atoms", type=int, default=DEFAULT_MAX_ATOMS,
                   help=f"largest supercell accepted (default {DEFAULT_MAX_ATOMS})")
    p.add_argument("--max-memory-gb", type=float, default=None, help="memory limit, GB (default: available memory)")
    p.add_argument("--symprec", type=float, default=1e-5, help="phonopy symmetry tolerance, Å (default 1e-5)")
    p.add_argument("--fc-format", choices=["text", "hdf5"], default="text",
                   help="FORCE_CONSTANTS (text, default) or force_constants.hdf5")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or file (default {DEFAULT_MODEL})")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default cpu)")
    p.set_defaults(func=cmd_phonons)


def cmd_phonons(args) -> int:
    """Run ``crossfunctional phonons``; returns the exit status (0 done, 2 bad input)."""
    from crossfunctional.io import read_structures

    atoms = read_structures(args.structure, index=-1)[0]
    result = phonons(
        atoms,
        model=args.model,
        device=args.device,
        relax=not args.no_relax,
        fmax=args.fmax,
        relax_steps=args.relax_steps,
        supercell_matrix=args.supercell,
        supercell_min_length=args.supercell_min_length,
        displacement=args.displacement,
        symprec=args.symprec,
        max_atoms=args.max_atoms,
        max_memory_gb=args.max_memory_gb,
        mesh_length=args.mesh_length,
        band_npoints=args.band_points,
        t_max=args.tmax,
        t_step=args.tstep,
        imaginary_threshold=args.imaginary_threshold,
        born=args.born,
        progress=not args.no_progress,
    )
    files = result.write(args.output, fc_format=args.fc_format)
    print(result.summary.text())
    print(f"wrote {len(files)} files to {args.output}: " + ", ".join(sorted(files)))
    return 0
