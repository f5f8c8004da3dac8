"""The memory-lean block-by-block gradient equals the one-pass gradient."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk

from crossfunctional.models import load_model
from crossfunctional.neighbors import neighbor_list


@pytest.fixture(scope="module")
def mgo_inputs():
    atoms = bulk("MgO", "rocksalt", a=4.21, cubic=True)  # Mg-Mg just under 3 Å: many angles
    atoms.rattle(0.05, seed=2)
    return neighbor_list(atoms, 6.0).to_torch("cpu", torch.float64)


@pytest.mark.parametrize("scripted", [False, True])
def test_blockwise_equals_one_pass(mgo_inputs, scripted):
    model = load_model("chgnet-r2scan", dtype="float64")
    if scripted:
        model = torch.jit.script(model)
    model.recompute_threshold = 10**12
    energies, magmoms, grad = model(*mgo_inputs, True)
    model.recompute_threshold = 0
    energies_b, magmoms_b, grad_b = model(*mgo_inputs, True)
    assert torch.equal(energies, energies_b)
    assert torch.equal(magmoms, magmoms_b)
    assert grad.abs().max() > 0.1  # a rattled cell has real forces
    torch.testing.assert_close(grad_b, grad, rtol=0, atol=1e-12)


def test_gradient_under_no_grad_is_a_clear_error(mgo_inputs):
    model = load_model("chgnet-r2scan", dtype="float64")
    with torch.no_grad(), pytest.raises(RuntimeError, match="outside torch.no_grad"):
        model(*mgo_inputs, True)
    with torch.no_grad():
        energies, _, grad = model(*mgo_inputs, False)  # energies alone are fine
    assert grad.shape == (0, 3) and torch.isfinite(energies).all()
