"""Synthetic labels for tests and benchmarks where no DFT is at hand:
perturbed structures (rattle and strain) and labels computed by a model.
Results built on such labels test a model against a model; the project's
headline transfer results use real DFT labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from pymatgen.core import Lattice, Structure

from crossfunctional.transfer.data import LabelledStructure, _structure_from_atoms

__all__ = ["label_with_model", "perturb"]


def perturb(
    records_or_structures: Sequence[LabelledStructure | Structure | Atoms],
    rattle: float = 0.05,
    strain: float = 0.02,
    seed: int = 0,
) -> list[Structure]:
    """Copies with Gaussian displacements (std ``rattle`` Å) and a random
    symmetric strain (components uniform in ±``strain``), so that forces and
    stresses are non-zero. Returns pymatgen Structures."""
    rng = np.random.default_rng(seed)
    out = []
    for item in records_or_structures:
        if isinstance(item, LabelledStructure):
            s = item.structure.copy()
        elif isinstance(item, Atoms):
            s = _structure_from_atoms(item, "perturb")
        else:
            s = item.copy()
        eps = rng.uniform(-strain, strain, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        lattice = Lattice(s.lattice.matrix @ (np.eye(3) + eps))
        cart = s.cart_coords @ (np.eye(3) + eps) + rng.normal(scale=rattle, size=(len(s), 3))
        out.append(Structure(lattice, s.species, cart, coords_are_cartesian=True))
    return out


def label_with_model(
    structures: Sequence[Structure | Atoms | LabelledStructure],
    model: Any = "chgnet-r2scan",
    material_ids: Sequence[str] | None = None,
    max_edges: int = 50_000,
) -> list[LabelledStructure]:
    """Label structures with a model (name, file, loaded module or calculator):
    energy, forces, stress (ASE sign) and magmoms, all in ASE units. Uses the
    batched evaluator of :mod:`crossfunctional.calculators`."""
    from ase.stress import voigt_6_to_full_3x3_stress

    from crossfunctional.calculators import predict_batch

    structs = []
    for k, s in enumerate(structures):
        if isinstance(s, LabelledStructure):
            structs.append(s.structure)
        elif isinstance(s, Atoms):
            structs.append(_structure_from_atoms(s, f"structure {k}"))
        else:
            structs.append(s)
    atoms = [LabelledStructure(s, None).atoms() for s in structs]
    results = predict_batch(atoms, model, max_edges=max_edges)
    ids = list(material_ids) if material_ids is not None else [
        s.material_id if isinstance(s, LabelledStructure) else f"structure-{k}" for k, s in enumerate(structures)
    ]
    return [
        LabelledStructure(
            structure=s,
            energy=float(res["energy"]),
            forces=np.asarray(res["forces"], dtype=float),
            stress=voigt_6_to_full_3x3_stress(np.asarray(res["stress"], dtype=float)) if "stress" in res else None,
            magmoms=np.asarray(res["magmoms"], dtype=float),
            material_id=str(mid),
            source=f"model:{k}",
        )
        for k, (s, res, mid) in enumerate(zip(structs, results, ids))
    ]
