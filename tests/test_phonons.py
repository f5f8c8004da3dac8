"""Phonon workflow (crossfunctional.workflows.phonons): geometry helpers, forces
against finite differences, force constants against phonopy driven directly,
batched force evaluation and the memory guard, acoustic sum rule, Dulong–Petit,
imaginary modes, NAC, files, CLI, errors.

Small supercells and coarse meshes keep this under a minute on 2 CPU cores;
the converged silicon numbers live in benchmarks/results/phonons/.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

pytest.importorskip("phonopy")
pytest.importorskip("seekpath")

from crossfunctional.calculators import CrossFunctionalCalculator  # noqa: E402
from crossfunctional.io import InputFileError  # noqa: E402
from crossfunctional.workflows.phonons import (  # noqa: E402
    PhononError,
    evaluate_forces,
    memory_estimate,
    mesh_for_length,
    perpendicular_widths,
    phonons,
    seekpath_band_path,
    supercell_matrix_for_length,
)

R_GAS = 8.314462618  # J/K/mol
A_SI = 5.44


@pytest.fixture(scope="module")
def calc():
    return CrossFunctionalCalculator("chgnet-r2scan", dtype="float64")


@pytest.fixture(scope="module")
def si(calc):
    """Si, pre-relaxed, 54-atom supercell (3x3x3 primitive cells)."""
    return phonons(
        bulk("Si", "diamond", A_SI), calculator=calc, supercell_min_length=8.0, mesh_length=30.0, progress=False
    )


# --- geometry -----------------------------------------------------------------


def test_perpendicular_widths():
    a = 4.0
    np.testing.assert_allclose(perpendicular_widths(np.eye(3) * a), [a, a, a])
    fcc = bulk("Cu", "fcc", a).cell.array  # (a/2)(0,1,1), ...: widths a/sqrt(3)
    np.testing.assert_allclose(perpendicular_widths(fcc), [a / np.sqrt(3)] * 3)
    stack = np.stack([np.eye(3), 2 * np.eye(3)])
    np.testing.assert_allclose(perpendicular_widths(stack), [[1, 1, 1], [2, 2, 2]])


def test_supercell_search():
    import spglib

    conv = bulk("Si", "diamond", A_SI, cubic=True)
    m = supercell_matrix_for_length(conv.cell.array, 15.0)
    np.testing.assert_array_equal(m, 3 * np.eye(3, dtype=int))  # 16.32 Å; 2 cells = 10.88 Å too thin

    prim = bulk("Si", "diamond", A_SI)
    rot = spglib.get_symmetry((prim.cell.array, prim.get_scaled_positions(), prim.numbers))["rotations"]
    m = supercell_matrix_for_length(prim.cell.array, 15.0, rot)
    assert round(np.linalg.det(m)) == 108  # the conventional 3x3x3 cube, 216 atoms
    widths = perpendicular_widths(m.T @ prim.cell.array)
    np.testing.assert_allclose(widths, 3 * A_SI)
    # without the symmetry requirement a smaller (lower-symmetry) cell exists, still >= 15 Å wide
    m_free = supercell_matrix_for_length(prim.cell.array, 15.0)
    assert round(np.linalg.det(m_free)) < 108
    assert perpendicular_widths(m_free.T @ prim.cell.array).min() >= 15.0
    # the diagonal multiple of the primitive cell would need 5x5x5 = 125 cells
    assert np.ceil(15.0 / perpendicular_widths(prim.cell.array)).prod() == 125

    hcp = bulk("Mg", "hcp", 3.2, 5.2)
    m = supercell_matrix_for_length(hcp.cell.array, 8.0)
    assert perpendicular_widths(m.T @ hcp.cell.array).min() >= 8.0
    assert round(np.linalg.det(m)) <= 18
    np.testing.assert_array_equal(supercell_matrix_for_length(hcp.cell.array, 0.0), np.eye(3))


def test_mesh_for_length():
    np.testing.assert_array_equal(mesh_for_length(np.eye(3) * 4.0, 30.0), [8, 8, 8])  # ceil(30/4)
    np.testing.assert_array_equal(mesh_for_length(np.diag([4.0, 4.0, 40.0]), 30.0), [8, 8, 1])


def test_band_path_in_rotated_cell():
    """Labels land on the right Cartesian points whatever the orientation."""
    from scipy.spatial.transform import Rotation

    prim = bulk("Si", "diamond", A_SI)
    rot = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    cell = prim.cell.array @ rot.T
    segments, labels, connections, points = seekpath_band_path(cell, prim.get_scaled_positions(), prim.numbers)
    recip = np.linalg.inv(cell).T  # rows b_i, no 2π
    cart = {k: np.asarray(v) @ recip for k, v in points.items()}
    np.testing.assert_allclose(np.linalg.norm(cart["X"]), 1 / A_SI, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(cart["L"]), np.sqrt(3) / (2 * A_SI), atol=1e-10)
    # X lies along a cube axis of the rotated crystal, L along a body diagonal
    x_dir = rot.T @ (cart["X"] * A_SI)
    assert np.sort(np.abs(x_dir)) == pytest.approx([0, 0, 1], abs=1e-10)
    l_dir = rot.T @ (cart["L"] * 2 * A_SI)
    assert np.abs(l_dir) == pytest.approx([1, 1, 1], abs=1e-10)
    assert labels[0] == ("Γ", "X") and len(segments) == len(labels) == len(connections)
    np.testing.assert_allclose(segments[0][0], 0.0, atol=1e-12)
    np.testing.assert_allclose(segments[0][-1], points["X"], atol=1e-12)


# --- the workflow ---------------------------------------------------------------


def test_forces_agree_with_energy_finite_differences(si, calc):
    """Forces on a displaced supercell = -dE/dx by central differences (h = 1e-3 Å)."""
    sc = [_to_ase(c) for c in si.phonopy.supercells_with_displacements][0]
    forces = evaluate_forces(calc, [sc], progress=False)[0]
    np.testing.assert_allclose(forces, si.forces[0], atol=1e-12)
    disp_atom = si.phonopy.dataset["first_atoms"][0]["number"]
    h = 1e-3
    checked = []
    for atom in (disp_atom, (disp_atom + 1) % len(sc), (disp_atom + 7) % len(sc)):
        for k in range(3):
            e = []
            for sign in (1, -1):
                work = sc.copy()
                work.positions[atom, k] += sign * h
                work.calc = calc
                e.append(work.get_potential_energy())
            fd = -(e[0] - e[1]) / (2 * h)
            checked.append((forces[atom, k], fd))
    got, fd = np.array(checked).T
    np.testing.assert_allclose(got, fd, atol=2e-4)
    assert np.abs(got).max() > 0.01  # the displacement produced real forces


def _to_ase(cell):
    return Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)


def test_force_constants_match_phonopy_by_hand(si, calc):
    """The same unit cell, supercell and calculator through plain phonopy."""
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    unit = si.atoms
    ph = Phonopy(
        PhonopyAtoms(
            symbols=unit.get_chemical_symbols(),
            cell=unit.cell.array,
            scaled_positions=unit.get_scaled_positions(),
            masses=unit.get_masses(),  # the workflow uses the masses of the ase.Atoms (ASE's table)
        ),
        supercell_matrix=si.summary.supercell_matrix,
        primitive_matrix="P",  # the unit cell is already primitive
    )
    ph.generate_displacements(distance=0.01)
    forces = []
    for sc in ph.supercells_with_displacements:
        atoms = _to_ase(sc)
        atoms.calc = calc
        forces.append(atoms.get_forces())
    ph.forces = np.array(forces)
    ph.produce_force_constants()
    ph.symmetrize_force_constants()
    assert ph.force_constants.shape == si.phonopy.force_constants.shape == (54, 54, 3, 3)
    np.testing.assert_allclose(si.phonopy.force_constants, ph.force_constants, atol=1e-10)
    q = [[0, 0, 0], [0.5, 0, 0.5], [0.5, 0.5, 0.5]]
    ph.run_qpoints(q)
    np.testing.assert_allclose(si.frequencies(q), ph.qpoints.frequencies, atol=1e-6)  # sqrt of ~1e-14 noise at Γ


class BatchingCalculator(CrossFunctionalCalculator):
    """Our calculator's ``predict_batch`` (batched graphs), recording how many
    frames each call gets."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def predict_batch(self, frames, **kwargs):
        self.batches.append(len(frames))
        return super().predict_batch(frames, **kwargs)


