"""Multi-rank ``pair_style chgnet``: exactness on many systems and
rank layouts, long NVE on several rank counts, and time per step.

    python benchmarks/lammps_mpi.py verify      # single points, all systems x layouts
    python benchmarks/lammps_mpi.py nve         # 200 NVE steps, thermo across rank counts
    python benchmarks/lammps_mpi.py speed       # Si 4096: time per step, 1 and 2 ranks
    python benchmarks/lammps_mpi.py crossover   # time per step, 1 rank vs 2 ranks gather / exchange
    python benchmarks/lammps_mpi.py ceiling     # 1 rank: whole system vs two half systems at once
    python benchmarks/lammps_mpi.py report      # tables of the three in results/lammps_mpi/tables.md

Each writes ``benchmarks/results/lammps_mpi/<part>.json``. Every run is an
``mpiexec -n N lmp`` subprocess under a timeout. The reference is the serial
(folded) pair style on one rank; deviations are max|Δ|/max|ref| per
quantity (energy, per-atom energies, forces by atom ID, the six virial
pressure components).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk

from crossfunctional.models import export
from crossfunctional.workflows.lammps_mpi import deviations, mpi_nve, mpi_single_point, run_lmp
from crossfunctional.workflows.lammps_md import write_data

OUT = Path(__file__).resolve().parent / "results" / "lammps_mpi"
MODELS = Path("/tmp") / "crossfunctional-lammps-mpi-models"

# (ranks, processors): the rank layouts checked, each run with "parallel <mode>"
LAYOUTS = [(1, ""), (2, ""), (3, ""), (4, "4 1 1"), (4, "2 2 1")]


def model(dtype: str) -> Path:
    path = MODELS / f"chgnet_r2scan_{dtype}.pt"
    if not path.is_file():
        MODELS.mkdir(parents=True, exist_ok=True)
        export("chgnet-r2scan", path, dtype=dtype)
    return path


def systems() -> dict[str, Atoms]:
    si512 = bulk("Si", "diamond", a=5.43, cubic=True).repeat((4, 4, 4))
    si512.rattle(0.1, seed=5)
    si64 = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
    si64.rattle(0.1, seed=3)
    tri = bulk("Si", "diamond", a=5.43).repeat((4, 4, 4))  # primitive fcc cell: 60 degree angles
    tri.rattle(0.05, seed=11)
    mgo = bulk("MgO", "rocksalt", a=4.21, cubic=True).repeat((3, 3, 3))
    mgo.rattle(0.05, seed=6)
    slab = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
    slab.center(vacuum=20.0, axis=0)  # 4 1 1: the two outer ranks have no local atoms
    slab.rattle(0.05, seed=2)
    si8 = bulk("Si", "diamond", a=5.43, cubic=True)
    si8.rattle(0.1, seed=1)
    return {"Si 512": si512, "Si 64": si64, "Si triclinic 128": tri, "MgO 216": mgo, "Si slab 64 + vacuum": slab, "Si 8": si8}


def verify(args) -> dict:
    """Single points of every system x layout in ``parallel <args.mode>``
    (plus ``parallel shell`` on Si 64 with the exchange) against serial.
    ``--quick``: MgO 216 (about 1.5 min per exchange point) on 2 ranks
    only, and no ``parallel shell`` (3.5 min)."""
    results = []
    option = f"parallel {args.mode}"
    todo = [
        (name, atoms, "float64", (r, option, p))
        for name, atoms in systems().items()
        for r, p in LAYOUTS
        if not (args.quick and name == "MgO 216" and (r, p) != (2, ""))
    ]
    if args.mode == "exchange" and not args.quick:
        todo.append(("Si 64", systems()["Si 64"], "float64", (2, "parallel shell", "")))
    todo += [("Si 512", systems()["Si 512"], "float32", (r, option, p)) for r, p in LAYOUTS[1:3]]
    refs = {}
    for name, atoms, dtype, (ranks, options, processors) in todo:
        if args.only and not any(s in name for s in args.only):
            continue
        if args.ranks and ranks not in args.ranks:
            continue
        key = (name, dtype)
        if key not in refs:
            t = time.perf_counter()
            refs[key] = mpi_single_point(atoms, model(dtype), 0, timeout=args.timeout)
            print(f"{name} {dtype} serial {time.perf_counter() - t:.1f}s", flush=True)
        t = time.perf_counter()
        got = mpi_single_point(atoms, model(dtype), ranks, pair_options=options, processors=processors, timeout=args.timeout)
        wall = time.perf_counter() - t
        dev = deviations(got, refs[key])
        tol = 1e-12 if dtype == "float64" else 1e-5
        row = {
            "system": name, "atoms": len(atoms), "dtype": dtype, "ranks": ranks,
            "options": options, "processors": processors or "auto",
            "wall_s": round(wall, 1), "pass": bool(max(dev.values()) < tol), "tolerance": tol,
            **{k: float(v) for k, v in dev.items()},
        }  # fmt: skip
        results.append(row)
        print(json.dumps(row), flush=True)
        _write(args, {"mode": args.mode, "quick": args.quick, "rows": results, "all_pass": all(r["pass"] for r in results)})  # as it goes
    return {"mode": args.mode, "quick": args.quick, "rows": results, "all_pass": all(r["pass"] for r in results)}


def nve(args) -> dict:
    atoms = systems()["Si 64"]
    runs = {}
    for ranks, options, processors in [(0, "", ""), (2, "parallel exchange", ""), (4, "parallel exchange", "2 2 1")]:
        label = f"{ranks or 1} rank(s) {options.split()[-1] if options else 'serial'} {processors}".strip()
        t = time.perf_counter()
        out = mpi_nve(
            atoms, model("float64"), ranks, args.steps, temperature=1500.0, pair_options=options,
            processors=processors, thermo_every=10, timeout=3000, timestep_ps=0.001,
        )  # fmt: skip
        rows = out["thermo"]
        # LAMMPS' end-of-run statistics: local atoms per rank (ave, max, min) after the run
        nlocal = re.search(r"Nlocal:\s+(\S+) ave\s+(\S+) max\s+(\S+) min", out["log"])
        runs[label] = {"wall_s": round(time.perf_counter() - t, 1), "thermo": rows,
                       "nlocal_ave_max_min_at_end": [float(v) for v in nlocal.groups()] if nlocal else None}  # fmt: skip
        print(label, runs[label]["wall_s"], rows[-1], flush=True)
    ref = runs[next(iter(runs))]["thermo"]
    worst = {}
    for label, run in runs.items():
        dev = 0.0
        for a, b in zip(ref, run["thermo"]):
            for key in ("PotEng", "TotEng", "Press", "Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz"):
                scale = abs(a[key]) if key in ("PotEng", "TotEng") else max(abs(a["Press"]), 100.0)
                dev = max(dev, abs(a[key] - b[key]) / scale)
        worst[label] = {"max_relative_deviation": dev, "per_step": [(a["Step"], abs(a["PotEng"] - b["PotEng"])) for a, b in zip(ref, run["thermo"])]}
    return {"system": "Si 64, 1500 K, 1 fs, reneighbouring every step", "steps": args.steps, "runs": runs, "deviation_from_serial": worst}


def _loop_time(log: str) -> float:
    m = re.search(r"Loop time of ([0-9.eE+-]+) on", log)
    return float(m.group(1))


def _serial_graph(atoms: Atoms) -> dict:
    """Nodes, directed edges and angles of the serial (periodic) graph."""
    import torch

    from crossfunctional.models import load_model
    from crossfunctional.neighbors import neighbor_list

    net = load_model("chgnet-r2scan")
    z, edge_index, shifts, vectors = neighbor_list(atoms, 6.0).to_torch("cpu", torch.float32)
    g = net.build_graph(edge_index, shifts, vectors, len(atoms))
    return {"nodes": len(atoms), "edges": int(edge_index.shape[1]), "angles": int(g.angle_center.shape[0])}


def _graph_line(log: str) -> dict | None:
    m = re.search(
        r"graph over (\d+) rank\(s\): (\d+) local atoms, (\d+) nodes, (\d+) directed edges, (\d+) angles "
        r"\(largest rank: (\d+) local, (\d+) nodes, (\d+) edges, (\d+) angles\)",
        log,
    )
    if m is None:
        return None
    v = [int(x) for x in m.groups()]
    return {"sum": {"local": v[1], "nodes": v[2], "edges": v[3], "angles": v[4]},
            "largest_rank": {"local": v[5], "nodes": v[6], "edges": v[7], "angles": v[8]}}  # fmt: skip


def speed(args) -> dict:
    """Time per MD step of Si 4096 (one thread per rank). ``serial, no
    recompute``: the serial path with the whole backward pass in memory (the
    default export differentiates graphs above 100k edges + angles segment
    by segment, recomputing each), which is what the unfolded path does."""
    from crossfunctional.models import load_model

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((8, 8, 8))
    atoms.rattle(0.05, seed=7)
    no_recompute = MODELS / f"chgnet_r2scan_{args.dtype}_no_recompute.pt"
    if not no_recompute.is_file():
        net = load_model("chgnet-r2scan", dtype=args.dtype)
        net.recompute_threshold = 10**12
        export(net, no_recompute, dtype=args.dtype)
    serial_graph = _serial_graph(atoms)
    rows = []
    configs = [
        ("serial", 0, 1, "", model(args.dtype)),
        ("serial, no recompute", 0, 1, "", no_recompute),
        ("exchange", 2, 1, "parallel exchange", model(args.dtype)),
        ("exchange, no recompute", 2, 1, "parallel exchange", no_recompute),
        ("exchange on 1 rank", 1, 1, "parallel exchange", model(args.dtype)),
    ]
    for label, ranks, threads, options, path in configs:
        work = Path(tempfile.mkdtemp(prefix="chgnet-mpi-speed-"))
        data = write_data(atoms, work / "si4096.data")
        script = f"""units metal
