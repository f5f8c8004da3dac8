"""Energy + forces + stress timing: crossfunctional against upstream ``chgnet``.

Same process, same structures, graph construction included on both sides:
upstream ``CHGNet.predict_structure(task="efs")`` from a pymatgen Structure,
ours ``CrossFunctionalCalculator`` from ASE Atoms (neighbour list, model,
forces and stress). Each timing is the median of repeated runs, upstream and
ours alternating so that machine load hits both alike. Ratio = upstream / ours.

Usage::

    python benchmarks/speed.py [--repeats 7] [--threads 2] [--wbm 100] [--model chgnet-r2scan]
        [--compile] [--torchscript] [--output benchmarks/results/speed.json]

``--compile`` also times ``CrossFunctionalCalculator(compile=True)`` (the
network through ``torch.compile``), in the same alternation (``ratio_compiled``);
its one-time compilation is timed separately (``compile_s``) and, like every
first call, left out of the medians. ``--torchscript`` also times
``CrossFunctionalCalculator(compile=False)`` (``ratio_torchscript``).

"ours" is the default calculator, ``compile="auto"``: the network compiled
ahead of time and cached on disk (``default_runner`` in the results says
which runner it got); ``default_setup_s`` is its construction: the
compilation when the cache is empty, else loading the cached package.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from crossfunctional.data import data_path

ROOT = Path(__file__).resolve().parents[1]
WBM = data_path("wbm_random_pbe_equilibrium.json.gz")
UPSTREAM_NAME = {"chgnet-r2scan": "r2scan", "chgnet-0.3.0": "0.3.0"}


def structures(n_wbm: int) -> dict[str, object]:
    """Named ASE Atoms: Si 64, MgO 64 (a = 4.21 Å), Si 512, and WBM structures."""
    rng = np.random.default_rng(0)
    out = {
        "Si64": bulk("Si", "diamond", a=5.43, cubic=True) * 2,
        "MgO64": bulk("MgO", "rocksalt", a=4.21, cubic=True) * 2,
        "Si512": bulk("Si", "diamond", a=5.43, cubic=True) * 4,
    }
    for atoms in out.values():
        atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
    if n_wbm:
        with gzip.open(WBM, "rt") as fh:
            records = json.load(fh)
        for rec in records[:n_wbm]:
            out[f"wbm:{rec['material_id']}"] = AseAtomsAdaptor.get_atoms(Structure.from_dict(rec["structure"]))
    return out


def _suffix(variant: str) -> str:
    """Key suffix of a variant's ratios in the results: none for the default calculator."""
    return "" if variant == "ours" else f"_{variant}"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--wbm", type=int, default=100, help="number of WBM structures (0 to skip)")
    parser.add_argument("--model", default="chgnet-r2scan", choices=sorted(UPSTREAM_NAME))
    parser.add_argument("--compile", action="store_true", help="ours with compile=True (torch.compile)")
    parser.add_argument("--torchscript", action="store_true", help="ours with compile=False (TorchScript)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from chgnet.model import CHGNet

    from crossfunctional.calculators import CrossFunctionalCalculator
    from crossfunctional.io import atomic_write

    upstream = CHGNet.load(model_name=UPSTREAM_NAME[args.model], use_device="cpu", verbose=False)
    t0 = time.perf_counter()
    variants = {"ours": CrossFunctionalCalculator(model=args.model)}
    default_setup_s = time.perf_counter() - t0
    runner = variants["ours"].runner
    default_runner = f"compiled ({runner.mode})" if hasattr(runner, "mode") else "TorchScript"
    print(f"default calculator: {default_runner}, ready in {default_setup_s:.0f} s", flush=True)
    if args.torchscript:
        variants["torchscript"] = CrossFunctionalCalculator(model=args.model, compile=False)
    compile_s = None
    if args.compile:  # the one-time compilation, on the first structure's graph
        variants["compiled"] = CrossFunctionalCalculator(model=args.model, compile=True)
        first = next(iter(structures(0).values())).copy()
        first.calc = variants["compiled"]
        t0 = time.perf_counter()
        first.get_forces()
        compile_s = time.perf_counter() - t0
        print(f"compilation (first call): {compile_s:.0f} s", flush=True)

    rows = []
    for name, atoms in structures(args.wbm).items():
        structure = AseAtomsAdaptor.get_structure(atoms)
        runs = {"upstream": lambda: upstream.predict_structure(structure, task="efs")}
        for key, calc in variants.items():

            def run(calc=calc) -> None:
                calc.reset()
                atoms.calc = calc
                atoms.get_forces()
                atoms.get_stress()

            runs[key] = run
        for run in runs.values():  # warm-up
            run()
        times: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(args.repeats):  # alternating, so that machine load hits every side alike
            for key, run in runs.items():
                times[key].append(median_time(run, 1))
        row = {"name": name, "n_atoms": len(atoms)}
        row.update({f"{key}_s": float(np.median(t)) for key, t in times.items()})
        for key in variants:
            row[f"ratio{_suffix(key)}"] = row["upstream_s"] / row[f"{key}_s"]
        rows.append(row)
        if not name.startswith("wbm:"):
            text = "  ".join(f"{key} {row[key + '_s']:.4f} s" for key in runs)
            ratios = "  ".join(f"{row['ratio' + _suffix(k)]:.2f}" for k in variants)
            print(f"{name:>8} {len(atoms):5d} atoms  {text}  ratio {ratios}", flush=True)

    result = {
        "model": args.model,
        "threads": args.threads,
        "repeats": args.repeats,
        "compile_s": compile_s,
        "default_runner": default_runner,
        "default_setup_s": default_setup_s,
        "torch": torch.__version__,
        "rows": rows,
    }
    for key in variants:
        field = f"ratio{_suffix(key)}"
        wbm = [r[field] for r in rows if r["name"].startswith("wbm:")]
        summary = {r["name"]: r[field] for r in rows if not r["name"].startswith("wbm:")}
        if wbm:
            summary["WBM (median over structures)"] = float(np.median(wbm))
            print(f"{key}: WBM {len(wbm)} structures: median ratio {np.median(wbm):.2f} (min {min(wbm):.2f}, max {max(wbm):.2f})")
        overall = float(np.median(list(summary.values())))
        print(f"{key}: median ratio over {', '.join(summary)}: {overall:.2f}")
        result[f"summary_ratio{_suffix(key)}"] = summary
        result[f"median_ratio{_suffix(key)}"] = overall
    with atomic_write(args.output) as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