def test_memory_estimate_counts_the_batch():
    """Rocksalt MgO (a = 4.21 Å) has 6+12+8+6+24+24+12 = 92 neighbours within 6 Å
    (shells at sqrt(n)·a/2, n = 1..6, 8) and 6 + 12 = 18 shorter than 3 Å, so
    18·17 = 306 angles per atom; the 2x2x2 supercell has 16 atoms."""
    mgo = bulk("MgO", "rocksalt", 4.21)
    fc = 2 * 9 * 8 * 16**2  # phonopy's [16, 16, 3, 3] float64 force constants and a copy
    per_supercell = 16 * (92 * 40_000 + 306 * 35_000)
    assert memory_estimate(mgo, 8, None) == fc
    assert memory_estimate(mgo, 8, 6.0, batch=0) == fc
    assert memory_estimate(mgo, 8, 6.0) == pytest.approx(fc + per_supercell, rel=1e-12)
    assert memory_estimate(mgo, 8, 6.0, batch=3) == pytest.approx(fc + 3 * per_supercell, rel=1e-12)


def test_batched_evaluation_and_memory_guard(calc):
    """A calculator with predict_batch gets the displaced supercells in batches
    sized by batch_size and the memory limit (230 MB per 16-atom MgO supercell,
    see above); the forces equal those of ASE's get_forces, one supercell at a time."""
    mgo = bulk("MgO", "rocksalt", 4.21)
    kwargs = dict(relax=False, supercell_matrix=2, is_plusminus=True, mesh_length=5.0, band_npoints=3, t_max=100,
                  progress=False)
    batching = BatchingCalculator("chgnet-r2scan", dtype="float64")
    first = None
    for max_gb, batch_size, batches in ((100.0, 3, [3, 1]), (0.5, 8, [2, 2]), (0.3, 8, [1, 1, 1, 1])):
        batching.batches.clear()
        r = phonons(mgo, calculator=batching, max_memory_gb=max_gb, batch_size=batch_size, **kwargs)
        assert batching.batches == batches, (max_gb, batch_size)
        if first is None:
            first = r
            one_by_one = []
            for sc in r.phonopy.supercells_with_displacements:
                atoms = _to_ase(sc)
                atoms.calc = calc
                one_by_one.append(atoms.get_forces())
            assert len(one_by_one) == 4 and np.abs(one_by_one).max() > 0.01  # real forces
        np.testing.assert_allclose(r.forces, one_by_one, atol=1e-10)
        np.testing.assert_allclose(r.phonopy.force_constants, first.phonopy.force_constants, atol=1e-10)
    batching.batches.clear()
    too_small = r"16-atom supercell needs about 0\.23 GB of memory, more than the 0\.2 GB allowed"
    with pytest.raises(PhononError, match=too_small):
        phonons(mgo, calculator=batching, max_memory_gb=0.2, **kwargs)
    assert batching.batches == []
    with pytest.raises(PhononError, match="batch_size"):
        phonons(mgo, calculator=batching, batch_size=0, **kwargs)


