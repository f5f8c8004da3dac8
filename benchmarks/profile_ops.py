"""Where the time of one energy + forces + stress call goes, by kind of operator.

``torch.profiler`` over calls of the default calculator (TorchScript, one
thread, float32, after a warm-up) on Si 512 and MgO 512 (the cases of the
FLOP-rate measurement in ``performance.json``) and an 8-atom Si cell (a
small cell, where the per-operator cost dominates), self CPU time of every
ATen operator summed by kind:

- matrix products (``mm``, ``addmm``, ``bmm``, ``linear``, ``matmul``): the
  only part that can approach the machine's matrix-product rate;
- gathers and scatters (``index_select``, ``index``, ``index_add_``,
  ``scatter_add_``, ``gather``, ...): the message passing's memory traffic;
- elementwise and reductions (activations, products, sums, norms);
- everything else (allocation, copies, views, graph construction).

Also the number of operator calls per evaluation and, for the small cell,
the wall time per call next to the time inside ATen operators. Written:
``benchmarks/results/profile_ops.json``.

    python benchmarks/profile_ops.py [--repeats 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from ase.build import bulk  # noqa: E402

ROOT = Path(__file__).resolve().parent
KINDS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul", "aten::baddbmm"),
    "gathers and scatters": ("aten::index_select", "aten::index", "aten::index_add_", "aten::index_add",
                             "aten::scatter_add_", "aten::scatter_add", "aten::gather", "aten::index_put_",
                             "aten::scatter_", "aten::embedding", "aten::index_copy_"),
    "elementwise and reductions": ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::sigmoid",
                                   "aten::silu_backward", "aten::sigmoid_backward", "aten::layer_norm",
                                   "aten::native_layer_norm", "aten::native_layer_norm_backward", "aten::sum",
                                   "aten::cos", "aten::sin", "aten::exp", "aten::pow", "aten::sqrt", "aten::norm",
                                   "aten::linalg_vector_norm", "aten::acos", "aten::clamp", "aten::where",
                                   "aten::mul_", "aten::add_", "aten::neg", "aten::reciprocal", "aten::rsqrt",
                                   "aten::threshold_backward", "aten::addcmul", "aten::lerp", "aten::mean",
                                   "aten::var", "aten::tanh", "aten::cat", "aten::abs", "aten::sign"),
}


def kind_of(name: str) -> str:
    for kind, names in KINDS.items():
        if name in names:
            return kind
    return "other"


def profile(atoms, repeats: int) -> dict:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from crossfunctional.calculators import CrossFunctionalCalculator

    calc = CrossFunctionalCalculator(model="chgnet-r2scan", threads=1)

    def call():
        calc.reset()
        atoms.calc = calc
        atoms.get_forces()
        atoms.get_stress()

    call()
    call()
    import time

    t0 = time.perf_counter()
    for _ in range(20):
        call()
    wall_ms = (time.perf_counter() - t0) / 20 * 1000
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            call()
    totals: dict[str, float] = {}
    calls = 0
    top = []
    for evt in prof.key_averages():
        if not evt.key.startswith("aten::"):
            continue
        us = evt.self_cpu_time_total
        totals[kind_of(evt.key)] = totals.get(kind_of(evt.key), 0.0) + us
        calls += evt.count
        top.append((us, evt.key, evt.count))
    total = sum(totals.values())
    top.sort(reverse=True)
    return {
        "atoms": len(atoms),
        "ms_per_call_wall_unprofiled": wall_ms,
        "ms_per_call_in_aten_profiled": total / 1000 / repeats,
        "fraction": {k: v / total for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
        "aten_calls_per_evaluation": calls / repeats,
        "top_operators": [{"op": k, "fraction": us / total, "calls_per_evaluation": n / repeats} for us, k, n in top[:12]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", type=Path, default=ROOT / "results" / "profile_ops.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    from crossfunctional.io import atomic_write

    cases = {"Si512": bulk("Si", "diamond", a=5.43, cubic=True) * 4, "MgO512": bulk("MgO", "rocksalt", a=4.21, cubic=True) * 4,
             "Si8": bulk("Si", "diamond", a=5.43, cubic=True)}
    out = {"threads": 1, "torch": torch.__version__, "cases": {}}
    for name, atoms in cases.items():
        atoms.rattle(0.01, seed=0)
        out["cases"][name] = profile(atoms, args.repeats)
        print(name, json.dumps(out["cases"][name]["fraction"]), flush=True)
    with atomic_write(args.output) as fh:
        json.dump(out, fh, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
