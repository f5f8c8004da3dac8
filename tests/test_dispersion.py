"""Dispersion corrections (D3(BJ), D4) added by the calculator, in float64:
the sum equals the model plus the library's own ASE calculator, forces and
stress equal finite differences, per-atom energies add up, the batched path
adds the same correction, and bad settings are named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from conftest import perturbed

from crossfunctional.calculators import CrossFunctionalCalculator, predict_batch
from crossfunctional.calculators.dispersion import Dispersion, DispersionError, model_functional
from crossfunctional.models import export, load_model

FD_EPS_FORCES = 3e-6  # Å, central differences in float64 (as tests/test_calculator.py)
FD_EPS_STRAIN = 1e-6
TOL_E = 1e-8  # eV/atom
TOL_F = 1e-7  # eV/Å
TOL_S = 1e-9  # eV/Å³


def _graphite() -> Atoms:
    """AB graphite (4 atoms, a = 2.46 Å, c = 6.71 Å), rattled and strained."""
    a, c = 2.46, 6.71
    cell = [[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]]
    frac = [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]
    atoms = Atoms("C4", scaled_positions=frac, cell=cell, pbc=True)
    return perturbed(atoms, np.random.default_rng(7), rattle=0.04, strain=0.02)


def _mgo() -> Atoms:
    return perturbed(bulk("MgO", "rocksalt", a=4.25), np.random.default_rng(3), rattle=0.04, strain=0.02)


def _molecule() -> Atoms:
    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=3)
    return mol


def _library_calculator(method: str, functional: str):
    """The library's ASE calculator, configured independently of crossfunctional's code."""
    if method.startswith("d3bj"):
        from dftd3.ase import DFTD3

        return DFTD3(damping="d3bj", params_tweaks={"method": functional, "atm": method.endswith("-atm")})
    from dftd4.ase import DFTD4

    return DFTD4(method=functional, params_tweaks={"atm": method.endswith("-atm")})


def _evaluate(atoms: Atoms, calc) -> dict[str, np.ndarray | float]:
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


CASES = [
    ("chgnet-r2scan", "d3bj", "r2scan", "graphite"),
    ("chgnet-r2scan", "d4", "r2scan", "graphite"),
    ("chgnet-0.3.0", "d3bj", "pbe", "mgo"),
    ("chgnet-0.3.0", "d4", "pbe", "molecule"),
    ("chgnet-r2scan", "d4-atm", "r2scan", "mgo"),
    ("chgnet-0.3.0", "d3bj-atm", "pbe", "mgo"),
]
STRUCTURES = {"graphite": _graphite, "mgo": _mgo, "molecule": _molecule}


@pytest.mark.parametrize("name, method, functional, structure", CASES)
def test_sum_equals_model_plus_library_calculator(name, method, functional, structure, our_models):
    model = our_models[(name, "float64")]
    atoms = STRUCTURES[structure]()
    calc = CrossFunctionalCalculator(model, dispersion=method)
    assert calc.dispersion.functional == functional  # taken from the model's metadata
    total = _evaluate(atoms, calc)
    plain = _evaluate(atoms, CrossFunctionalCalculator(model))
    disp = _evaluate(atoms, _library_calculator(method, functional))
    n = len(atoms)
    assert abs(disp["energy"]) / n > 1e-3  # the correction is not vacuous
    assert abs(total["energy"] - plain["energy"] - disp["energy"]) / n < TOL_E
    assert abs(calc.results["dispersion_energy"] - disp["energy"]) / n < TOL_E
    np.testing.assert_allclose(total["forces"], plain["forces"] + disp["forces"], rtol=0, atol=TOL_F)
    assert np.abs(disp["forces"]).max() > 1e-5
    if atoms.pbc.all():
        np.testing.assert_allclose(total["stress"], plain["stress"] + disp["stress"], rtol=0, atol=TOL_S)
    else:
        assert "stress" not in calc.results
    # per-atom energies (the library's pairwise decomposition) add up to the total
    assert abs(calc.results["energies"].sum() - total["energy"]) < 1e-9 * n


@pytest.mark.parametrize(
    "name, method, structure", [("chgnet-r2scan", "d3bj", "graphite"), ("chgnet-0.3.0", "d4", "mgo")]
)
def test_forces_and_stress_match_finite_differences(name, method, structure, our_models):
    atoms = STRUCTURES[structure]()
    atoms.calc = CrossFunctionalCalculator(our_models[(name, "float64")], dispersion=method)
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    assert np.abs(forces).max() > 0.05 and np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=FD_EPS_FORCES), rtol=0, atol=1e-7)
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=FD_EPS_STRAIN), rtol=0, atol=TOL_S)


def test_dispersion_alone_matches_finite_differences():
    """The correction by itself (no model): its forces and stress are the
    derivatives of its energy, so the sign and unit conversions are right."""
    disp = Dispersion("d4", "r2scan")
    atoms = _graphite()

    def energy(a: Atoms) -> float:
        return disp.compute(a)["energy"]

    res = disp.compute(atoms)
    for i, k in [(0, 0), (1, 2), (3, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += FD_EPS_FORCES
        minus.positions[i, k] -= FD_EPS_FORCES
        assert abs(-(energy(plus) - energy(minus)) / (2 * FD_EPS_FORCES) - res["forces"][i, k]) < 1e-7
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    for v, (i, j) in enumerate(voigt):
        strain = np.zeros((3, 3))
        strain[i, j] = strain[j, i] = FD_EPS_STRAIN if i != j else FD_EPS_STRAIN
        e = []
        for sign in (1, -1):
            a = atoms.copy()
            a.set_cell(a.cell.array @ (np.eye(3) + sign * strain), scale_atoms=True)
            e.append(energy(a))
        d_e = (e[0] - e[1]) / (2 * FD_EPS_STRAIN) / (2 if i != j else 1)
        assert abs(d_e / atoms.get_volume() - res["stress"][v]) < 1e-9


def test_predict_batch_adds_the_same_correction(our_models):
    calc = CrossFunctionalCalculator(our_models[("chgnet-r2scan", "float64")], dispersion="d3bj")
    frames = [_graphite(), _mgo(), _molecule()]
    batched = predict_batch(frames, calc)
    for atoms, res in zip(frames, batched):
        single = atoms.copy()
        single.calc = calc
        n = len(atoms)
        assert abs(res["energy"] - single.get_potential_energy()) / n < TOL_E
        np.testing.assert_allclose(res["forces"], single.get_forces(), rtol=0, atol=TOL_F)
        np.testing.assert_allclose(res["energies"], calc.results["energies"], rtol=0, atol=TOL_E)
        if atoms.pbc.all():
            np.testing.assert_allclose(res["stress"], single.get_stress(), rtol=0, atol=TOL_S)
        assert abs(res["dispersion_energy"] - calc.results["dispersion_energy"]) < TOL_E * n


def test_explicit_functional_overrides_the_models(our_models):
    model = our_models[("chgnet-r2scan", "float64")]
    atoms = _mgo()
    got = _evaluate(atoms, CrossFunctionalCalculator(model, dispersion="d3bj", dispersion_functional="PBE"))
    plain = _evaluate(atoms, CrossFunctionalCalculator(model))
    disp = _evaluate(atoms, _library_calculator("d3bj", "pbe"))
    assert abs(got["energy"] - plain["energy"] - disp["energy"]) / len(atoms) < TOL_E


def test_exported_model_keeps_its_functional(tmp_path):
    path = export("chgnet-0.3.0", tmp_path / "gga.pt")
    calc = CrossFunctionalCalculator(str(path), dispersion="d4")
    assert calc.dispersion.functional == "pbe"
    assert model_functional({"model_name": "chgnet-r2scan"}) == "r2scan"


def test_bad_settings_are_named(our_models):
    model = our_models[("chgnet-r2scan", "float32")]
    with pytest.raises(DispersionError, match="unknown dispersion 'd3'"):
        CrossFunctionalCalculator(model, dispersion="d3")
    with pytest.raises(DispersionError, match="no D3\\(BJ\\) parameters for functional 'nosuchxc'"):
        CrossFunctionalCalculator(model, dispersion="d3bj", dispersion_functional="nosuchxc")
    with pytest.raises(DispersionError, match="without dispersion="):
        CrossFunctionalCalculator(model, dispersion_functional="r2scan")
    own = load_model("chgnet-r2scan")
    own.metadata_json = json.dumps({**json.loads(own.metadata_json), "model_name": "my_finetune.pth.tar"})
    with pytest.raises(DispersionError, match="my_finetune.pth.tar does not name the functional.*dispersion_functional="):
        CrossFunctionalCalculator(own, dispersion="d4")
    calc = CrossFunctionalCalculator(own, dispersion="d4", dispersion_functional="r2scan")
    assert calc.dispersion.label == "r2scan-D4"


def test_cli_predict_with_dispersion(tmp_path, our_models, capsys):
    from ase.io import write

    from crossfunctional.calculators.dispersion import DISPERSION_METHODS
    from crossfunctional.cli import main
    from crossfunctional.cli.common import DISPERSION_CHOICES

    assert set(DISPERSION_CHOICES) == set(DISPERSION_METHODS)
    atoms = _mgo()
    write(tmp_path / "mgo.extxyz", atoms)
    out = tmp_path / "pred.json"
    assert main(["predict", str(tmp_path / "mgo.extxyz"), "--dtype", "float64", "--dispersion", "d4", "-o", str(out)]) == 0
    frame = json.loads(out.read_text())["frames"][0]
    ref = _evaluate(atoms, CrossFunctionalCalculator(our_models[("chgnet-r2scan", "float64")], dispersion="d4"))
    assert abs(frame["energy_eV"] - ref["energy"]) / len(atoms) < TOL_E
    np.testing.assert_allclose(frame["forces_eV_per_A"], ref["forces"], atol=TOL_F)
    rc = main(["predict", str(tmp_path / "mgo.extxyz"), "--dispersion", "d3bj", "--dispersion-functional", "nosuchxc"])
    assert rc == 2
    assert "no D3(BJ) parameters for functional 'nosuchxc'" in capsys.readouterr().err


def test_relax_many_adds_the_correction_as_relax_does(our_models):
    """The batched relaxation (torch-sim) goes through the calculator's batch,
    so a calculator with a correction relaxes as ``relax`` one by one does."""
    from crossfunctional.workflows import relax
    from crossfunctional.workflows.batch_relax import relax_many

    calc = CrossFunctionalCalculator(our_models[("chgnet-r2scan", "float64")], dispersion="d3bj")
    frames = [bulk("MgO", "rocksalt", a=4.3), bulk("Si", "diamond", a=5.5)]
    plain = relax_many(frames, calculator=CrossFunctionalCalculator(our_models[("chgnet-r2scan", "float64")]), fmax=0.01)
    for atoms, got, without in zip(frames, relax_many(frames, calculator=calc, fmax=0.01), plain):
        work = atoms.copy()
        work.calc = calc
        ref = relax(work, fmax=0.01)
        assert got.converged and got.steps == ref.steps
        assert abs(got.energy - ref.energy) / len(atoms) < TOL_E
        assert got.atoms.get_volume() == pytest.approx(ref.atoms.get_volume(), rel=1e-8)
        assert got.atoms.get_volume() < without.atoms.get_volume()  # dispersion contracts


def test_pickled_calculator_keeps_its_correction():
    import pickle

    calc = CrossFunctionalCalculator("chgnet-0.3.0", dtype="float64", dispersion="d4")
    assert calc.todict()["dispersion"] == "d4"
    clone = pickle.loads(pickle.dumps(calc))
    assert clone.dispersion.label == "pbe-D4"
    atoms = _mgo()
    assert _evaluate(atoms, clone)["energy"] == pytest.approx(_evaluate(atoms, calc)["energy"], abs=1e-9)
