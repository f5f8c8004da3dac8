"""Memory, linear scaling, achieved GFLOP/s and batched throughput of the model.

Usage::

    python benchmarks/performance.py [--threads 2] [--output benchmarks/results/performance.json]
        [--skip memory scaling flops batch] [--compile]

* memory: peak resident memory (ru_maxrss) of a fresh process that evaluates
  energy + forces + stress once, ours and upstream ``chgnet``, minus the same
  process's resident memory after imports and model load; MgO 512 atoms
  (a = 4.21 Å) and Si 512, ours also Si 10,000 (skipped for upstream: at its
  memory per atom on Si 512, recorded in ``benchmarks/results/performance.json``,
  it would need tens of GB);
* scaling: time per atom for Si 512 -> 8,000 atoms (ours; with ``--compile``
  also ``CrossFunctionalCalculator(compile=True)``, key ``scaling_compiled``);
* GFLOP/s: matrix-product FLOPs of one energy+forces+stress evaluation
  (torch.utils.flop_counter, forward and backward) over its wall time, against
  the measured ceiling of this machine for the thin products the model uses;
* batch: 100 WBM structures through ``predict_batch`` against the calculator
  one structure at a time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk

from crossfunctional.data import data_path

ROOT = Path(__file__).resolve().parents[1]
WBM = data_path("wbm_random_pbe_equilibrium.json.gz")


def supercell(kind: str, n_atoms: int):
    if kind == "MgO":
        unit, per_cell, a = bulk("MgO", "rocksalt", a=4.21, cubic=True), 8, 4.21
    else:
        unit, per_cell, a = bulk("Si", "diamond", a=5.43, cubic=True), 8, 5.43
    rep = round((n_atoms / per_cell) ** (1 / 3))
    atoms = unit * (rep, rep, rep)
    atoms.positions += np.random.default_rng(0).normal(scale=0.01, size=atoms.positions.shape)
    return atoms


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_case(side: str, kind: str, n_atoms: int) -> None:
    """Run in a child process: print baseline and peak RSS in MB as JSON."""
    atoms = supercell(kind, n_atoms)
    if side == "ours":
        from crossfunctional.calculators import CrossFunctionalCalculator

        calc = CrossFunctionalCalculator()
        base = rss_mb()
        atoms.calc = calc
        atoms.get_forces(), atoms.get_stress()
    else:
        from chgnet.model import CHGNet
        from pymatgen.io.ase import AseAtomsAdaptor

        model = CHGNet.load(model_name="r2scan", use_device="cpu", verbose=False)
        structure = AseAtomsAdaptor.get_structure(atoms)
        base = rss_mb()
        model.predict_structure(structure, task="efs")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"baseline_mb": base, "peak_mb": peak, "n_atoms": len(atoms)}))


def run_memory(side: str, kind: str, n_atoms: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--memory-case", side, kind, str(n_atoms), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["delta_mb"] = out["peak_mb"] - out["baseline_mb"]
    out["mb_per_atom"] = out["delta_mb"] / out["n_atoms"]
    return out


def timed(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_ceiling(threads: int) -> float:
    """GFLOP/s of the model's typical thin product, [rows, 64] @ [64, 128]."""
    x = torch.randn(200_000, 64)
    w = torch.randn(64, 128)
    t = timed(lambda: x @ w, repeats=5)
    return 2 * 200_000 * 64 * 128 / t / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description="memory, scaling, GFLOP/s and batch throughput")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "performance.json"))
    parser.add_argument("--memory-case", nargs=3, metavar=("SIDE", "KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--skip", nargs="*", default=[], choices=["memory", "scaling", "flops", "batch"])
    parser.add_argument("--compile", action="store_true", help="also time the scaling with compile=True")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_case:
        side, kind, n = args.memory_case
        memory_case(side, kind, int(n))
        return

    from crossfunctional.calculators import CrossFunctionalCalculator, predict_batch
    from crossfunctional.io import atomic_write

    result: dict = {"threads": args.threads, "torch": torch.__version__}
    if "memory" not in args.skip:
        mem = {}
        for side, kind, n in [("ours", "MgO", 512), ("upstream", "MgO", 512), ("ours", "Si", 512), ("upstream", "Si", 512), ("ours", "Si", 10_000)]:
            mem[f"{side} {kind}{n}"] = row = run_memory(side, kind, n, args.threads)
            print(f"memory {side:>8} {kind}{n}: {row}", flush=True)
        result["memory"] = mem

    calc = CrossFunctionalCalculator()

    def efs(atoms, calc=calc) -> None:
        calc.reset()
        atoms.calc = calc
        atoms.get_forces(), atoms.get_stress()

    variants = {} if "scaling" in args.skip else {"scaling": calc}
    if variants and args.compile:
        variants["scaling_compiled"] = CrossFunctionalCalculator(compile=True)
    for key, scaling_calc in variants.items():
        scaling = []
        for n in (512, 1728, 4096, 8000):
            atoms = supercell("Si", n)
            t = timed(lambda: efs(atoms, scaling_calc), repeats=3 if n < 4000 else 1)
            scaling.append({"n_atoms": len(atoms), "seconds": t, "ms_per_atom": 1e3 * t / len(atoms)})
            print(f"{key} Si{len(atoms)}: {t:.3f} s, {1e3 * t / len(atoms):.4f} ms/atom", flush=True)
        per_atom = [r["ms_per_atom"] for r in scaling]
        result[key] = {"rows": scaling, "max_over_min_time_per_atom": max(per_atom) / min(per_atom)}

    if "flops" not in args.skip:
        from torch.utils.flop_counter import FlopCounterMode

        ceiling = matmul_ceiling(args.threads)
        flops = {}
        # FLOPs counted on the TorchScript runner (ATen calls the counter sees; the ahead-of-time
        # package of the default calculator runs the same products inside compiled code), time taken
        # with the default calculator
        counted = CrossFunctionalCalculator(compile=False)
        for kind in ("Si", "MgO"):
            atoms = supercell(kind, 512)
            counter = FlopCounterMode(display=False)
            with counter:
                efs(atoms, counted)
            total = counter.get_total_flops()
            t = timed(lambda: efs(atoms))
            flops[f"{kind}512"] = {"gflop": total / 1e9, "seconds": t, "gflops_per_s": total / t / 1e9}
            print(f"flops {kind}512: {total / 1e9:.2f} GFLOP in {t:.3f} s = {total / t / 1e9:.1f} GFLOP/s (ceiling {ceiling:.1f})", flush=True)
        runner = calc.runner
        result["flops"] = {"matmul_ceiling_gflops_per_s": ceiling, "cases": flops,
                           "timed_runner": f"compiled ({runner.mode})" if hasattr(runner, "mode") else "TorchScript"}

    if "batch" not in args.skip:
        from pymatgen.core import Structure
        from pymatgen.io.ase import AseAtomsAdaptor

        with gzip.open(WBM, "rt") as fh:
            records = json.load(fh)[:100]
        structures = [AseAtomsAdaptor.get_atoms(Structure.from_dict(r["structure"])) for r in records]
        t_single = timed(lambda: [efs(a) for a in structures], repeats=3)
        t_batch = timed(lambda: predict_batch(structures, calc), repeats=3)
        result["batch"] = {"n": len(structures), "single_s": t_single, "batch_s": t_batch, "speedup": t_single / t_batch}
        print(f"batch of {len(structures)} WBM: one by one {t_single:.3f} s, batched {t_batch:.3f} s, x{t_single / t_batch:.2f}")

    with atomic_write(args.output) as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
