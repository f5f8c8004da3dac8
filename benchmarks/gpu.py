"""GPU check: equivalence with upstream ``chgnet`` on CUDA, and timings.

1. Equivalence (float32 and float64) on the device: energy per atom, forces
   and stress of ``CrossFunctionalCalculator(device=...)`` against upstream
   ``CHGNet.predict_structure`` on the same device, for a rattled Si 64 and
   MgO 64 cell (upstream in float64 as in ``tests/test_float64.py``).
   Tolerances: 1e-5 eV/atom, 1e-4 eV/Å, 1e-3 GPa (float32); 1e-6 / 1e-6 /
   1e-5 (float64).
2. Timings (float32, energy + forces + stress, graph construction included,
   medians of ``--repeats`` alternating calls after a warm-up):
   upstream ``predict_structure(task="efs")``; our default calculator; our
   calculator with ``compile=True``; and ``pair_style chgnet ... device
   cuda`` in LAMMPS (time per MD step, NVE), on Si 512, Si 4096 and MgO 512.
   Ratios are upstream time / ours.

Writes ``benchmarks/results/gpu.json``. Without CUDA it stops with a message,
unless ``--device cpu`` is given (a dry run of the script itself, with
``--systems`` to keep it short)::

    python benchmarks/gpu.py                                   # on a machine with a GPU
    python benchmarks/gpu.py --device cpu --systems Si512 --repeats 1 --no-compile --output /tmp/gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase.units import GPa
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

ROOT = Path(__file__).resolve().parents[1]
TOL = {"float32": (1e-5, 1e-4, 1e-3), "float64": (1e-6, 1e-6, 1e-5)}  # eV/atom, eV/Å, GPa


def systems() -> dict:
    out = {
        "Si512": bulk("Si", "diamond", a=5.43, cubic=True) * 4,
        "Si4096": bulk("Si", "diamond", a=5.43, cubic=True) * 8,
        "MgO512": bulk("MgO", "rocksalt", a=4.21, cubic=True) * 4,
    }
    for k, atoms in enumerate(out.values()):
        atoms.rattle(0.02, seed=k)
    return out


def upstream_model(device: str, dtype: str):
    """Upstream CHGNet r2SCAN on ``device`` in ``dtype`` (float64 by patching
    chgnet's TORCH_DTYPE, as the float64 tests do)."""
    import chgnet.graph.converter
    import chgnet.graph.crystalgraph
    import chgnet.model.model
    from chgnet.model import CHGNet
    from chgnet.model.composition_model import AtomRef

    dt = getattr(torch, dtype)
    for module in (chgnet.model.model, chgnet.graph.converter, chgnet.graph.crystalgraph):
        module.TORCH_DTYPE = dt
    if dtype == "float64" and not getattr(AtomRef, "_cast_input", False):
        original = AtomRef._get_energy
        AtomRef._get_energy = lambda self, feas: original(self, feas.to(self.fc.weight.dtype))
        AtomRef._cast_input = True
    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name="r2scan", use_device=device, verbose=False)
    return model.to(dt)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def equivalence(device: str) -> list[dict]:
    from ase.stress import full_3x3_to_voigt_6_stress

    from crossfunctional.calculators import CrossFunctionalCalculator

    rows = []
    cells = {"Si64": bulk("Si", "diamond", a=5.43, cubic=True) * 2, "MgO64": bulk("MgO", "rocksalt", a=4.21, cubic=True) * 2}
    for dtype in ("float32", "float64"):
        upstream = upstream_model(device, dtype)
        ours = CrossFunctionalCalculator(model="chgnet-r2scan", device=device, dtype=dtype)
        for name, atoms in cells.items():
            atoms = atoms.copy()
            atoms.rattle(0.05, seed=7)
            pred = upstream.predict_structure(AseAtomsAdaptor.get_structure(atoms), task="efs")
            atoms.calc = ours
            n = len(atoms)
            de = abs(atoms.get_potential_energy() / n - float(pred["e"]))
            df = float(np.abs(atoms.get_forces() - pred["f"]).max())
            up_stress = full_3x3_to_voigt_6_stress(np.asarray(pred["s"]))  # GPa, the same sign as ASE's
            ds = float(np.abs(atoms.get_stress() / GPa - up_stress).max())
            tol = TOL[dtype]
            rows.append({"system": name, "dtype": dtype, "energy_eV_per_atom": de, "forces_eV_per_A": df,
                         "stress_GPa": ds, "pass": de <= tol[0] and df <= tol[1] and ds <= tol[2]})
            print(json.dumps(rows[-1]), flush=True)
        for module_name in ("chgnet.model.model", "chgnet.graph.converter", "chgnet.graph.crystalgraph"):
            import importlib

            importlib.import_module(module_name).TORCH_DTYPE = torch.float32
    return rows