def test_si_summary_acoustic_modes_and_frequencies(si):
    s = si.summary
    assert s.relaxed and s.relax_fmax < 1e-4 and s.residual_force < 1e-4
    assert s.n_atoms_primitive == 2 and s.n_atoms_supercell == 54
    assert min(s.supercell_widths) >= 8.0
    assert s.n_displacements == 1  # diamond: one symmetry-independent displacement
    # acoustic sum rule: the three acoustic modes at Γ vanish
    assert len(s.acoustic_gamma) == 3 and max(abs(f) for f in s.acoustic_gamma) < 0.05
    freqs = si.frequencies([[0, 0, 0], [0.5, 0, 0.5], [0.5, 0.5, 0.5]])
    assert np.abs(freqs[0, :3]).max() < 0.05
    # triply degenerate optical mode at Γ; the soft r2SCAN CHGNet puts it near 10.7 THz (expt 15.5)
    assert np.ptp(freqs[0, 3:]) < 1e-6
    assert 9.5 < freqs[0, 3] < 11.5
    # X: doubly degenerate TA, LA = LO; all real
    assert freqs[1, 0] == pytest.approx(freqs[1, 1], abs=1e-6) and freqs[1, 0] > 1.0
    assert not s.has_imaginary and s.min_frequency > -0.05
    assert s.min_frequency_where == "Γ"
    assert "no imaginary modes" in s.text()
    # lattice relaxed by the model (r2SCAN CHGNet: a ≈ 5.44 Å), symmetry kept
    a = si.atoms.cell.lengths()[0] * np.sqrt(2)
    assert 5.40 < a < 5.48
    np.testing.assert_allclose(si.atoms.cell.angles(), 60.0, atol=1e-8)


