"""The command line under faults: a broken frame among good ones, outputs
that cannot be written (checked before any work)."""

from __future__ import annotations

import json
import os
import time

from ase import Atoms
from ase.build import bulk
from ase.io import write

from crossfunctional.cli import main


def test_broken_frame_among_good_ones(tmp_path, capsys):
    good = bulk("Si", "diamond", a=5.43)
    broken = Atoms("Si2", positions=[[0, 0, 0], [0.3, 0, 0]], cell=[5, 5, 5], pbc=True)  # atoms 0.3 Å apart
    src = tmp_path / "traj.extxyz"
    write(src, [good, broken, good])
    out = tmp_path / "out.json"
    assert main(["predict", str(src), "-o", str(out)]) == 1  # non-zero: a frame failed
    err = capsys.readouterr().err
    assert "frame 1: Si2  FAILED:" in err and "atoms 0 and 1 are 0.300 Å apart" in err
    assert "1 of 3 frames failed (frames 1)" in err
    data = json.loads(out.read_text())
    assert [f["frame"] for f in data["frames"]] == [0, 2] and data["failed_frames"] == [1]
    assert data["frames"][0]["energy_eV"] == data["frames"][1]["energy_eV"]


def test_read_only_output_is_never_replaced(tmp_path, capsys):
    src = tmp_path / "si.extxyz"
    write(src, bulk("Si", "diamond", a=5.43))
    out = tmp_path / "out.json"
    out.write_text("the user's file\n")
    os.chmod(out, 0o444)
    assert main(["predict", str(src), "-o", str(out)]) == 2
    assert "read-only; not replacing it" in capsys.readouterr().err
    assert out.read_text() == "the user's file\n"


def test_unwritable_output_fails_before_computing(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    start = time.perf_counter()
    code = main(["benchmark", "density", "--solids", "Si_diamond", "--output", str(blocker / "results")])
    assert code == 2 and time.perf_counter() - start < 5.0  # refused before any relaxation
    assert "is not a folder" in capsys.readouterr().err
    assert main(["relax", str(tmp_path / "missing.cif"), "-o", str(blocker / "x.cif")]) == 2


def test_interrupted_write_leaves_nothing(tmp_path):
    from crossfunctional.io import atomic_write

    target = tmp_path / "results.json"
    try:
        with atomic_write(target) as fh:
            fh.write("partial")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert not target.exists() and list(tmp_path.iterdir()) == []


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigint_during_md_keeps_the_frames(tmp_path):
    """Ctrl-C in the middle of ASE MD: every complete frame is written, exit 130."""
    import signal
    import subprocess
    import sys

    from ase.io import read

    src = tmp_path / "si.extxyz"
    write(src, bulk("Si", "diamond", a=5.43, cubic=True))
    out = tmp_path / "md"
    proc = subprocess.Popen(
        [sys.executable, "-m", "crossfunctional", "md", str(src), "-o", str(out), "--engine", "ase", "--steps", "100000",
         "--dump", "1", "--thermo", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        # a test run started in the background by a non-interactive shell ignores
        # SIGINT, and children inherit that: give the child Ctrl-C back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = proc.stdout.readline()  # printed just before the MD starts
        assert "Ctrl-C stops early" in first, first + proc.stderr.read()[-2000:]
        # interrupt once the process has spent 20 s of CPU time (model loaded, many
        # 8-atom steps done), however busy the machine is
        deadline = time.monotonic() + 600
        while _cpu_seconds(proc.pid) < 20.0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        stdout = first + stdout
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    frames = read(out / "trajectory.extxyz", index=":")
    assert len(frames) >= 2 and "interrupted after" in stdout
    assert not list(out.glob(".*.tmp*"))


def test_rerun_removes_temporaries_of_a_killed_write(tmp_path):
    from crossfunctional.io import clean_temporaries

    (tmp_path / ".plot.png.abc123.tmp.png").write_bytes(b"")
    (tmp_path / ".results.json.xyz.tmp").write_text("{")
    (tmp_path / "results.json").write_text("{}")
    removed = clean_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".plot.png.abc123.tmp.png", ".results.json.xyz.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_interrupted_benchmark_resumes(tmp_path, monkeypatch):
    """The density benchmark saves every solid as it comes; killed after the
    first, the same command takes it from the output folder and relaxes only
    the rest, with the same numbers."""
    import importlib

    density_module = importlib.import_module("crossfunctional.workflows.density")  # the module, not the function
    from crossfunctional.workflows import density_benchmark

    out = tmp_path / "density"
    args = ["benchmark", "density", "--models", "chgnet-r2scan", "--solids", "Cu_fcc", "Si_diamond", "--output", str(out)]
    real = density_module.relax
    calls = []

    def dies_on_the_second(atoms, **kwargs):
        calls.append(atoms.get_chemical_formula())
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(atoms, **kwargs)

    monkeypatch.setattr(density_module, "relax", dies_on_the_second)
    try:
        main(args)
    except KeyboardInterrupt:
        pass
    assert (out / ".density_partial.json").is_file()
    monkeypatch.setattr(density_module, "relax", lambda atoms, **kw: calls.append(atoms.get_chemical_formula()) or real(atoms, **kw))
    assert main(args) == 0
    assert calls == ["Cu", "Si2", "Si2"]  # Cu taken from the saved results
    assert not (out / ".density_partial.json").exists()
    data = json.loads((out / "density_benchmark.json").read_text())
    fresh = density_benchmark(models=["chgnet-r2scan"], solids=["Cu_fcc"], progress=False)
    cu = next(s for s in data["solids"] if s["name"] == "Cu_fcc")
    assert cu["models"]["chgnet-r2scan"]["a"] == fresh.solids[0].models["chgnet-r2scan"].a


def test_ctrl_c_before_a_command_keeps_anything_is_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C while a command is still loading (before it can keep partial
    results): exit 130 and one line, no traceback."""
    import crossfunctional.workflows.lammps_md as lammps_md

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lammps_md, "ase_md", interrupted)
    src = tmp_path / "si.extxyz"
    write(src, bulk("Si", "diamond", a=5.43, cubic=True))
    assert main(["md", str(src), "-o", str(tmp_path / "md"), "--engine", "ase", "--steps", "10"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "crossfunctional md: interrupted"
