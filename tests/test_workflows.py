"""Tests of crossfunctional.workflows: relaxation and the Sol58LC density benchmark.

Real numbers only: relaxed lattice constants are checked against the minimum of
an E(V) scan done with the same calculator, volumes and densities against
values derived here from geometry and atomic masses.
"""

from __future__ import annotations

import csv
import json
import os

# ASE's FrechetCellFilter solves many tiny 6x6 systems per step; a multi-threaded
# OpenBLAS makes each ~40x slower on a busy machine. Effective only if numpy is
# not imported yet.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_masses, atomic_numbers
from ase.eos import EquationOfState
from ase.io import read

from crossfunctional.calculators import CrossFunctionalCalculator
from crossfunctional.workflows import (
    DensityBenchmark,
    RelaxResult,
    build_solid,
    conventional_lattice_constant,
    density,
    density_benchmark,
    load_sol58lc,
    relax,
)

AMU_G = 1.66053906660e-24  # g, CODATA 2018


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small graphs on a shared machine: one torch thread is faster and kinder."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def calc64():
    return CrossFunctionalCalculator("chgnet-r2scan", dtype="float64")


@pytest.fixture(scope="module")
def calc32():
    return CrossFunctionalCalculator("chgnet-r2scan")


def eos_lattice_constant(atoms: Atoms, calc, atoms_per_conventional: int, a_guess: float) -> float:
    """Conventional lattice constant at the minimum of a Birch-Murnaghan fit of
    E(V) on a ±0.5 % grid of isotropically scaled cells (positions fixed in
    fractional coordinates). The grid is kept local: the model's E(V) is not
    Birch-Murnaghan-shaped over several %, and a ±2 % fit shifts the minimum of
    Si by 2e-3 Å."""
    volumes, energies = [], []
    for a in a_guess * np.linspace(0.995, 1.005, 9):
        trial = atoms.copy()
        scale = a / (abs(atoms.get_volume()) * atoms_per_conventional / len(atoms)) ** (1 / 3)
        trial.set_cell(atoms.cell * scale, scale_atoms=True)
        trial.calc = calc
        volumes.append(trial.get_volume())
        energies.append(trial.get_potential_energy())
    v0, _, _ = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    return (v0 * atoms_per_conventional / len(atoms)) ** (1 / 3)


# ----------------------------------------------------------------------------- relax


def test_relax_strained_al_lands_at_eos_minimum(calc64):
    start = bulk("Al", "fcc", a=4.019 * 1.03)  # 3 % tensile strain
    start.calc = calc64
    original = start.get_cell().copy()
    res = relax(start, fmax=0.001, steps=300)
    assert isinstance(res, RelaxResult)
    assert res.converged and 0 < res.steps < 300
    assert res.fmax < 0.001
    np.testing.assert_allclose(start.get_cell(), original)  # input untouched
    a_relax = (4 * res.atoms.get_volume()) ** (1 / 3)
    a_eos = eos_lattice_constant(res.atoms, calc64, 4, a_relax)
    assert abs(a_relax - a_eos) < 1e-3, (a_relax, a_eos)
    assert abs(a_relax - 4.019 * 1.03) > 0.05  # it moved
    assert res.energy == pytest.approx(res.atoms.get_potential_energy())
    assert np.abs(res.atoms.get_stress()).max() < 1e-3  # eV/Å³


def test_relax_compressed_rattled_si_float32(calc32):
    start = bulk("Si", "diamond", a=5.422 * 0.97)
    start.rattle(0.02, seed=1)
    start.calc = calc32
    res = relax(start, fmax=0.002, steps=500)
    assert res.converged and res.fmax < 0.002
    a_relax = (4 * res.atoms.get_volume()) ** (1 / 3)
    # ideal diamond restored: 4 equal bonds of length a sqrt(3)/4, fcc primitive cell angles
    dist = res.atoms.repeat(2).get_all_distances(mic=True)[0]
    np.testing.assert_allclose(np.sort(dist)[1:5], a_relax * 3**0.5 / 4, atol=1e-3)
    np.testing.assert_allclose(res.atoms.cell.cellpar()[3:], 60.0, atol=0.1)
    ideal = bulk("Si", "diamond", a=a_relax)
    a_eos = eos_lattice_constant(ideal, calc32, 8, a_relax)
    assert abs(a_relax - a_eos) < 1e-3, (a_relax, a_eos)


