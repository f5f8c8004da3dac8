"""Side by side with other packages: torch_geometric's patches, atomate2 and jobflow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_SCRIPT = """
import json, sys
if sys.argv[1] == "pyg-first":
    import torch_geometric  # replaces torch.index_select and torch.select with Python wrappers
import torch
torch.set_num_threads(1)
from ase.build import bulk
from crossfunctional.calculators import CrossFunctionalCalculator
atoms = bulk("MgO", "rocksalt", a=4.2) * (2, 1, 1)
atoms.rattle(0.05, seed=1)
atoms.calc = CrossFunctionalCalculator(dtype="float64")
print(json.dumps({"patched": torch.index_select.__module__ != "torch",
                  "energy": atoms.get_potential_energy(), "forces": atoms.get_forces().tolist()}))
"""


def _run(order: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, order], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_model_independent_of_torch_geometric_patches():
    pytest.importorskip("torch_geometric")
    plain, patched = _run("plain"), _run("pyg-first")
    assert patched["patched"], "torch_geometric no longer patches torch.index_select: the test checks nothing"
    assert patched["energy"] == pytest.approx(plain["energy"], abs=1e-10)
    assert max(abs(a - b) for fa, fb in zip(patched["forces"], plain["forces"]) for a, b in zip(fa, fb)) < 1e-10