def test_dulong_petit(si):
    """C_V -> 3 N k_B: within 1 % at 2000 K, still > 1 % below at 1000 K for this soft model."""
    import inspect

    ph = si.phonopy
    # as the workflow: without the zero-weight acoustic modes at Γ where phonopy has the option
    opt = "exclude_gamma_acoustic" in inspect.signature(ph.run_thermal_properties).parameters
    ph.run_thermal_properties(temperatures=[1000.0, 2000.0], **({"exclude_gamma_acoustic": True} if opt else {}))
    cv = np.array(ph.thermal_properties.heat_capacity)  # J/K per mole of primitive cells
    limit = 3 * len(ph.primitive) * R_GAS
    assert abs(cv[1] / limit - 1) < 0.01
    assert cv[0] / limit < cv[1] / limit < 1.0
    th = si.thermal
    assert th["formula_unit"] == "Si" and th["atoms_per_formula_unit"] == 1
    k1000 = int(np.argmin(np.abs(th["temperature"] - 1000)))
    assert th["heat_capacity_atom"][k1000] == pytest.approx(cv[0] / 2, rel=1e-6)
    assert si.summary.dulong_petit_ratio == pytest.approx(cv[0] / limit, rel=1e-6)
    # entropy rises, free energy falls with temperature; F(0) = zero-point energy > 0
    assert np.all(np.diff(th["entropy_atom"][1:]) > 0)
    assert th["free_energy_atom"][0] > 0 and th["free_energy_atom"][-1] < 0


def test_imaginary_modes_detected(calc):
    """Simple-cubic Si is a saddle point: forces vanish by symmetry, R-point modes are imaginary."""
    sc_si = Atoms("Si", cell=np.eye(3) * 2.55, pbc=True)
    r = phonons(sc_si, calculator=calc, relax=False, supercell_min_length=7.0, mesh_length=15.0, progress=False)
    s = r.summary
    assert s.has_imaginary and s.n_imaginary_qpoints > 0
    assert s.min_frequency < -5.0
    worst = s.imaginary_modes[0]
    assert worst.frequency == pytest.approx(s.min_frequency)
    assert worst.where == "R" and np.allclose(np.abs(worst.qpoint), 0.5)
    assert "IMAGINARY MODES" in s.text()
    assert max(abs(f) for f in s.acoustic_gamma) < 0.05  # the acoustic sum rule still holds


def test_nac_from_born_file(calc, tmp_path):
    """Rocksalt MgO: without BORN no LO–TO splitting at Γ; a BORN file splits LO from TO."""
    mgo = bulk("MgO", "rocksalt", 4.21)
    kwargs = dict(calculator=calc, relax=False, supercell_matrix=2, mesh_length=10.0, t_max=300, progress=False)
    plain = phonons(mgo, **kwargs)
    born = tmp_path / "BORN"
    # illustrative rigid-ion values (Z* = ±2, ε∞ = 3), not a measurement
    born.write_text("14.399652\n3 0 0 0 3 0 0 0 3\n2 0 0 0 2 0 0 0 2\n-2 0 0 0 -2 0 0 0 -2\n")
    with_nac = phonons(mgo, born=born, **kwargs)
    assert not plain.summary.nac and with_nac.summary.nac
    np.testing.assert_allclose(plain.phonopy.force_constants, with_nac.phonopy.force_constants)
    plain.phonopy.run_qpoints([[0, 0, 0]], nac_q_direction=[1, 0, 0])
    f0 = plain.phonopy.qpoints.frequencies[0]
    with_nac.phonopy.run_qpoints([[0, 0, 0]], nac_q_direction=[1, 0, 0])
    f1 = with_nac.phonopy.qpoints.frequencies[0]
    assert np.ptp(f0[3:]) < 1e-6  # TO = LO without the correction
    assert f1[5] - f1[3] > 3.0  # LO pushed up by several THz
    np.testing.assert_allclose(f1[3:5], f0[3:5], atol=1e-6)  # TO unchanged
    assert with_nac.thermal["atoms_per_formula_unit"] == 2
    np.testing.assert_allclose(with_nac.thermal["heat_capacity_fu"], 2 * with_nac.thermal["heat_capacity_atom"])
    # the same as a dict
    as_dict = phonons(
        mgo,
        born={"born": [2 * np.eye(3), -2 * np.eye(3)], "dielectric": 3 * np.eye(3), "factor": 14.399652},
        **kwargs,
    )
    as_dict.phonopy.run_qpoints([[0, 0, 0]], nac_q_direction=[1, 0, 0])
    np.testing.assert_allclose(as_dict.phonopy.qpoints.frequencies[0], f1, atol=1e-8)