def test_relax_matches_upstream_struct_optimizer(calc32):
    """Same protocol as chgnet.model.StructOptimizer (FIRE + FrechetCellFilter) on the same cell."""
    from chgnet.model import CHGNet, StructOptimizer

    start = bulk("Al", "fcc", a=4.019 * 0.98)
    upstream = StructOptimizer(model=CHGNet.load(model_name="r2scan", verbose=False), use_device="cpu")
    ref = upstream.relax(start.copy(), fmax=0.01, steps=1000, verbose=False)
    a_ref = (4 * ref["final_structure"].volume) ** (1 / 3)
    start.calc = calc32
    res = relax(start, fmax=0.01, steps=1000)
    assert res.converged
    a = (4 * res.atoms.get_volume()) ** (1 / 3)
    assert abs(a - a_ref) < 1e-3, (a, a_ref)
    assert abs(a - 4.019 * 0.98) > 0.02  # it moved


def test_relax_unconverged_flag_and_step_limit(calc32):
    start = bulk("Cu", "fcc", a=3.595 * 1.06)
    start.calc = calc32
    res = relax(start, fmax=1e-4, steps=2)
    assert not res.converged
    assert res.steps == 2
    assert res.fmax > 1e-4


def test_relax_trajectory_written(calc32, tmp_path):
    start = bulk("Cu", "fcc", a=3.595 * 1.02)
    start.calc = calc32
    path = tmp_path / "sub" / "relax.traj"
    res = relax(start, fmax=0.01, steps=200, trajectory=path)
    assert res.trajectory == path and path.is_file()
    frames = read(path, ":")
    assert len(frames) == res.steps + 1  # initial structure plus one frame per step
    assert frames[0].get_volume() == pytest.approx(start.get_volume())
    assert frames[-1].get_potential_energy() == pytest.approx(res.energy, abs=1e-6)
    np.testing.assert_allclose(frames[-1].cell[:], res.atoms.cell[:], atol=1e-10)
    assert sorted(p.name for p in path.parent.iterdir()) == ["relax.traj"]  # no temporaries left


def test_relax_fix_symmetry_keeps_space_group(calc32):
    import spglib

    def space_group(atoms, symprec):
        cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
        return spglib.get_symmetry_dataset(cell, symprec=symprec).number

    start = bulk("Si", "diamond", a=5.5)
    start.positions[1] += [0.004, -0.002, 0.003]  # off Fd-3m by less than FixSymmetry's symprec (0.01)
    assert space_group(start, 1e-4) != 227
    start.calc = calc32
    res = relax(start, fmax=0.01, steps=300, fix_symmetry=True, optimizer="BFGS")
    assert res.converged and res.steps > 0
    assert space_group(res.atoms, 1e-5) == 227
    assert (4 * res.atoms.get_volume()) ** (1 / 3) < 5.47  # the cell relaxed too


def test_relax_molecule_without_cell_filter():
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.9]])
    res = relax(h2, fmax=0.01, steps=200, cell_filter=None, optimizer="bfgs", model="chgnet-r2scan")
    assert isinstance(res.atoms.calc, CrossFunctionalCalculator)
    assert h2.calc is None
    assert res.converged and res.fmax < 0.01
    assert np.abs(res.atoms.get_forces()).max() < 0.01


def test_relax_default_calculator_when_none_attached():
    atoms = bulk("Al", "fcc", a=4.05)
    res = relax(atoms, fmax=0.05, steps=50)
    assert isinstance(res.atoms.calc, CrossFunctionalCalculator)
    assert res.atoms.calc.metadata["model_name"] == "chgnet-r2scan"


