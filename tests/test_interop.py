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


# --------------------------------------------------------------------------- atomate2 / jobflow
#: the calculator dictionary that atomate2's force-field makers resolve (monty's @module/@callable)
ATOMATE2_FF = {"@module": "crossfunctional.calculators", "@callable": "CrossFunctionalCalculator"}


def _rocksalt_mgo():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.30), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()


def test_atomate2_relax_maker_equals_our_relax(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # atomate2's jobs write their files into the working directory
    pytest.importorskip("atomate2")
    from atomate2.forcefields.jobs import ForceFieldRelaxMaker
    from jobflow import run_locally
    from pymatgen.io.ase import AseAtomsAdaptor

    from crossfunctional.calculators import CrossFunctionalCalculator
    from crossfunctional.workflows import relax

    structure = _rocksalt_mgo()
    kwargs = {"model": "chgnet-r2scan", "dtype": "float64"}
    job = ForceFieldRelaxMaker(force_field_name=ATOMATE2_FF, calculator_kwargs=kwargs, relax_kwargs={"fmax": 1e-3}).make(structure)
    doc = run_locally(job, ensure_success=True, log=False)[job.uuid][1].output

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = CrossFunctionalCalculator(**kwargs)
    ours = relax(atoms, fmax=1e-3, steps=500)
    assert ours.converged
    assert doc.output.energy / len(structure) == pytest.approx(ours.energy / len(atoms), abs=2e-5)
    assert doc.structure.volume == pytest.approx(ours.atoms.get_volume(), rel=2e-4)


def test_atomate2_phonon_flow_equals_our_phonons(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # atomate2's jobs write their files into the working directory
    pytest.importorskip("atomate2")
    import numpy as np
    from atomate2.forcefields.flows.phonons import PhononMaker
    from atomate2.forcefields.jobs import ForceFieldRelaxMaker, ForceFieldStaticMaker
    from jobflow import run_locally
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from crossfunctional.workflows import phonons

    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.44), ["Si"], [[0, 0, 0]]).get_primitive_structure()
    kwargs = {"model": "chgnet-r2scan", "dtype": "float64"}
    maker = PhononMaker(
        min_length=8.0,
        use_symmetrized_structure="primitive",
        store_force_constants=False,
        bulk_relax_maker=ForceFieldRelaxMaker(force_field_name=ATOMATE2_FF, calculator_kwargs=kwargs, relax_kwargs={"fmax": 1e-4}),
        static_energy_maker=None,
        phonon_displacement_maker=ForceFieldStaticMaker(force_field_name=ATOMATE2_FF, calculator_kwargs=kwargs),
    )
    flow = maker.make(si)
    responses = run_locally(flow, ensure_success=True, log=False)
    docs = [r[1].output for r in responses.values() if type(r[1].output).__name__ == "PhononBSDOSDoc"]
    assert len(docs) == 1
    doc = docs[0]
    bands = doc.phonon_bandstructure
    gamma = [k for k, q in enumerate(bands.qpoints) if np.allclose(q.frac_coords, 0)][0]
    gamma_max_atomate2 = float(np.max(bands.bands[:, gamma]))  # THz

    ours = phonons(AseAtomsAdaptor.get_atoms(doc.structure), relax=False, supercell_matrix=np.array(doc.supercell_matrix), progress=False)
    ours.phonopy.run_qpoints([[0, 0, 0]])
    gamma_max_ours = float(np.max(ours.phonopy.qpoints.frequencies))
    assert gamma_max_atomate2 == pytest.approx(gamma_max_ours, abs=1e-3)  # THz
    assert 9.0 < gamma_max_ours < 12.5  # the model's soft Si optical mode (experiment 15.5 THz)