def lammps_time_per_step(atoms, model: Path, device: str, steps: int, folder: Path) -> float:
    from crossfunctional.workflows.lammps_md import open_lammps, write_data

    data = write_data(atoms, folder / "gpu.data")
    lmp = open_lammps()
    try:
        lmp.commands_list([
            "units metal", "atom_style atomic", f"read_data {data.path}",
            f"pair_style chgnet {model} device {device.split(':')[0]}", f"pair_coeff * * {' '.join(data.species)}",
            "velocity all create 300 12345 mom yes rot yes", "timestep 0.001", "fix nve all nve", "thermo 1000",
            "run 2 post no",
        ])
        t0 = time.perf_counter()
        lmp.command(f"run {steps} pre no post no")
        return (time.perf_counter() - t0) / steps
    finally:
        lmp.close()


def timings(device: str, names: list[str], repeats: int, compile_: bool, lammps: bool) -> list[dict]:
    from crossfunctional.calculators import CrossFunctionalCalculator
    from crossfunctional.models import export

    upstream = upstream_model(device, "float32")
    variants = {"ours": CrossFunctionalCalculator(model="chgnet-r2scan", device=device)}
    if compile_:
        variants["compiled"] = CrossFunctionalCalculator(model="chgnet-r2scan", device=device, compile=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = export("chgnet-r2scan", Path(tmp) / "r2scan.pt") if lammps else None
        for name in names:
            atoms = systems()[name]
            structure = AseAtomsAdaptor.get_structure(atoms)
            runs = {"upstream": lambda: upstream.predict_structure(structure, task="efs")}
            for key, calc in variants.items():
                def run(calc=calc):
                    calc.reset()
                    atoms.calc = calc
                    atoms.get_forces()
                    atoms.get_stress()
                runs[key] = run
            for run in runs.values():
                run()  # warm-up (and, for compiled, the compilation)
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(repeats):
                for key, run in runs.items():
                    sync(device)
                    t0 = time.perf_counter()
                    run()
                    sync(device)
                    times[key].append(time.perf_counter() - t0)
            row = {"system": name, "atoms": len(atoms), **{f"{k}_s": float(np.median(v)) for k, v in times.items()}}
            for key in variants:
                row[f"ratio_{key}"] = row["upstream_s"] / row[f"{key}_s"]
            if lammps:
                row["lammps_s_per_step"] = lammps_time_per_step(atoms, model, device, max(repeats, 3), Path(tmp))
                row["ratio_lammps"] = row["upstream_s"] / row["lammps_s_per_step"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--systems", nargs="+", default=["Si512", "Si4096", "MgO512"], choices=list(systems()))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="skip the compiled calculator")
    p.add_argument("--no-lammps", action="store_true", help="skip pair_style chgnet")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: CUDA is not available here (torch "
                         f"{torch.__version__}); run it on a machine with a GPU, or --device cpu for a dry run")
    from crossfunctional.io import atomic_write

    result = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__,
        "equivalence": equivalence(args.device),
        "timings_float32": timings(args.device, args.systems, args.repeats, not args.no_compile, not args.no_lammps),
    }
    result["all_equivalent"] = all(r["pass"] for r in result["equivalence"])
    with atomic_write(args.output) as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.output}; equivalence {'passed' if result['all_equivalent'] else 'FAILED'}")
    return 0 if result["all_equivalent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
