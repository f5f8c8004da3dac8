"""float64 mode against upstream chgnet run in float64 (asked: 1e-6 eV/atom).

Upstream runs in float64 once ``TORCH_DTYPE`` is float64 in
``chgnet.model.model``, ``chgnet.graph.converter`` and
``chgnet.graph.crystalgraph``, the model is cast with ``.to(torch.float64)``
and the input of ``AtomRef._get_energy`` is cast to its weight's dtype.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

from crossfunctional.calculators import CrossFunctionalCalculator


@pytest.fixture
def upstream_float64(monkeypatch):
    import chgnet.graph.converter
    import chgnet.graph.crystalgraph
    import chgnet.model.model
    from chgnet.model import CHGNet
    from chgnet.model.composition_model import AtomRef

    for module in (chgnet.model.model, chgnet.graph.converter, chgnet.graph.crystalgraph):
        monkeypatch.setattr(module, "TORCH_DTYPE", torch.float64)
    original = AtomRef._get_energy
    monkeypatch.setattr(AtomRef, "_get_energy", lambda self, feas: original(self, feas.to(self.fc.weight.dtype)))
    return CHGNet.load(model_name="r2scan", use_device="cpu", verbose=False).to(torch.float64)


def perturbed_si64() -> object:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * 2
    atoms.rattle(0.05, seed=7)
    return atoms


def test_float64_matches_upstream_float64(upstream_float64):
    atoms = perturbed_si64()
    pred = upstream_float64.predict_structure(AseAtomsAdaptor.get_structure(atoms), task="efsm")
    atoms.calc = CrossFunctionalCalculator(model="chgnet-r2scan", dtype="float64")
    n = len(atoms)
    assert atoms.get_potential_energy() / n == pytest.approx(float(pred["e"]), abs=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), pred["f"], atol=1e-6)
    from ase.units import GPa
    from ase.stress import full_3x3_to_voigt_6_stress

    np.testing.assert_allclose(atoms.get_stress() / GPa, full_3x3_to_voigt_6_stress(pred["s"]), atol=1e-5)


def test_float32_and_float64_differ_only_by_rounding():
    atoms = perturbed_si64()
    atoms.calc = CrossFunctionalCalculator(model="chgnet-r2scan", dtype="float64")
    e64, f64 = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = CrossFunctionalCalculator(model="chgnet-r2scan", dtype="float32")
    e32, f32 = atoms.get_potential_energy(), atoms.get_forces()
    n = len(atoms)
    assert abs(e32 - e64) / n < 2e-5  # float32 rounding, far below the model's error
    assert abs(e32 - e64) / n > 0  # the two precisions really ran
    assert np.abs(f32 - f64).max() < 2e-4
