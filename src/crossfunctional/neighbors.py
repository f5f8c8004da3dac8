"""Structure checks and the directed neighbour list of the model contract.

The neighbour search itself is vesin's (G. Fraux et al., https://github.com/Luthaf/vesin).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from crossfunctional.errors import CrossFunctionalError
from crossfunctional.models.chgnet import MAX_Z

MIN_DISTANCE = 0.5  # Å; closer pairs are rejected as unphysical input


class StructureError(CrossFunctionalError, ValueError):
    """A structure the model cannot be evaluated on; the message names the problem."""


@dataclass
class Edges:
    """Directed neighbour list of one structure (or a batch, with offsets).

    Attributes:
        atomic_numbers: [N] int64.
        edge_index: [2, E] int64, i -> j, both directions present.
        edge_shifts: [E, 3] int64, integer image shift S of j.
        edge_vectors: [E, 3] float64, r_j + S . cell - r_i in Å.
    """

    atomic_numbers: np.ndarray
    edge_index: np.ndarray
    edge_shifts: np.ndarray
    edge_vectors: np.ndarray

    def to_torch(self, device: torch.device | str, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """(atomic_numbers, edge_index, edge_shifts, edge_vectors) as tensors."""
        return (
            torch.as_tensor(self.atomic_numbers, dtype=torch.long, device=device),
            torch.as_tensor(self.edge_index, dtype=torch.long, device=device),
            torch.as_tensor(self.edge_shifts, dtype=torch.long, device=device),
            torch.as_tensor(self.edge_vectors, dtype=dtype, device=device),
        )


def check_structure(atoms: Atoms) -> None:
    """Reject input the model cannot handle, naming the problem.

    Raises:
        StructureError: empty structure; atomic number outside 1..94; NaN or
            infinite positions or cell; a periodic direction whose cell vectors
            are degenerate (zero volume in the periodic subspace).
    """
    if len(atoms) == 0:
        raise StructureError("empty structure: no atoms")
    numbers = atoms.get_atomic_numbers()
    bad = sorted({int(z) for z in numbers if z < 1 or z > MAX_Z})
    if bad:
        from ase.data import chemical_symbols

        names = ", ".join(f"{chemical_symbols[z] if 0 <= z < len(chemical_symbols) else '?'} (Z={z})" for z in bad)
        raise StructureError(f"element(s) {names} not covered by the model, which knows Z = 1 to {MAX_Z}")
    pos = atoms.get_positions()
    if not np.all(np.isfinite(pos)):
        raise StructureError("positions contain NaN or infinite values")
    cell = np.asarray(atoms.cell.array, dtype=float)
    if not np.all(np.isfinite(cell)):
        raise StructureError("cell contains NaN or infinite values")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any():
        vecs = cell[pbc]
        gram = np.linalg.det(vecs @ vecs.T)
        lengths = np.prod(np.linalg.norm(vecs, axis=1))
        if lengths == 0 or gram <= (1e-8 * lengths) ** 2:
            dims = "".join("xyz"[k] for k in range(3) if pbc[k])
            raise StructureError(f"periodic cell is degenerate (zero volume) along the periodic directions {dims}")


def neighbor_list(atoms: Atoms, cutoff: float) -> Edges:
    """Directed edges within ``cutoff`` (Å), both directions, with image shifts.

    Atoms outside the cell and non-periodic or mixed boundary conditions are
    handled by vesin. Raises :class:`StructureError` as :func:`check_structure`
    does, and when two atoms are closer than 0.5 Å.
    """
    from vesin import NeighborList

    check_structure(atoms)
    pos = np.ascontiguousarray(atoms.get_positions(), dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if not pbc.any():
        cell = np.zeros((3, 3))
    elif not pbc.all():
        cell = atoms.cell.complete().array.astype(np.float64)
    i, j, shifts, vec = NeighborList(cutoff=cutoff, full_list=True).compute(
        points=pos, box=cell, periodic=pbc.tolist(), quantities="ijSD"
    )
    lengths = np.linalg.norm(vec, axis=1)
    if lengths.size and lengths.min() < MIN_DISTANCE:
        k = int(np.argmin(lengths))
        raise StructureError(
            f"atoms {int(i[k])} and {int(j[k])} are {lengths[k]:.3f} Å apart, closer than {MIN_DISTANCE} Å"
        )
    keep = lengths < cutoff
    return Edges(
        atomic_numbers=atoms.get_atomic_numbers().astype(np.int64),
        edge_index=np.stack([i[keep], j[keep]]).astype(np.int64),
        edge_shifts=np.asarray(shifts[keep], dtype=np.int64).reshape(-1, 3),
        edge_vectors=np.asarray(vec[keep], dtype=np.float64).reshape(-1, 3),
    )
