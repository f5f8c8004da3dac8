"""Meeting chgnet, pymatgen and ASE users where they are: pymatgen objects in
and out, upstream's calls and names, a calculator that pickles, is safe under
threads, refuses unknown arguments and picks its thread count."""

from __future__ import annotations

import multiprocessing
import pickle
import threading

import numpy as np
import pytest
import torch
from ase.build import bulk
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from crossfunctional.calculators import CrossFunctionalCalculator, predict_batch, predict_structure
from crossfunctional.workflows import relax

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def calc():
    return CrossFunctionalCalculator(model="chgnet-r2scan")


@pytest.fixture(scope="module")
def upstream():
    from chgnet.model import CHGNet

    return CHGNet.load(model_name="r2scan", verbose=False)


def _mgo() -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.25), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s = s.get_primitive_structure()
    s.perturb(0.05, min_distance=0.01)
    return s


def test_structure_into_calculator_batch_and_relax(calc):
    structure = _mgo()
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calc
    ref = atoms.get_potential_energy()
    assert calc.get_potential_energy(structure) == pytest.approx(ref, abs=1e-6)
    assert predict_batch([structure], calc)[0]["energy"] == pytest.approx(ref, abs=1e-5)
    result = relax(structure, model="chgnet-r2scan", fmax=0.05)
    assert result.converged
    assert isinstance(result.final_structure, Structure)
    assert result.final_structure.composition.reduced_formula == "MgO"
    assert result.final_structure.volume == pytest.approx(result.atoms.get_volume())


def test_predict_structure_matches_upstream(upstream):
    structures = [_mgo(), AseAtomsAdaptor.get_structure(bulk("Si", "diamond", a=5.47))]
    ours = predict_structure(structures, model="r2scan", task="efsm")  # upstream's model name
    theirs = upstream.predict_structure(structures, task="efsm")
    for o, t in zip(ours, theirs):
        assert set(o) == {"e", "f", "s", "m"}
        assert float(o["e"]) == pytest.approx(float(t["e"]), abs=2e-5)  # eV/atom
        np.testing.assert_allclose(o["f"], t["f"], atol=2e-4)  # eV/Å
        np.testing.assert_allclose(o["s"], t["s"], atol=0.01)  # GPa, 3x3
        np.testing.assert_allclose(o["m"], t["m"], atol=1e-4)  # μB
    single = predict_structure(structures[0], task="ef")
    # one structure alone sums in another float32 order than in a batch of two: ~1e-6 eV/atom apart
    assert set(single) == {"e", "f"} and float(single["e"]) == pytest.approx(float(ours[0]["e"]), abs=1e-5)
    with pytest.raises(ValueError, match="letters e, f, s, m"):
        predict_structure(structures[0], task="ex")


def test_upstream_chgnet_object_is_accepted(upstream, calc):
    atoms = AseAtomsAdaptor.get_atoms(_mgo())
    atoms.calc = calc
    ref = atoms.get_potential_energy()
    other = atoms.copy()
    other.calc = CrossFunctionalCalculator(model=upstream)
    assert other.get_potential_energy() == pytest.approx(ref, abs=1e-6)


def test_unknown_keyword_and_todict():
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) use_device; valid: model, device, dtype"):
        CrossFunctionalCalculator(use_device="cuda")
    c = CrossFunctionalCalculator(model="chgnet-0.3.0", dtype="float64", threads=1)
    d = c.todict()
    assert d["model"] == "chgnet-0.3.0" and d["dtype"] == "float64" and d["device"] == "cpu" and d["threads"] == 1


def _energy_in_worker(atoms):
    return atoms.get_potential_energy()


