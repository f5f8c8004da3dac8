"""Geometry of a phonon calculation: perpendicular widths, the supercell search,
q-point meshes, the seekpath band path, and conversions between ASE and phonopy
structures.

Also defines :class:`PhononError`, the error type of the whole
:mod:`crossfunctional.workflows.phonons` package (this is its lowest module).

Sources:
    Y. Hinuma, G. Pizzi, Y. Kumagai, F. Oba, I. Tanaka, Comput. Mater. Sci. 128,
    140 (2017) (seekpath band paths).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from crossfunctional.errors import CrossFunctionalError

if TYPE_CHECKING:  # pragma: no cover
    from phonopy.structure.atoms import PhonopyAtoms

__all__ = [
    "DEFAULT_MIN_LENGTH",
    "PhononError",
    "mesh_for_length",
    "perpendicular_widths",
    "seekpath_band_path",
    "supercell_matrix_for_length",
]

log = logging.getLogger(__name__)

#: Minimum perpendicular width of the supercell, Å.
DEFAULT_MIN_LENGTH = 15.0


class PhononError(CrossFunctionalError, ValueError):
    """Input a phonon calculation cannot use: not a periodic crystal, a
    supercell beyond the size or memory limit, a structure that does not
    relax, an unreadable BORN file, a missing optional dependency."""


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
