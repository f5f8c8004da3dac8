"""The command line: every command on real structures, and one clear error line for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import write
from ase.units import GPa

from crossfunctional.calculators import CrossFunctionalCalculator
from crossfunctional.cli import main


@pytest.fixture(scope="module")
def r2scan_calc():
    return CrossFunctionalCalculator(model="chgnet-r2scan")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crossfunctional.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_models_lists_both_weights(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "chgnet-r2scan" in out and "chgnet-0.3.0" in out


def test_predict_multiframe_matches_calculator(tmp_path, r2scan_calc, capsys):
    si = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    si.rattle(0.05, seed=3)
    water = molecule("H2O")
    path = tmp_path / "frames.extxyz"
    write(path, [si, water])
    out_json = tmp_path / "pred.json"
    assert main(["predict", str(path), "-o", str(out_json)]) == 0
    frames = json.loads(out_json.read_text())["frames"]
    assert len(frames) == 2
    for atoms, rec in zip([si, water], frames):
        atoms.calc = r2scan_calc
        assert rec["energy_eV"] == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
        np.testing.assert_allclose(rec["forces_eV_per_A"], atoms.get_forces(), atol=1e-4)
        np.testing.assert_allclose(rec["magmoms_muB"], r2scan_calc.results["magmoms"], atol=1e-5)
    np.testing.assert_allclose(frames[0]["stress_GPa_voigt"], si.get_stress() / GPa, atol=1e-3)
    assert "stress_GPa_voigt" not in frames[1]  # a molecule has no stress


def test_export_then_predict_with_the_file(tmp_path, r2scan_calc):
    model_file = tmp_path / "model.pt"
    assert main(["export", "chgnet-r2scan", "-o", str(model_file)]) == 0
    assert model_file.is_file()
    cu = bulk("Cu", "fcc", a=3.6)
    cu.rattle(0.02, seed=0)
    cu.calc = CrossFunctionalCalculator(model=str(model_file))
    ref = cu.copy()
    ref.calc = r2scan_calc
    assert cu.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(cu.get_forces(), ref.get_forces(), atol=1e-6)


def test_relax_writes_relaxed_structure(tmp_path, r2scan_calc):
    al = bulk("Al", "fcc", a=4.25)  # strained by ~5 %
    src = tmp_path / "POSCAR"
    write(src, al, format="vasp")
    dst = tmp_path / "relaxed.cif"
    assert main(["relax", str(src), "-o", str(dst), "--fmax", "0.01"]) == 0
    from ase.io import read

    relaxed = read(dst)
    relaxed.calc = r2scan_calc
    assert np.abs(relaxed.get_stress()).max() / GPa < 0.05  # relaxed cell: stress ~ 0
    assert relaxed.get_volume() < al.get_volume() * 0.95


@pytest.mark.parametrize(
    ("atoms", "needle"),
    [
        (Atoms("Am", cell=[4, 4, 4], pbc=True), "Z=95"),
        (Atoms("Si2", positions=[[0, 0, 0], [0.3, 0, 0]], cell=[5, 5, 5], pbc=True), "closer than 0.5"),
        (Atoms("Si", positions=[[np.nan, 0, 0]], cell=[5, 5, 5], pbc=True), "NaN"),
        (Atoms("Si2", positions=[[0, 0, 0], [1.5, 1.5, 0]], cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True), "zero volume"),
    ],
)
def test_predict_bad_structure_one_error_line(tmp_path, atoms, needle):
    path = tmp_path / "bad.extxyz"
    write(path, atoms)
    proc = run_cli("predict", str(path))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_bad_files_and_models(tmp_path):
    proc = run_cli("predict", str(tmp_path / "missing.cif"))
    assert proc.returncode == 2 and "not found" in proc.stderr
    garbage = tmp_path / "garbage.cif"
    garbage.write_text("this is not a structure\n")
    proc = run_cli("predict", str(garbage))
    assert proc.returncode == 2 and "cannot read" in proc.stderr
    good = tmp_path / "si.cif"
    write(good, bulk("Si"))
    proc = run_cli("predict", str(good), "--model", "no-such-model")
    assert proc.returncode == 2 and "unknown model 'no-such-model'" in proc.stderr
    proc = run_cli("export", "no-such-model", "-o", str(tmp_path / "x.pt"))
    assert proc.returncode == 2 and not (tmp_path / "x.pt").exists()
    proc = run_cli("export", "chgnet-r2scan", "--aot", "-o", str(tmp_path / "x.pt2"))
    assert proc.returncode == 2 and "-o must end in .pt" in proc.stderr and "compiling" not in proc.stderr
    assert not list(tmp_path.glob("x.*"))


def test_version():
    from crossfunctional import __version__

    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"crossfunctional {__version__}"


def test_predict_output_by_suffix(tmp_path, r2scan_calc):
    from ase.io import read

    si = bulk("Si", "diamond", a=5.43)
    si.rattle(0.05, seed=1)
    mgo = bulk("MgO", "rocksalt", a=4.2)
    src = tmp_path / "in.extxyz"
    write(src, [si, mgo])
    assert main(["predict", str(src), "-o", str(tmp_path / "out.extxyz")]) == 0
    frames = read(tmp_path / "out.extxyz", index=":")
    assert len(frames) == 2
    for frame, atoms in zip(frames, (si, mgo)):
        atoms = atoms.copy()
        atoms.calc = r2scan_calc
        assert frame.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
        assert np.abs(frame.get_forces() - atoms.get_forces()).max() < 1e-5
        assert np.abs(frame.get_stress() - atoms.get_stress()).max() < 5e-6  # eV/Å³, float32 batched vs single
    assert main(["predict", str(src), "-o", str(tmp_path / "out.json")]) == 0
    data = json.loads((tmp_path / "out.json").read_text())
    assert [f["frame"] for f in data["frames"]] == [0, 1]
    proc = run_cli("predict", str(src), "-o", str(tmp_path / "out.txt"))
    assert proc.returncode == 2 and "unknown suffix '.txt'" in proc.stderr and not (tmp_path / "out.txt").exists()


@pytest.mark.parametrize("device", ["foo", "gpu", "mps", "meta"])
def test_bad_device_one_line(tmp_path, device):
    src = tmp_path / "si.extxyz"
    write(src, bulk("Si", "diamond", a=5.43))
    proc = run_cli("predict", str(src), "--device", device)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert f"device '{device}' is not supported; choose cpu, cuda or cuda:N" in lines[0]