def test_write_and_reload(si, tmp_path):
    import phonopy
    import yaml
    from phonopy.file_IO import parse_FORCE_CONSTANTS

    files = si.write(tmp_path / "out")
    for name in (
        "phonopy_params.yaml", "band.yaml", "band_structure.png", "dos.png", "total_dos.dat",
        "thermal_properties.csv", "thermal_properties.yaml", "FORCE_CONSTANTS", "summary.json", "summary.txt",
        "unitcell.vasp",
    ):
        assert files[name].is_file() and files[name].stat().st_size > 0, name
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    q = [[0.5, 0, 0.5], [0.5, 0.5, 0.5]]
    reloaded = phonopy.load(files["phonopy_params.yaml"])
    reloaded.run_qpoints(q)
    np.testing.assert_allclose(reloaded.qpoints.frequencies, si.frequencies(q), atol=1e-6)
    fc = parse_FORCE_CONSTANTS(files["FORCE_CONSTANTS"])
    np.testing.assert_allclose(fc, si.phonopy.force_constants[si.phonopy.primitive.p2s_map], atol=1e-8)  # text, 10-15 digits
    band = yaml.safe_load(files["band.yaml"].read_text())
    assert band["nqpoint"] == sum(len(x) for x in si.band["qpoints"])
    header = files["thermal_properties.csv"].read_text().splitlines()[1]
    assert header.startswith("T_K,F_kJ_per_mol_fu,S_J_per_K_mol_fu,Cv_J_per_K_mol_fu")
    summary = json.loads(files["summary.json"].read_text())
    assert summary["has_imaginary"] is False and summary["n_atoms_supercell"] == 54
    with pytest.raises(ValueError, match="fc_format"):
        si.write(tmp_path / "x", fc_format="npy")


# --- errors -----------------------------------------------------------------------


def test_molecule_without_cell_is_rejected(calc):
    with pytest.raises(PhononError, match="no cell"):
        phonons(molecule("H2O"), calculator=calc)
    slab = bulk("Si", "diamond", A_SI)
    slab.pbc = [True, True, False]
    with pytest.raises(PhononError, match="all three directions"):
        phonons(slab, calculator=calc)
    with pytest.raises(InputFileError, match="expected ASE Atoms or a pymatgen Structure"):
        phonons("Si", calculator=calc)