atom_style atomic
read_data {data.path}
pair_style chgnet {path} threads {threads} {options}
pair_coeff * * Si
velocity all create 300.0 1234 mom yes rot no
timestep 0.001
fix nve all nve
thermo 1
run {args.steps}
"""
        proc = run_lmp(script, ranks, work, timeout=3000, threads=threads)
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
        loop = _loop_time(proc.stdout)
        graph = _graph_line(proc.stdout)
        row = {"config": label, "ranks": ranks or 1, "threads_per_rank": threads, "steps": args.steps,
               "s_per_step": loop / args.steps, "graph": graph}  # fmt: skip
        if graph is not None:
            row["halo_factor_sum_over_ranks"] = {k: graph["sum"][k] / serial_graph[k] for k in ("nodes", "edges", "angles")}
            row["halo_factor_largest_rank"] = {
                k: graph["largest_rank"][k] / (serial_graph[k] * graph["largest_rank"]["local"] / len(atoms))
                for k in ("nodes", "edges", "angles")
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"system": "Si 4096 (8x8x8 cubic cells, 43.4 A box), rattled 0.05 A, NVE from 300 K", "dtype": args.dtype,
            "serial_graph": serial_graph, "rows": rows}  # fmt: skip


CROSSOVER = {  # system: (builder, NVE steps timed per mode: serial / gather, exchange)
    "Si 64": (lambda: _si(2), (40, 10)),
    "Si 216": (lambda: _si(3), (20, 5)),
    "MgO 216": (lambda: _mgo(3), (5, 1)),
    "Si 512": (lambda: _si(4), (5, 3)),
    "Si 1728": (lambda: _si(6), (2, 2)),
    "Si 4096": (lambda: _si(8), (1, 1)),
    "MgO 1728": (lambda: _mgo(6), (1, 1)),  # not in the default set: --only "MgO 1728" (about 5 min a round)
}
CROSSOVER_DEFAULT = [n for n in CROSSOVER if n != "MgO 1728"]


def _si(n: int | tuple[int, int, int]) -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(n)
    atoms.rattle(0.05, seed=7)
    return atoms


def _mgo(n: int | tuple[int, int, int]) -> Atoms:
    atoms = bulk("MgO", "rocksalt", a=4.21, cubic=True).repeat(n)
    atoms.rattle(0.05, seed=6)
    return atoms


def _time_per_step(atoms: Atoms, path: Path, ranks: int, options: str, steps: int, timeout: float,
                   threads: int = 1) -> tuple[float, str]:
    """LAMMPS loop time per NVE step (``threads`` torch threads per rank) of
    ``run steps`` after a one-step warm-up run; returns it and the log."""
    work = Path(tempfile.mkdtemp(prefix="chgnet-mpi-crossover-"))
    data = write_data(atoms, work / "system.data")
    script = f"""units metal
