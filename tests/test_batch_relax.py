"""Batched relaxation (torch-sim FIRE + Fréchet cell filter) against one-by-one
relaxation with ASE's FIRE and FrechetCellFilter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from crossfunctional.calculators import CrossFunctionalCalculator
from crossfunctional.errors import WorkflowError
from crossfunctional.workflows import relax, relax_many

torch.set_num_threads(1)


def _rattled_strained():
    rng = np.random.default_rng(0)
    out = []
    for atoms in (bulk("Si", "diamond", a=5.5), bulk("MgO", "rocksalt", a=4.3), bulk("Cu", "fcc", a=3.7),
                  bulk("NaCl", "rocksalt", a=5.5) * (2, 1, 1), bulk("Fe", "bcc", a=2.9) * (2, 2, 1)):
        atoms = atoms.copy()
        atoms.rattle(0.05, seed=int(rng.integers(1000)))
        strain = np.eye(3) + 0.02 * rng.uniform(-1, 1, (3, 3))
        atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
        out.append(atoms)
    return out


def test_relax_many_equals_relax_one_by_one():
    calc = CrossFunctionalCalculator()
    frames = _rattled_strained()
    many = relax_many(frames, calculator=calc, fmax=0.02, steps=500)
    for atoms, res in zip(frames, many):
        work = atoms.copy()
        work.calc = calc
        ref = relax(work, fmax=0.02, steps=500)  # FIRE + FrechetCellFilter
        assert res.converged and ref.converged
        assert res.steps == ref.steps  # the same FIRE trajectory, step for step
        assert abs(res.energy - ref.energy) / len(atoms) < 1e-4  # eV/atom
        assert abs(res.atoms.get_volume() - ref.atoms.get_volume()) / ref.atoms.get_volume() < 1e-4
        assert res.fmax < 0.02
        assert res.final_structure.composition.reduced_formula == ref.final_structure.composition.reduced_formula


def test_each_structure_keeps_its_own_step_cap_and_order():
    frames = _rattled_strained()[:3]
    capped = relax_many(frames, fmax=1e-4, steps=7)
    assert [r.steps for r in capped] == [7, 7, 7] and not any(r.converged for r in capped)
    assert [r.atoms.get_chemical_formula() for r in capped] == [a.get_chemical_formula() for a in frames]
    none = relax_many(frames, steps=0)
    assert [r.steps for r in none] == [0, 0, 0]
    np.testing.assert_allclose(none[1].atoms.positions, frames[1].positions)


def test_bad_input():
    with pytest.raises(WorkflowError, match="at least one structure"):
        relax_many([])
    slab = bulk("Cu", "fcc", a=3.6)
    slab.pbc = (True, True, False)
    with pytest.raises(WorkflowError, match="periodic in all three directions"):
        relax_many([slab])
    with pytest.raises(WorkflowError, match="fmax"):
        relax_many([bulk("Cu")], fmax=0)
