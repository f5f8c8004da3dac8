"""Calculator calls on a machine with one busy core: the thread count per call.

A background process keeps one core busy (a pure-Python loop). With torch
allowed 2 threads, the calculator's default ``threads="auto"`` runs small
graphs on one thread and large ones on torch's two; this script times force
calls of small cells (Si 8, MgO 8) and of Si 512 with ``threads="auto"``,
with a fixed 1 thread and with a fixed 2 threads, alternating, and reports
medians (ms per call).

    python benchmarks/busy_machine.py

Writes ``benchmarks/results/busy_machine.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _spin(stop):
    x = 0
    while not stop.is_set():
        x += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--results", default=str(RESULTS / "busy_machine.json"))
    args = parser.parse_args()

    import torch
    from ase.build import bulk

    from crossfunctional.calculators import CrossFunctionalCalculator

    torch.set_num_threads(2)
    cases = {
        "Si 8": bulk("Si", "diamond", a=5.43, cubic=True),
        "MgO 8": bulk("MgO", "rocksalt", a=4.21, cubic=True),
        "Si 512": bulk("Si", "diamond", a=5.43, cubic=True) * (4, 4, 4),
    }
    calcs = {mode: CrossFunctionalCalculator(threads=mode) for mode in ("auto", 1, 2)}
    for atoms in cases.values():
        atoms.rattle(0.02, seed=1)
    stop = multiprocessing.Event()
    busy = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
    busy.start()
    out = {"machine": "2-core CPU, one core kept busy by another process; torch.set_num_threads(2)", "cases": {}}
    try:
        for name, atoms in cases.items():
            times = {str(mode): [] for mode in calcs}
            repeats = args.repeats if len(atoms) < 100 else max(3, args.repeats // 5)
            for mode, calc in calcs.items():  # warm-up
                work = atoms.copy()
                work.calc = calc
                work.get_forces()
            for k in range(repeats):
                for mode, calc in calcs.items():
                    work = atoms.copy()
                    work.positions[0, 0] += 1e-4 * (k + 1)
                    work.calc = calc
                    t0 = time.perf_counter()
                    work.get_forces()
                    times[str(mode)].append(1e3 * (time.perf_counter() - t0))
            out["cases"][name] = {mode: {"median_ms": statistics.median(v), "max_ms": max(v)} for mode, v in times.items()}
            print(name + ": " + ", ".join(f"{m}: {r['median_ms']:.1f} ms (max {r['max_ms']:.1f})" for m, r in out["cases"][name].items()))
    finally:
        stop.set()
        busy.join()
    Path(args.results).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
