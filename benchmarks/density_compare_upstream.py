"""Sol58LC lattice constants: crossfunctional against the upstream ``chgnet`` package.

The same protocol is run with both implementations, for both weights:
each solid's primitive cell (``crossfunctional.workflows.build_solid``, at the
experimental lattice constant) is relaxed with FIRE + ``FrechetCellFilter`` to
fmax 0.01 eV/Å in at most 1000 steps

- ours: ``crossfunctional.workflows.density_benchmark`` (models
  ``chgnet-r2scan`` and ``chgnet-0.3.0``), whose JSON/CSV/PNG are written to
  ``benchmarks/results/density/`` when all 58 solids are run;
- upstream: ``chgnet.model.StructOptimizer`` with its defaults (FIRE,
  ``ase_filter="FrechetCellFilter"``) and ``CHGNet.load(model_name="r2scan")``
  / ``"0.3.0"``.

Printed: per-solid lattice constants of both and their difference (tolerance
0.002 Å for every solid), and the MAREs of ours, upstream and the reference
values ``REFERENCE_MARE`` (recorded results: the JSON file below). Written:
``benchmarks/results/density_compare_upstream.json`` (atomically).

Usage (from the repository root)::

    python benchmarks/density_compare_upstream.py                 # all 58 solids, ~20-40 min on 1-2 cores
    python benchmarks/density_compare_upstream.py --reuse-ours    # read ours from benchmarks/results/density/
    python benchmarks/density_compare_upstream.py --solids Cu_fcc Si_diamond --output /tmp/cmp.json
"""

from __future__ import annotations

import os

# Small graphs: one thread each for torch and OpenBLAS is fastest, and kind to a
# shared machine (ASE's FrechetCellFilter does many tiny LAPACK solves per step).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from contextlib import redirect_stdout  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from crossfunctional.io import atomic_write  # noqa: E402
from crossfunctional.workflows.density import (  # noqa: E402
    DensityBenchmark,
    build_solid,
    conventional_lattice_constant,
    density_benchmark,
    load_sol58lc,
    relative_error_percent,
)

ROOT = Path(__file__).resolve().parent
FMAX = 0.01  # eV/Å
STEPS = 1000
TOLERANCE_A = 0.002  # Å, per-solid agreement tolerance
#: (our model name, upstream chgnet model_name)
PAIRS = (("chgnet-r2scan", "r2scan"), ("chgnet-0.3.0", "0.3.0"))
#: Reference MAREs (%) printed beside a new run's: upstream chgnet under this protocol
#: (``benchmarks/results/density_compare_upstream.json``) and PBE.
REFERENCE_MARE = {"chgnet-r2scan": 0.682, "chgnet-0.3.0": 1.127, "pbe": 1.274}