def test_supercell_size_and_memory_limits(calc):
    si = bulk("Si", "diamond", A_SI)
    with pytest.raises(PhononError, match="more than max_atoms = 2000"):
        phonons(si, calculator=calc, relax=False, supercell_min_length=40.0)
    with pytest.raises(PhononError, match="more than max_atoms = 10"):
        phonons(si, calculator=calc, relax=False, supercell_matrix=2, max_atoms=10)
    with pytest.raises(PhononError, match="GB of memory"):
        phonons(si, calculator=calc, relax=False, supercell_matrix=2, max_memory_gb=1e-3)
    with pytest.raises(PhononError, match="positive determinant"):
        phonons(si, calculator=calc, relax=False, supercell_matrix=[[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    with pytest.raises(PhononError, match="BORN file not found"):
        phonons(si, calculator=calc, relax=False, supercell_matrix=1, mesh_length=5, born="/nonexistent/BORN",
                progress=False)


def test_structure_that_does_not_relax(calc):
    strained = bulk("Si", "diamond", 6.2)
    strained.positions[1] += [0.15, 0.0, 0.0]
    with pytest.raises(PhononError, match="did not relax"):
        phonons(strained, calculator=calc, relax_steps=2)


# --- command line -------------------------------------------------------------------


def test_cli_phonons(tmp_path, capsys):
    from ase.io import write

    from crossfunctional.cli import main

    cif = tmp_path / "Si.cif"
    write(cif, bulk("Si", "diamond", A_SI))
    out = tmp_path / "si_phonons"
    status = main(["phonons", str(cif), "--supercell", "2", "--mesh-length", "10", "--tmax", "300", "--tstep", "100",
                   "--band-points", "5", "--no-progress", "-o", str(out)])
    assert status == 0
    text = capsys.readouterr().out
    assert "no imaginary modes" in text and "wrote" in text
    assert (out / "band_structure.png").is_file() and (out / "FORCE_CONSTANTS").is_file()
    lines = (out / "thermal_properties.csv").read_text().splitlines()
    assert len(lines) == 2 + 4  # comment, header, 0..300 K
    xyz = tmp_path / "water.xyz"
    write(xyz, molecule("H2O"))
    assert main(["phonons", str(xyz), "-o", str(tmp_path / "w")]) == 2
    assert "no cell" in capsys.readouterr().err


def test_cli_register_on_a_bare_parser():
    """crossfunctional.cli.phonons.register adds the command to any argparse
    sub-parser set, with the workflow's defaults."""
    import argparse
    import inspect

    from crossfunctional.cli.phonons import cmd_phonons, register

    parser = argparse.ArgumentParser(prog="test")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["phonons", "Si.cif", "--supercell", "2", "2", "1", "--born", "BORN", "--no-relax"])
    assert args.func is cmd_phonons and args.structure == "Si.cif" and args.output == "phonons"
    assert args.supercell == [2, 2, 1] and args.born == "BORN" and args.no_relax
    defaults = {k: v.default for k, v in inspect.signature(phonons).parameters.items()}
    for option, name in (
        ("supercell_min_length", "supercell_min_length"), ("displacement", "displacement"), ("fmax", "fmax"),
        ("relax_steps", "relax_steps"), ("mesh_length", "mesh_length"), ("band_points", "band_npoints"),
        ("tmax", "t_max"), ("tstep", "t_step"), ("imaginary_threshold", "imaginary_threshold"),
        ("max_atoms", "max_atoms"), ("max_memory_gb", "max_memory_gb"), ("symprec", "symprec"),
        ("model", "model"), ("device", "device"),
    ):
        assert getattr(args, option) == defaults[name], option


def test_missing_optional_dependency_is_a_clear_error(calc, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "seekpath", None)  # import seekpath -> ImportError
    with pytest.raises(PhononError, match=r"crossfunctional\[phonons\]"):
        phonons(bulk("Si", "diamond", A_SI), calculator=calc)


_MEASURE = """
import json, sys, torch
torch.set_num_threads(1)
from ase.build import bulk
from crossfunctional.calculators import CrossFunctionalCalculator
from crossfunctional.workflows.phonons import memory_estimate
unit = {"Si": bulk("Si", "diamond", a=5.43, cubic=True), "MgO": bulk("MgO", "rocksalt", a=4.21, cubic=True)}[sys.argv[1]]
calc = CrossFunctionalCalculator(dtype="float64")
warm = unit.copy(); warm.calc = calc; warm.get_forces()
frames = []
for k in range(4):
    s = unit * (2, 2, 2); s.positions[k] += 0.01; frames.append(s)
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current resident size
before = status("VmRSS:")
calc.predict_batch(frames)
print(json.dumps({"measured": status("VmHWM:") - before, "estimate": memory_estimate(unit, 8, calc.cutoff, batch=4)}))
"""


@pytest.mark.parametrize("cell", ["Si", "MgO"])
def test_memory_estimate_against_the_measured_peak(cell):
    """Four displaced 64-atom supercells evaluated together in a fresh process:
    the estimate bounds the measured growth of the peak resident memory
    (VmHWM after resetting it through /proc/self/clear_refs), and
    by less than a factor of two (Si: 46 edges and 12 angles per atom; MgO: 92 and 306)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _MEASURE, cell], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["measured"] <= got["estimate"] < 2.0 * got["measured"], got