atom_style atomic
read_data {data.path}
pair_style chgnet {path} threads {threads} {options}
pair_coeff * * {" ".join(data.species)}
velocity all create 300.0 1234 mom yes rot no
timestep 0.001
fix nve all nve
thermo 1
run 1
run {steps}
"""
    proc = run_lmp(script, ranks, work, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on", proc.stdout)
    return float(loops[-1]) / steps, proc.stdout


def crossover(args) -> dict:
    """Time per MD step on 1 rank (serial; also with ``retain_memory no``
    and with 2 torch threads, the most a gathered evaluation on rank 0 can
    reach) and on 2 ranks with ``parallel gather`` and ``parallel
    exchange``, one thread per rank, modes alternating within each round;
    and what ``parallel auto`` chooses on 2 ranks."""
    rows = []
    names = [n for n in CROSSOVER if any(s in n for s in args.only)] if args.only else CROSSOVER_DEFAULT
    path = model(args.dtype)
    auto = {}
    for name in names:  # the choice and its reason from the log (run 0)
        log = mpi_single_point(CROSSOVER[name][0](), path, 2, pair_options="parallel auto", timeout=args.timeout)["log"]
        auto[name] = re.search(r"parallel auto: (.*)", log).group(1)
        print(name, auto[name], flush=True)
    for round_ in range(args.repeat):
        for name in names:
            build, (steps, steps_exchange) = CROSSOVER[name]
            atoms = build()
            for label, ranks, options, n, threads in [
                ("serial, 1 rank", 0, "", steps, 1),
                ("serial, 1 rank, retain_memory no", 0, "retain_memory no", steps, 1),
                ("serial, 1 rank, 2 threads", 0, "", steps, 2),
                ("gather, 2 ranks", 2, "parallel gather", steps, 1),
                ("exchange, 2 ranks", 2, "parallel exchange", steps_exchange, 1),
            ]:
                t, log = _time_per_step(atoms, path, ranks, options, n, args.timeout, threads)
                row = {"system": name, "atoms": len(atoms), "round": round_, "config": label, "steps": n, "s_per_step": t}
                rows.append(row)
                print(json.dumps(row), flush=True)
        _write(args, {"dtype": args.dtype, "rows": rows, "auto": auto})
    return {"dtype": args.dtype, "rows": rows, "auto": auto}


CEILING = {  # system: (builder of the whole system, builder of one half along z, NVE steps timed)
    "Si 1728": (lambda: _si(6), lambda: _si((6, 6, 3)), 2),
    "Si 4096": (lambda: _si(8), lambda: _si((8, 8, 4)), 1),
    "MgO 1728": (lambda: _mgo(6), lambda: _mgo((6, 6, 3)), 1),
}


def ceiling(args) -> dict:
    """What the machine allows a 2-rank split: the serial time per step of
    the whole system against that of one half of it (the same crystal, half
    the repeats along z: the same work per atom, with no halo and no
    communication), alone and with two halves run at the same time as two
    independent 1-rank processes, one thread each, so that they share the
    memory bandwidth and caches as two ranks do. ``serial / (two halves at
    once)`` is the speed-up of a perfect split into two ranks (it bounds
    ``parallel exchange``; ``parallel gather`` is bounded by one rank on 2
    threads); both are timed beside it, as is the gather on 2 ranks;
    configurations alternate within each round."""
    from concurrent.futures import ThreadPoolExecutor

    rows = []
    names = [n for n in CEILING if any(s in n for s in args.only)] if args.only else list(CEILING)
    path = model(args.dtype)
    for round_ in range(args.repeat):
        for name in names:
            whole, half, steps = CEILING[name][0](), CEILING[name][1](), CEILING[name][2]
            for label, atoms, ranks, options, threads in [
                ("serial, whole system", whole, 0, "", 1),
                ("serial, one half alone", half, 0, "", 1),
                ("serial, two halves at once", half, 0, "", 1),
                ("serial, whole system, 2 threads", whole, 0, "", 2),
                ("gather, 2 ranks", whole, 2, "parallel gather", 1),
            ]:
                if label == "serial, two halves at once":
                    with ThreadPoolExecutor(2) as pool:
                        runs = list(pool.map(lambda _: _time_per_step(half, path, 0, "", steps, args.timeout), range(2)))
                    t = max(r[0] for r in runs)
                else:
                    t = _time_per_step(atoms, path, ranks, options, steps, args.timeout, threads)[0]
                row = {"system": name, "atoms": len(whole), "round": round_, "config": label, "steps": steps, "s_per_step": t}
                rows.append(row)
                print(json.dumps(row), flush=True)
        _write(args, {"dtype": args.dtype, "rows": rows})
    return {"dtype": args.dtype, "rows": rows}


def _times_by_system(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """s/step of each round, by system and configuration (in the rows' order)."""
    times: dict = {}
    for r in rows:
        times.setdefault(r["system"], {}).setdefault(r["config"], []).append(r["s_per_step"])
    return times


def _median_cells(by: dict[str, list[float]]) -> dict[str, str]:
    """Each configuration's median s/step with every round's value in brackets."""
    return {k: f"{np.median(v):.3g} ({', '.join(f'{x:.3g}' for x in v)})" for k, v in by.items()}


def report(args) -> dict:
    """Markdown tables of verify.json, verify_gather.json, nve.json,
    speed.json and crossover.json."""
    lines = []
    nve_file, speed_file = (OUT / f"{k}.json" for k in ("nve", "speed"))
    for verify_file in (OUT / "verify.json", OUT / "verify_gather.json"):
        if not verify_file.is_file():
            continue
        v = json.loads(verify_file.read_text())
        tols = sorted({(r["dtype"], r["tolerance"]) for r in v["rows"]})
        lines += [f"## Single points against the serial pair style ({verify_file.name})", "",
                  "max|Δ|/max|ref| per quantity; tolerance " + ", ".join(f"{t:g} ({d})" for d, t in tols) + ".", "",
                  "| system | atoms | dtype | ranks | mode | processors | energy | pe/atom | forces | pressure | wall s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in v["rows"]:
            lines.append(
                f"| {r['system']} | {r['atoms']} | {r['dtype']} | {r['ranks']} | {r['options']} | {r['processors']} | "
                f"{r['energy']:.1e} | {r['energies']:.1e} | {r['forces']:.1e} | {r['pressure']:.1e} | {r['wall_s']} |"
            )
        lines += ["", f"All pass: {v['all_pass']}.", ""]
    crossover_files = sorted(OUT.glob("crossover*.json"))  # crossover.json, then crossover_<tag>.json
    if crossover_files:
        c = {"dtype": None, "rows": [], "auto": {}}
        for f in crossover_files:
            part = json.loads(f.read_text())
            c["dtype"] = c["dtype"] or part["dtype"]
            c["rows"] += part["rows"]
            c["auto"].update(part.get("auto", {}))
        times = _times_by_system(c["rows"])
        lines += [f"## Time per MD step: 1 rank against 2 ranks ({c['dtype']}, one thread per rank)", "",
                  "Median over the rounds (each round's value in brackets); speed-up = serial time / 2-rank time, "
                  "the median of the rounds' ratios (the modes alternate within a round).", "",
                  "| system | serial, 1 rank s/step | serial, `retain_memory no` | serial, 1 rank, 2 threads | gather, 2 ranks | exchange, 2 ranks | 2 threads speed-up | gather speed-up | exchange speed-up | `parallel auto` on 2 ranks |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for name, by in times.items():
            cell = _median_cells(by)
            serial = np.array(by["serial, 1 rank"])

            def speedup(config: str) -> str:  # median of the rounds' ratios; blank where a file lacks the config
                return f"{np.median(serial / np.array(by[config])):.2f}" if config in by else ""

            two, no_retain = "serial, 1 rank, 2 threads", "serial, 1 rank, retain_memory no"
            auto = c.get("auto", {}).get(name, "").split(":")[0]
            lines.append(f"| {name} | {cell['serial, 1 rank']} | {cell.get(no_retain, '')} | {cell.get(two, '')} | "
                         f"{cell['gather, 2 ranks']} | {cell['exchange, 2 ranks']} | {speedup(two)} | "
                         f"{speedup('gather, 2 ranks')} | {speedup('exchange, 2 ranks')} | {auto} |")  # fmt: skip
        lines.append("")
    if (OUT / "ceiling.json").is_file():
        ce = json.loads((OUT / "ceiling.json").read_text())
        times = _times_by_system(ce["rows"])
        lines += [f"## The machine's ceiling for 2 ranks ({ce['dtype']}, one thread per process)", "",
                  "Median over the rounds (each round's value in brackets). A half is the same crystal with half the "
                  "repeats along z; two halves at once are two independent 1-rank runs sharing the machine. "
                  "Ceiling = whole / (two halves at once), the median of the rounds' ratios: the speed-up of a "
                  "perfect split into two ranks, with no halo and no communication, which bounds the exchange; "
                  "the gather's bound is the whole system on one rank with 2 threads. Speed-ups against the whole "
                  "system on 1 rank and 1 thread, median of the rounds' ratios.", "",
                  "| system | whole, 1 rank s/step | one half alone | two halves at once | whole, 2 threads | gather, 2 ranks | whole / half alone | ceiling of a split | 2 threads speed-up | gather speed-up |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for name, by in times.items():
            cell = _median_cells(by)
            whole = np.array(by["serial, whole system"])
            ratio = {k: f"{np.median(whole / np.array(v)):.2f}" for k, v in by.items()}
            lines.append(f"| {name} | {cell['serial, whole system']} | {cell['serial, one half alone']} | "
                         f"{cell['serial, two halves at once']} | {cell['serial, whole system, 2 threads']} | "
                         f"{cell['gather, 2 ranks']} | {ratio['serial, one half alone']} | "
                         f"{ratio['serial, two halves at once']} | {ratio['serial, whole system, 2 threads']} | "
                         f"{ratio['gather, 2 ranks']} |")
        lines.append("")
    if nve_file.is_file():
        n = json.loads(nve_file.read_text())
        lines += [f"## NVE: {n['system']}, {n['steps']} steps", "",
                  "| run | wall s | max relative deviation from 1 rank (PE, TotEng, pressure components) | local atoms per rank at the end (ave, max, min) |",
                  "| --- | --- | --- | --- |"]  # fmt: skip
        for label, run in n["runs"].items():
            dev = n["deviation_from_serial"][label]["max_relative_deviation"]
            lines.append(f"| {label} | {run['wall_s']} | {dev:.1e} | {run.get('nlocal_ave_max_min_at_end')} |")
        lines.append("")
    if speed_file.is_file():
        sp = json.loads(speed_file.read_text())
        lines += [f"## Time per step: {sp['system']}, {sp['dtype']}", "",
                  f"Serial graph: {sp['serial_graph']}.", "",
                  "| config | ranks x threads | s/step | graph nodes / edges / angles over all ranks vs serial | largest rank vs its share of serial |",
                  "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in sp["rows"]:
            f_sum = r.get("halo_factor_sum_over_ranks")
            f_max = r.get("halo_factor_largest_rank")
            fmt = (lambda f: " / ".join(f"{f[k]:.2f}" for k in ("nodes", "edges", "angles"))) if f_sum else None
            lines.append(
                f"| {r['config']} | {r['ranks']} x {r['threads_per_rank']} | {r['s_per_step']:.2f} | "
                f"{fmt(f_sum) if f_sum else '-'} | {fmt(f_max) if f_max else '-'} |"
            )
        lines.append("")
    (OUT / "tables.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=["verify", "nve", "speed", "crossover", "ceiling", "report"])
    p.add_argument("--only", nargs="*", default=None, help="verify, crossover, ceiling: only systems whose name contains one of these")
    p.add_argument("--ranks", nargs="*", type=int, default=None, help="verify: only these rank counts")
    p.add_argument("--tag", default="", help="suffix of the output file name")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--mode", choices=["exchange", "gather"], default="exchange", help="verify: the parallel mode")
    p.add_argument("--quick", action="store_true", help="verify: MgO 216 on 2 ranks only, no parallel shell")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--repeat", type=int, default=2, help="crossover, ceiling: rounds over all systems and configurations")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 200 if args.part == "nve" else 3
    if args.part == "verify" and args.mode == "gather" and not args.tag:
        args.tag = "gather"  # verify_gather.json beside the exchange's verify.json
    if args.part == "report":
        report(args)
        return 0
    result = {"verify": verify, "nve": nve, "speed": speed, "crossover": crossover, "ceiling": ceiling}[args.part](args)
    print(f"wrote {_write(args, result)}")
    return 0


def _write(args, result: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{args.part}{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


if __name__ == "__main__":
    sys.exit(main())