def test_calculator_pickles_and_runs_in_a_process_pool(calc):
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.03, seed=2)
    atoms.calc = calc
    ref = atoms.get_potential_energy()
    clone = pickle.loads(pickle.dumps(calc))
    assert clone.todict() == calc.todict()
    work = atoms.copy()
    work.calc = clone
    assert work.get_potential_energy() == pytest.approx(ref, abs=1e-6)
    # a module passed in is carried along (TorchScript serialised, eager modules pickled)
    from_module = pickle.loads(pickle.dumps(CrossFunctionalCalculator(model=calc.runner)))
    work.calc = from_module
    assert work.get_potential_energy() == pytest.approx(ref, abs=1e-6)
    fresh = atoms.copy()
    fresh.calc = CrossFunctionalCalculator(model="chgnet-r2scan")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        energies = pool.map_async(_energy_in_worker, [fresh, fresh]).get(timeout=300)  # fails instead of waiting forever
    assert energies == pytest.approx([ref, ref], abs=1e-5)  # float32 in other processes: a few ulps of -11 eV


def test_one_calculator_shared_by_two_threads(calc):
    si = bulk("Si", "diamond", a=5.43)
    mgo = AseAtomsAdaptor.get_atoms(_mgo())
    refs = {}
    for name, atoms in (("si", si), ("mgo", mgo)):
        a = atoms.copy()
        a.calc = CrossFunctionalCalculator(model="chgnet-r2scan")
        refs[name] = a.get_potential_energy()
    wrong = []

    def worker(name, atoms):
        for k in range(40):
            a = atoms.copy()
            a.positions[0, 0] += 1e-4 * k  # a new state each call
            a.calc = calc
            e = a.get_potential_energy()
            if abs(e - refs[name]) > 0.05:
                wrong.append((name, k, e))

    threads = [threading.Thread(target=worker, args=item) for item in (("si", si), ("mgo", mgo))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, wrong[:5]


def test_small_graphs_run_on_one_thread():
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.atom_graph_cutoff = inner.atom_graph_cutoff
            self.metadata_json = inner.metadata_json

        def forward(self, *args):
            seen.append(torch.get_num_threads())
            return self.inner(*args)

    from crossfunctional.models import load_model

    model = Recording(load_model("chgnet-r2scan"))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        small = bulk("Si", "diamond", a=5.43)
        small.calc = CrossFunctionalCalculator(model=model)  # threads="auto"
        small.get_potential_energy()
        big = bulk("Si", "diamond", a=5.43, cubic=True) * (4, 4, 4)  # 512 atoms, 23,552 edges > 20,000
        big.calc = CrossFunctionalCalculator(model=model)
        big.get_potential_energy()
        fixed = bulk("Si", "diamond", a=5.43)
        fixed.calc = CrossFunctionalCalculator(model=model, threads=2)
        fixed.get_potential_energy()
        assert seen == [1, 2, 2]
        assert torch.get_num_threads() == 2  # restored after each call
    finally:
        torch.set_num_threads(before)


def test_structure_into_every_workflow(calc):
    """A pymatgen Structure goes into phonons, ASE MD, EOS and elastic constants
    as it goes into relax, with the numbers of its Atoms."""
    from crossfunctional.workflows import phonons
    from crossfunctional.workflows.eos import eos
    from crossfunctional.workflows.lammps_md import ase_md

    structure = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.44), ["Si"], [[0, 0, 0]]).get_primitive_structure()
    atoms = AseAtomsAdaptor.get_atoms(structure)
    kw = dict(relax=False, supercell_matrix=2, mesh_length=5.0, band_npoints=3, t_max=100, progress=False)
    ph_s, ph_a = phonons(structure, **kw), phonons(atoms, **kw)
    np.testing.assert_allclose(ph_s.phonopy.force_constants, ph_a.phonopy.force_constants, atol=1e-10)
    md = ase_md(structure, calculator=calc, ensemble="nve", temperature=300, steps=3, thermo_every=1, dump_every=1, seed=1)
    assert len(md.trajectory) == 4 and md.trajectory[0].get_chemical_formula() == "Si2"
    fit_s = eos(structure, calculator=calc)
    fit_a = eos(atoms, calculator=calc)
    assert fit_s.b0 == pytest.approx(fit_a.b0, rel=1e-9) and fit_s.v0 == pytest.approx(fit_a.v0, rel=1e-9)