def test_relax_bad_names_give_clear_errors():
    atoms = bulk("Al", "fcc", a=4.05)
    with pytest.raises(ValueError, match=r"unknown optimizer 'Newton'.*FIRE.*") as err:
        relax(atoms, optimizer="Newton")
    assert "BFGS" in str(err.value) and "LBFGS" in str(err.value)
    with pytest.raises(ValueError, match=r"unknown cell_filter 'StressFilter'.*FrechetCellFilter.*ExpCellFilter.*UnitCellFilter"):
        relax(atoms, cell_filter="StressFilter")
    molecule = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.75]])
    with pytest.raises(ValueError, match=r"periodic in all three directions.*cell_filter=None"):
        relax(molecule)
    slab = bulk("Al", "fcc", a=4.05)
    slab.pbc = [True, True, False]
    with pytest.raises(ValueError, match="pbc"):
        relax(slab, cell_filter="UnitCellFilter")
    with pytest.raises(ValueError, match="fmax"):
        relax(atoms, fmax=0)
    with pytest.raises(ValueError, match="steps"):
        relax(atoms, steps=-1)
    with pytest.raises(ValueError, match="empty"):
        relax(Atoms())


# ----------------------------------------------------------------------------- Sol58LC


def test_load_sol58lc():
    solids = load_sol58lc()
    assert len(solids) == 58
    assert len({s.name for s in solids}) == 58
    assert {s.prototype for s in solids} == {"fcc", "bcc", "diamond", "rocksalt", "cesium_chloride", "zincblende"}
    cu = next(s for s in solids if s.name == "Cu_fcc")
    assert (cu.formula, cu.prototype, cu.a_exp, cu.a_pbe) == ("Cu", "fcc", 3.595, 3.641)
    assert all(2.5 < s.a_exp < 7.0 and abs(s.a_pbe / s.a_exp - 1) < 0.05 for s in solids)


@pytest.mark.parametrize(
    "prototype, n_atoms, volume_factor",
    [
        ("fcc", 1, 1 / 4),
        ("bcc", 1, 1 / 2),
        ("diamond", 2, 1 / 4),
        ("rocksalt", 2, 1 / 4),
        ("zincblende", 2, 1 / 4),
        ("cesium_chloride", 2, 1.0),
    ],
)
def test_build_solid_volumes(prototype, n_atoms, volume_factor):
    solid = next(s for s in load_sol58lc() if s.prototype == prototype)
    a = 4.2
    atoms = build_solid(solid, a=a)
    assert len(atoms) == n_atoms and atoms.pbc.all()
    assert atoms.get_volume() == pytest.approx(volume_factor * a**3, rel=1e-12)
    np.testing.assert_allclose(atoms.positions[0], 0.0, atol=1e-12)  # first element at the origin
    expected = Atoms(solid.formula).get_chemical_symbols()
    assert atoms.get_chemical_symbols() == (expected * n_atoms)[:n_atoms]  # e.g. Si2, NaCl, FeAl
    assert conventional_lattice_constant(atoms, prototype) == pytest.approx(a, rel=1e-12)
    # nearest-neighbour distance of each prototype
    d_nn = {"fcc": a / 2**0.5, "bcc": a * 3**0.5 / 2, "diamond": a * 3**0.5 / 4, "zincblende": a * 3**0.5 / 4,
            "rocksalt": a / 2, "cesium_chloride": a * 3**0.5 / 2}[prototype]  # fmt: skip
    big = atoms.repeat(3)
    dist = big.get_all_distances(mic=True)
    assert dist[dist > 1e-6].min() == pytest.approx(d_nn, rel=1e-9)


def test_build_solid_defaults_to_a_exp_and_all_58_build():
    for solid in load_sol58lc():
        atoms = build_solid(solid)
        assert conventional_lattice_constant(atoms, solid.prototype) == pytest.approx(solid.a_exp, rel=1e-12)
        assert sorted(set(atoms.get_chemical_symbols())) == sorted(set(Atoms(solid.formula).get_chemical_symbols()))
    with pytest.raises(ValueError, match="positive"):
        build_solid(load_sol58lc()[0], a=-1.0)


