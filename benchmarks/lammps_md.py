"""LAMMPS with ``pair_style chgnet``: energy conservation, NPT lattice constant, throughput.

Three measurements, each written as JSON to
``benchmarks/results/lammps/``:

``drift``
    NVE of Si (64 atoms, diamond, a = 5.43 Å), velocities drawn at 600 K so
    that equipartition brings the crystal to about 300 K, 1 fs steps, 1,000
    steps; the total-energy drift is the slope of a straight-line fit of
    E_tot/atom against time (meV/atom/ps), for the float32 and the float64
    export.
``npt``
    NPT of MgO (64 atoms, rock salt) at 300 K and 0 GPa (Nosé-Hoover, MTK
    isotropic barostat); the average lattice constant over the second part of
    the run against the lattice constant relaxed at 0 K with the ASE
    calculator.
``throughput``
    atom-steps per second of MD: LAMMPS with the plugin, ASE MD with the
    upstream ``chgnet`` calculator (``CHGNetCalculator``) and ASE MD with our
    calculator, on Si 512 (a = 5.43 Å) and MgO 216 (a = 4.21 Å), all with the
    same number of torch threads, in one process, the engines alternating in
    repeated blocks so that machine load hits them alike; median over blocks.
    Wall-clock and process CPU time are both recorded (the CPU time is less
    sensitive to other jobs on a shared machine).

Usage::

    python benchmarks/lammps_md.py drift|npt|throughput|all [--threads 1] [--steps N] [--repeats 3] [--aot]

``--aot`` adds to the throughput the plugin running the ahead-of-time
package (``crossfunctional export --aot``, ``pair_style chgnet model.pt2``),
compiled at the start (``aot_compile_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "lammps"


def _write(name: str, payload: dict) -> Path:
    from crossfunctional.io import atomic_write

    import torch

    payload = dict(payload)
    payload["machine"] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "load_average_at_end": os.getloadavg(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    with atomic_write(path) as fh:
        json.dump(payload, fh, indent=1)
    print(f"wrote {path}")
    return path


def _export(folder: Path, dtype: str) -> Path:
    from crossfunctional.models import export

    return export("chgnet-r2scan", folder / f"chgnet_r2scan_{dtype}.pt", dtype=dtype)


# ---------------------------------------------------------------------- drift
def drift(steps: int, threads: int) -> dict:
    from crossfunctional.workflows.lammps_md import run_md

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
    out = {"system": "Si 64 atoms, diamond a = 5.43 Å", "timestep_fs": 1.0, "steps": steps, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float64"):
            model = _export(Path(tmp), dtype)
            t0 = time.perf_counter()
            res = run_md(
                atoms, model, ensemble="nve", temperature=600.0, steps=steps, thermo_every=10, dump_every=0,
                threads=threads, seed=4928459,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            th = res.thermo
            t = th["time_ps"].to_numpy()
            etot = th["etotal_eV"].to_numpy() / len(atoms)
            slope = np.polyfit(t, etot, 1)[0]
            second_half = th["step"] >= steps // 2
            run = {
                "drift_meV_per_atom_per_ps": 1000 * slope,
                "etotal_max_minus_min_meV_per_atom": 1000 * float(np.ptp(etot)),
                "etotal_end_minus_start_meV_per_atom": 1000 * float(etot[-1] - etot[0]),
                "mean_temperature_second_half_K": float(th.loc[second_half, "temp_K"].mean()),
                "wall_s": wall,
                "thermo": {k: th[k].tolist() for k in ("step", "temp_K", "pe_eV", "etotal_eV")},
            }
            out["runs"][dtype] = run
            print(
                f"NVE {dtype}: drift {run['drift_meV_per_atom_per_ps']:+.4f} meV/atom/ps, "
                f"spread {run['etotal_max_minus_min_meV_per_atom']:.4f} meV/atom, "
                f"<T> {run['mean_temperature_second_half_K']:.0f} K, {wall:.0f} s"
            )
    out["criterion"] = "|drift| < 1 meV/atom/ps"
    out["passed"] = all(abs(r["drift_meV_per_atom_per_ps"]) < 1.0 for r in out["runs"].values())
    _write("nve_drift", out)
    return out


# ------------------------------------------------------------------------ npt
def npt(steps: int, threads: int) -> dict:
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    from crossfunctional.calculators import CrossFunctionalCalculator
    from crossfunctional.workflows.lammps_md import run_md

    with tempfile.TemporaryDirectory() as tmp:
        model = _export(Path(tmp), "float32")
        cell8 = bulk("MgO", "rocksalt", a=4.21, cubic=True)
        cell8.calc = CrossFunctionalCalculator(str(model))
        BFGS(FrechetCellFilter(cell8, hydrostatic_strain=True), logfile=None).run(fmax=1e-4, steps=200)
        a_relaxed = float(np.cbrt(cell8.get_volume()))
        atoms = bulk("MgO", "rocksalt", a=a_relaxed, cubic=True).repeat((2, 2, 2))
        t0 = time.perf_counter()
        res = run_md(
            atoms, model, ensemble="npt", temperature=300.0, pressure=0.0, steps=steps, thermo_every=10,
            dump_every=0, tdamp=100.0, pdamp=1000.0, threads=threads, seed=87287,
        )  # fmt: skip
        wall = time.perf_counter() - t0
    th = res.thermo
    a_t = np.cbrt(th["vol_A3"].to_numpy() / 8.0)  # 2x2x2 conventional cells
    avg = th["step"] >= steps // 3
    a_mean = float(a_t[avg].mean())
    # standard error from block averages (10 blocks)
    blocks = np.array_split(a_t[avg], 10)
    a_err = float(np.std([b.mean() for b in blocks], ddof=1) / np.sqrt(len(blocks)))
    out = {
        "system": "MgO 64 atoms (2x2x2 conventional), 300 K, 0 GPa, Nosé-Hoover + MTK isotropic barostat",
        "timestep_fs": 1.0,
        "steps": steps,
        "averaged_from_step": int(steps // 3),
        "a_relaxed_0K_A": a_relaxed,
        "a_mean_300K_A": a_mean,
        "a_stderr_A": a_err,
        "thermal_expansion_percent": 100 * (a_mean / a_relaxed - 1),
        "mean_temperature_K": float(th.loc[avg, "temp_K"].mean()),
        "mean_pressure_bar": float(th.loc[avg, "press_bar"].mean()),
        "experiment_a_300K_A": 4.212,
        "wall_s": wall,
        "thermo": {k: th[k].tolist() for k in ("step", "temp_K", "press_bar", "vol_A3")},
    }
    print(
        f"NPT MgO: a(0 K, relaxed) {a_relaxed:.4f} Å, <a>(300 K) {a_mean:.4f} ± {a_err:.4f} Å "
        f"({out['thermal_expansion_percent']:+.2f} %), <T> {out['mean_temperature_K']:.0f} K, "
        f"<P> {out['mean_pressure_bar']:.0f} bar, {wall:.0f} s"
    )
    _write("npt_mgo", out)
    return out


# ----------------------------------------------------------------- throughput
def _systems() -> dict:
    si = bulk("Si", "diamond", a=5.43, cubic=True).repeat((4, 4, 4))
    mgo = bulk("MgO", "rocksalt", a=4.21, cubic=True).repeat((3, 3, 3))
    rng = np.random.default_rng(0)
    for atoms in (si, mgo):
        atoms.positions += rng.normal(scale=0.02, size=atoms.positions.shape)
    return {"Si512": si, "MgO216": mgo}


class _LammpsEngine:
    """One LAMMPS instance kept open: NVT with the plugin, `run N` timed."""

    def __init__(self, atoms, model: Path, threads: int, folder: Path):
        from crossfunctional.workflows.lammps_md import open_lammps, write_data

        data = write_data(atoms, folder / "bench.data")
        self.lmp = open_lammps()
        self.lmp.commands_list(
            [
                "units metal",
                "atom_style atomic",
                f"read_data {data.path}",
                f"pair_style chgnet {model} threads {threads}",
                f"pair_coeff * * {' '.join(data.species)}",
                "velocity all create 300 12345 mom yes rot yes",
                "timestep 0.001",
                "fix md all nvt temp 300 300 0.1",
                "thermo 1000",
                "run 1 post no",  # setup and one step: model loaded, graph executor warm
            ]
        )

    def run(self, steps: int) -> None:
        self.lmp.command(f"run {steps} pre no post no")

    def close(self) -> None:
        self.lmp.close()


class _AseEngine:
    def __init__(self, atoms, calculator):
        from ase.md.nose_hoover_chain import NoseHooverChainNVT
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
        from ase.units import fs

        self.atoms = atoms.copy()
        self.atoms.calc = calculator
        MaxwellBoltzmannDistribution(self.atoms, temperature_K=300, rng=np.random.default_rng(1))
        self.dyn = NoseHooverChainNVT(self.atoms, timestep=1.0 * fs, temperature_K=300, tdamp=100 * fs)
        self.dyn.run(1)  # warm-up

    def run(self, steps: int) -> None:
        self.dyn.run(steps)

    def close(self) -> None:
        pass


#: Reference throughput of ASE MD with the upstream ``chgnet`` calculator on the
#: same 2-core machine (atom-steps/s; thread count and load not recorded), kept
#: in the results as ``upstream_reference_atom_steps_per_s`` beside the
#: side-by-side measurement.
UPSTREAM_REFERENCE = {"Si512": 859.0, "MgO216": 155.0}


def throughput(steps: int, threads: int, repeats: int, reference: dict, aot: bool = False) -> dict:
    import torch
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    from crossfunctional.calculators import CrossFunctionalCalculator

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    results: dict = {
        "threads": threads,
        "steps_per_block": steps,
        "blocks": repeats,
        "upstream_reference_atom_steps_per_s": reference,
        "systems": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        model = _export(Path(tmp), "float32")
        package = None
        if aot:  # the same weights with the network compiled ahead of time (pair_style chgnet model.pt2)
            from crossfunctional.calculators.aot import export_package

            t0 = time.perf_counter()
            _, package = export_package("chgnet-r2scan", Path(tmp) / "aot" / "chgnet_r2scan.pt")
            results["aot_compile_s"] = time.perf_counter() - t0
        upstream = CHGNetCalculator(CHGNet.load(model_name="r2scan", verbose=False), use_device="cpu")
        ours = CrossFunctionalCalculator(str(model))
        for name, atoms in _systems().items():
            engines = {
                "lammps_plugin": _LammpsEngine(atoms, model, threads, Path(tmp)),
                "ase_upstream_chgnet": _AseEngine(atoms, upstream),
                "ase_crossfunctional": _AseEngine(atoms, ours),
            }
            if package is not None:
                engines["lammps_plugin_aot"] = _LammpsEngine(atoms, package, threads, Path(tmp))
            timings: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in engines}
            for _ in range(repeats):
                for key, engine in engines.items():
                    c0, t0 = time.process_time(), time.perf_counter()
                    engine.run(steps)
                    timings[key]["wall"].append(time.perf_counter() - t0)
                    timings[key]["cpu"].append(time.process_time() - c0)
            for engine in engines.values():
                engine.close()
            n = len(atoms)
            sysres = {"atoms": n}
            for key, tm in timings.items():
                wall = float(np.median(tm["wall"]))
                cpu = float(np.median(tm["cpu"]))
                sysres[key] = {
                    "atom_steps_per_s": n * steps / wall,
                    "atom_steps_per_cpu_s": n * steps / cpu,
                    "s_per_step": wall / steps,
                    "wall_s_blocks": tm["wall"],
                    "cpu_s_blocks": tm["cpu"],
                }
            up = sysres["ase_upstream_chgnet"]
            lm = sysres["lammps_plugin"]
            sysres["ratio_lammps_vs_upstream_wall"] = lm["atom_steps_per_s"] / up["atom_steps_per_s"]
            sysres["ratio_lammps_vs_upstream_cpu"] = lm["atom_steps_per_cpu_s"] / up["atom_steps_per_cpu_s"]
            if name in reference:
                sysres["ratio_lammps_vs_upstream_reference"] = lm["atom_steps_per_s"] / reference[name]
            if package is not None:
                la = sysres["lammps_plugin_aot"]
                sysres["ratio_lammps_aot_vs_upstream_wall"] = la["atom_steps_per_s"] / up["atom_steps_per_s"]
                sysres["ratio_lammps_aot_vs_upstream_cpu"] = la["atom_steps_per_cpu_s"] / up["atom_steps_per_cpu_s"]
                print(f"{name}: LAMMPS with the ahead-of-time package {la['atom_steps_per_s']:.0f} atom-steps/s "
                      f"({sysres['ratio_lammps_aot_vs_upstream_wall']:.2f}x upstream)")
            results["systems"][name] = sysres
            print(
                f"{name}: LAMMPS {lm['atom_steps_per_s']:.0f}, ASE+upstream {up['atom_steps_per_s']:.0f}, "
                f"ASE+ours {sysres['ase_crossfunctional']['atom_steps_per_s']:.0f} atom-steps/s "
                f"(wall; ratio {sysres['ratio_lammps_vs_upstream_wall']:.2f}x, "
                f"CPU-time ratio {sysres['ratio_lammps_vs_upstream_cpu']:.2f}x)"
            )
    _write(f"throughput_{threads}thread", results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["drift", "npt", "throughput", "all"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every engine (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="MD steps (drift 1000, npt 3000, throughput 5 per block)")
    parser.add_argument("--repeats", type=int, default=3, help="throughput: alternating blocks per engine")
    parser.add_argument("--aot", action="store_true", help="throughput: also the plugin with the ahead-of-time package")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.what in ("drift", "all"):
        drift(args.steps or 1000, args.threads)
    if args.what in ("npt", "all"):
        npt(args.steps or 3000, args.threads)
    if args.what in ("throughput", "all"):
        throughput(args.steps or 5, args.threads, args.repeats, UPSTREAM_REFERENCE, aot=args.aot)


if __name__ == "__main__":
    main()