def run_upstream(weights: str, solids, progress: bool = True) -> dict[str, dict]:
    """Relax ``solids`` with ``chgnet.model.StructOptimizer`` (FIRE + FrechetCellFilter).

    Returns ``{name: {"a": Å, "steps": int, "converged": bool, "seconds": s}}``;
    ``converged`` is inferred as steps < STEPS (StructOptimizer does not report it).
    """
    from chgnet.model import CHGNet, StructOptimizer
    from tqdm.auto import tqdm

    with redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name=weights, verbose=False)
        opt = StructOptimizer(model=model, use_device="cpu")
    out = {}
    for solid in tqdm(solids, desc=f"upstream {weights}", disable=not progress, unit="relax"):
        atoms = build_solid(solid)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = opt.relax(atoms, fmax=FMAX, steps=STEPS, verbose=False)
        seconds = time.perf_counter() - t0
        final = res["final_structure"]
        relaxed = build_solid(solid)
        relaxed.set_cell(final.lattice.matrix, scale_atoms=True)
        a = conventional_lattice_constant(relaxed, solid.prototype)
        # TrajectoryObserver records the start, every step and once more after the run
        steps = max(len(res["trajectory"].energies) - 2, 0)
        out[solid.name] = {"a": a, "steps": steps, "converged": steps < STEPS, "seconds": seconds}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--solids", nargs="+", help="subset of Sol58LC names (default: all 58)")
    parser.add_argument("--reuse-ours", action="store_true",
                        help="read our results from --ours-dir/density_benchmark.json instead of running them")  # fmt: skip
    parser.add_argument("--ours-dir", type=Path, default=ROOT / "results" / "density",
                        help="where our density_benchmark outputs are (written there when all 58 solids run)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "density_compare_upstream.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    progress = not args.no_progress

    table = load_sol58lc()
    if args.solids:
        by_name = {s.name: s for s in table}
        unknown = [n for n in args.solids if n not in by_name]
        if unknown:
            parser.error(f"unknown solid(s) {unknown}; names look like Cu_fcc, NaCl_b1, GaAs_b3")
        solids = [by_name[n] for n in args.solids]
    else:
        solids = table
    names = [s.name for s in solids]
    ours_models = [m for m, _ in PAIRS]
    timings: dict[str, float] = {}

    # ---- ours
    if args.reuse_ours:
        ours = DensityBenchmark.read(args.ours_dir / "density_benchmark.json")
        have = {s.solid.name for s in ours.solids}
        if not set(names) <= have or not set(ours_models) <= set(ours.models):
            parser.error(f"{args.ours_dir} lacks some of the solids or models asked for; run without --reuse-ours")
        if ours.protocol.get("fmax_eV_per_A") != FMAX or ours.protocol.get("max_steps") != STEPS:
            parser.error(f"{args.ours_dir} was run with another protocol: {ours.protocol}")
        timings["ours_seconds"] = None
    else:
        t0 = time.perf_counter()
        ours = density_benchmark(models=ours_models, fmax=FMAX, steps=STEPS, solids=names, progress=progress)
        timings["ours_seconds"] = time.perf_counter() - t0
        if len(solids) == len(table):
            paths = ours.write(args.ours_dir)
            print(f"ours written: {', '.join(str(p) for p in paths.values())}")
    ours_by_name = {s.solid.name: s for s in ours.solids}

    # ---- upstream
    upstream: dict[str, dict[str, dict]] = {}
    for model, weights in PAIRS:
        t0 = time.perf_counter()
        upstream[model] = run_upstream(weights, solids, progress=progress)
        timings[f"upstream_{weights}_seconds"] = time.perf_counter() - t0

    # ---- compare
    rows = []
    for solid in solids:
        row = {"name": solid.name, "a_exp": solid.a_exp, "a_pbe": solid.a_pbe, "models": {}}
        for model, _ in PAIRS:
            mine = ours_by_name[solid.name].models[model]
            theirs = upstream[model][solid.name]
            row["models"][model] = {
                "a_ours": mine.a,
                "a_upstream": theirs["a"],
                "diff_A": mine.a - theirs["a"],
                "rel_error_percent_ours": relative_error_percent(mine.a, solid.a_exp),
                "rel_error_percent_upstream": relative_error_percent(theirs["a"], solid.a_exp),
                "steps_ours": mine.steps,
                "steps_upstream": theirs["steps"],
                "converged_ours": mine.converged,
                "converged_upstream": theirs["converged"],
            }
        rows.append(row)

    def stats(values):
        v = np.asarray(values, dtype=float)
        return {"mare_percent": float(np.abs(v).mean()), "mre_percent": float(v.mean())}

    summary: dict[str, dict] = {}
    for model, weights in PAIRS:
        diffs = np.array([r["models"][model]["diff_A"] for r in rows])
        worst = int(np.argmax(np.abs(diffs)))
        summary[model] = {
            "upstream_model_name": weights,
            "ours": stats([r["models"][model]["rel_error_percent_ours"] for r in rows]),
            "upstream": stats([r["models"][model]["rel_error_percent_upstream"] for r in rows]),
            "reference_mare_percent": REFERENCE_MARE[model],
            "max_abs_diff_A": float(np.abs(diffs[worst])),
            "worst_solid": rows[worst]["name"],
            "mean_abs_diff_A": float(np.abs(diffs).mean()),
            "n_beyond_tolerance": int((np.abs(diffs) > TOLERANCE_A).sum()),
            "n_unconverged_ours": sum(not r["models"][model]["converged_ours"] for r in rows),
            "n_unconverged_upstream": sum(not r["models"][model]["converged_upstream"] for r in rows),
        }
    summary["pbe"] = {
        **stats([relative_error_percent(s.a_pbe, s.a_exp) for s in solids]),
        "reference_mare_percent": REFERENCE_MARE["pbe"],
    }

    # ---- print
    name_w = max(len(n) for n in names)
    head = f"{'solid':<{name_w}}  {'a_exp':>6}"
    for model, weights in PAIRS:
        head += f"  {'ours ' + weights:>13} {'upstream':>9} {'diff':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['name']:<{name_w}}  {r['a_exp']:6.3f}"
        for model, _ in PAIRS:
            m = r["models"][model]
            flag = "!" if abs(m["diff_A"]) > TOLERANCE_A else " "
            line += f"  {m['a_ours']:13.4f} {m['a_upstream']:9.4f} {m['diff_A']:+8.4f}{flag}"
        print(line)
    print("-" * len(head))
    for model, weights in PAIRS:
        s = summary[model]
        print(
            f"{weights:>7}: MARE ours {s['ours']['mare_percent']:.3f} %  upstream {s['upstream']['mare_percent']:.3f} %"
            f"  (reference {s['reference_mare_percent']:.3f} %);  MRE ours {s['ours']['mre_percent']:+.3f} %"
            f"  upstream {s['upstream']['mre_percent']:+.3f} %;  max |diff| {s['max_abs_diff_A']:.4f} Å"
            f" ({s['worst_solid']}), {s['n_beyond_tolerance']} solid(s) beyond {TOLERANCE_A} Å"
        )
    print(f"    PBE: MARE {summary['pbe']['mare_percent']:.3f} %  (reference {REFERENCE_MARE['pbe']:.3f} %)")

    import ase
    import chgnet

    from crossfunctional import __version__

    report = {
        "description": "Sol58LC lattice constants, crossfunctional vs upstream chgnet StructOptimizer",
        "protocol": {
            "start": "primitive cell at a_exp (crossfunctional.workflows.build_solid / ase.build.bulk)",
            "optimizer": "FIRE",
            "cell_filter": "FrechetCellFilter",
            "fmax_eV_per_A": FMAX,
            "max_steps": STEPS,
            "dtype": "float32",
            "device": "cpu",
            "tolerance_A": TOLERANCE_A,
            "upstream_converged": "inferred as steps < max_steps",
        },
        "summary": summary,
        "solids": rows,
        "timings_s": timings,
        "versions": {
            "crossfunctional": __version__,
            "chgnet": getattr(chgnet, "__version__", "unknown"),
            "torch": torch.__version__,
            "ase": ase.__version__,
            "python": platform.python_version(),
        },
    }
    with atomic_write(args.output, encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