def test_density_of_copper():
    cu = next(s for s in load_sol58lc() if s.name == "Cu_fcc")
    a = 3.595
    expected = 4 * atomic_masses[atomic_numbers["Cu"]] * AMU_G / (a * 1e-8) ** 3  # 4 atoms per cubic cell
    assert density(build_solid(cu, a=a)) == pytest.approx(expected, rel=1e-6)
    assert 8.9 < expected < 9.2  # g/cm³, the textbook value
    nacl = next(s for s in load_sol58lc() if s.name == "NaCl_b1")
    m = atomic_masses[atomic_numbers["Na"]] + atomic_masses[atomic_numbers["Cl"]]
    assert density(build_solid(nacl)) == pytest.approx(4 * m * AMU_G / (5.565e-8) ** 3, rel=1e-6)


def test_density_benchmark_two_solids_writes_outputs(tmp_path):
    models = ("chgnet-r2scan", "chgnet-0.3.0")
    bench = density_benchmark(models=models, solids=["Al_fcc", "NaCl_b1"], progress=False)
    assert isinstance(bench, DensityBenchmark)
    paths = bench.write(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "density_benchmark.csv",
        "density_benchmark.json",
        "density_errors.png",
    ]
    data = json.loads(paths["json"].read_text())
    assert set(data["summary"]) == {*models, "pbe"}
    assert [s["name"] for s in data["solids"]] == ["Al_fcc", "NaCl_b1"]
    for model in models:
        errors = []
        for s in data["solids"]:
            r = s["models"][model]
            assert set(r) >= {"a", "density", "rel_error_percent", "converged", "steps"}
            assert r["converged"] is True and 0 <= r["steps"] <= 1000
            assert abs(r["a"] / s["a_exp"] - 1) < 0.05
            assert r["rel_error_percent"] == pytest.approx(100 * (r["a"] - s["a_exp"]) / s["a_exp"])
            # density from the relaxed lattice constant, 4 formula units per cubic cell
            atoms = Atoms(s["formula"])
            assert r["density"] == pytest.approx(4 * atoms.get_masses().sum() * AMU_G / (r["a"] * 1e-8) ** 3, rel=1e-5)
            errors.append(r["rel_error_percent"])
        assert data["summary"][model]["mare_percent"] == pytest.approx(np.mean(np.abs(errors)))
        assert data["summary"][model]["mre_percent"] == pytest.approx(np.mean(errors))
    pbe = [100 * (s["a_pbe"] - s["a_exp"]) / s["a_exp"] for s in data["solids"]]
    assert data["summary"]["pbe"]["mare_percent"] == pytest.approx(np.mean(np.abs(pbe)))
    # the benchmark relaxation is the plain relax() protocol
    al = next(s for s in load_sol58lc() if s.name == "Al_fcc")
    ref = relax(build_solid(al), fmax=0.01, steps=1000, model="chgnet-r2scan")
    assert data["solids"][0]["models"]["chgnet-r2scan"]["a"] == pytest.approx((4 * ref.atoms.get_volume()) ** (1 / 3), abs=1e-6)

    with open(paths["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["Al_fcc", "NaCl_b1"]
    assert float(rows[1]["chgnet-0.3.0_a"]) == pytest.approx(data["solids"][1]["models"]["chgnet-0.3.0"]["a"], abs=1e-5)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = DensityBenchmark.read(paths["json"])
    assert again.to_dict()["summary"] == data["summary"]
    table = bench.table()
    assert "Al_fcc" in table and "MARE" in table and "chgnet-0.3.0" in table


def test_density_benchmark_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown solid 'Xx_fcc'"):
        density_benchmark(solids=["Xx_fcc"], progress=False)
    with pytest.raises(ValueError, match="distinct"):
        density_benchmark(models=("chgnet-r2scan", "chgnet-r2scan"), solids=["Al_fcc"], progress=False)
