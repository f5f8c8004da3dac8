"""``crossfunctional models | predict | relax | export``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from crossfunctional.cli.common import (
    DEFAULT_MODEL,
    OutputError,
    add_dispersion_options,
    add_model_options,
    calculator_from_args,
    check_device,
    check_output,
)

#: suffixes ``predict -o`` writes, and how
PREDICT_FORMATS = {".json": "json", ".extxyz": "extxyz", ".xyz": "extxyz"}


def cmd_models(args: argparse.Namespace) -> int:
    from crossfunctional.models import available_models

    print("Registered models (also accepted: a chgnet checkpoint .pth.tar or an exported TorchScript .pt file):")
    for name, functional in available_models().items():
        default = "  [default]" if name == DEFAULT_MODEL else ""
        print(f"  {name:<16} {functional}{default}")
    return 0


def _evaluate_frames(frames, calc) -> list:
    """Results of every frame (a dict), or the error of a frame that cannot be
    evaluated (its message): all frames as batched graphs, frame by frame
    only when the batch fails."""
    from crossfunctional.calculators import predict_batch
    from crossfunctional.errors import CrossFunctionalError

    try:
        return predict_batch(frames, calc)
    except CrossFunctionalError:
        if len(frames) == 1:
            raise  # one frame: its error is the command's error
        out = []
        for atoms in frames:
            try:
                out.append(predict_batch([atoms], calc)[0])
            except CrossFunctionalError as exc:
                out.append(str(exc))
        return out


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from ase.units import GPa

    from crossfunctional.io import read_structures

    fmt = None
    if args.output:
        fmt = PREDICT_FORMATS.get(Path(args.output).suffix.lower())
        if fmt is None:
            raise OutputError(f"cannot write {args.output}: unknown suffix {Path(args.output).suffix or '(none)'!r}; "
                              "use .json, .extxyz or .xyz")
        check_output(args.output)
    frames = read_structures(args.structure)
    calc = calculator_from_args(args)
    results = _evaluate_frames(frames, calc)
    records, good, failed = [], [], []
    for k, (atoms, res) in enumerate(zip(frames, results)):
        if isinstance(res, str):
            failed.append(k)
            print(f"frame {k}: {atoms.get_chemical_formula()}  FAILED: {res}", file=sys.stderr)
            continue
        energy = res["energy"]
        rec = {
            "frame": k,
            "formula": atoms.get_chemical_formula(),
            "n_atoms": len(atoms),
            "energy_eV": energy,
            "energy_per_atom_eV": energy / len(atoms),
            "forces_eV_per_A": res["forces"].tolist(),
            "magmoms_muB": res["magmoms"].tolist(),
            "site_energies_eV": res["energies"].tolist(),
        }
        if "stress" in res:
            rec["stress_GPa_voigt"] = (res["stress"] / GPa).tolist()
        records.append(rec)
        good.append((atoms, res))
        print(f"frame {k}: {rec['formula']}  E = {energy:.6f} eV  ({rec['energy_per_atom_eV']:.6f} eV/atom)")
        print(f"  max |F| = {np.linalg.norm(res['forces'], axis=1).max():.6f} eV/Å")
        if "stress_GPa_voigt" in rec:
            print("  stress (GPa, xx yy zz yz xz xy, positive tensile): " + " ".join(f"{s:.4f}" for s in rec["stress_GPa_voigt"]))
        else:
            print("  stress: not defined (structure is not fully periodic)")
        print("  magmoms (μB): " + " ".join(f"{m:.3f}" for m in rec["magmoms_muB"]))
    if args.output and good:
        _write_predictions(args.output, fmt, args.model, records, good, failed)
        print(f"wrote {args.output} ({len(good)} frames)")
    if failed:
        print(f"crossfunctional: {len(failed)} of {len(frames)} frames failed (frames {', '.join(map(str, failed))})", file=sys.stderr)
        return 2 if len(failed) == len(frames) else 1
    return 0


def _write_predictions(path, fmt, model, records, good, failed) -> None:
    from crossfunctional.io import atomic_path, atomic_write

    if fmt == "json":
        with atomic_write(path) as fh:
            json.dump({"model": model, "frames": records, "failed_frames": failed}, fh, indent=1)
        return
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    out = []
    for atoms, res in good:
        atoms = atoms.copy()
        props = {k: res[k] for k in ("energy", "forces", "stress", "magmoms") if k in res}
        atoms.calc = SinglePointCalculator(atoms, **props)
        atoms.arrays["site_energies"] = res["energies"]
        out.append(atoms)
    with atomic_path(path) as tmp:
        write(tmp, out, format="extxyz")


def cmd_relax(args: argparse.Namespace) -> int:
    from ase.io import write

    from crossfunctional.io import atomic_path, read_structures
    from crossfunctional.workflows import relax

    check_output(args.output)
    if args.trajectory:
        check_output(args.trajectory)
    atoms = read_structures(args.structure, index=-1)[0]
    atoms.calc = calculator_from_args(args)
    cell_filter = None if args.cell_filter.lower() == "none" else args.cell_filter
    result = relax(
        atoms,
        fmax=args.fmax,
        steps=args.steps,
        optimizer=args.optimizer,
        cell_filter=cell_filter,
        fix_symmetry=args.fix_symmetry,
        trajectory=args.trajectory,
    )
    with atomic_path(args.output) as tmp:
        write(tmp, result.atoms, format=args.format or None)
    status = "converged" if result.converged else "NOT converged"
    print(
        f"{status} in {result.steps} steps: E = {result.energy:.6f} eV, max |F| = {result.fmax:.5f} eV/Å, "
        f"volume = {result.atoms.get_volume():.4f} Å^3; wrote {args.output}"
    )
    return 0 if result.converged else 1


def cmd_export(args: argparse.Namespace) -> int:
    from crossfunctional.models import ModelError, export, load_model, model_metadata

    check_device(args)
    model_name = args.model_positional or args.model
    check_output(args.output)
    model = load_model(model_name, dtype=args.dtype, task=args.task)
    meta = model_metadata(model)
    if args.aot:
        from crossfunctional.calculators.aot import export_package

        if args.device != "cpu":
            raise ModelError("--aot compiles for the CPU; leave out --device")
        if not str(args.output).endswith(".pt"):  # before the minute of compiling, not after it
            raise ModelError(f"--aot writes a .pt file and the .pt2 package beside it; -o must end in .pt, "
                             f"got {args.output}")
        t0 = time.perf_counter()
        print("compiling the network ahead of time for this machine (about a minute)...", file=sys.stderr, flush=True)
        path, package = export_package(model, args.output, dtype=args.dtype)
        print(f"wrote {path} and {package} ({meta['model_name']}, cutoff {meta['cutoff']} Å, {args.dtype}; "
              f"compiled in {time.perf_counter() - t0:.0f} s): pair_style chgnet {package}")
        return 0
    path = export(model, args.output, dtype=args.dtype)
    print(f"wrote {path} ({meta['model_name']}, cutoff {meta['cutoff']} Å, {args.dtype})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``models``, ``predict``, ``relax`` and ``export``."""
    p = sub.add_parser("models", help="list the models that can be loaded")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("predict", help="energy, forces, stress, magmoms of every frame in a file")
    p.add_argument("structure", help="structure file (any format ase.io.read understands; every frame is evaluated)")
    p.add_argument("-o", "--output", help="also write the results: .json, or .extxyz/.xyz (frames with energy, forces, "
                   "stress, magmoms, readable by ase.io.read) (default: print only)")
    add_model_options(p)
    add_dispersion_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("relax", help="relax positions (and cell) with an ASE optimizer")
    p.add_argument("structure", help="structure file (the last frame is relaxed)")
    p.add_argument("-o", "--output", required=True, help="relaxed structure file")
    p.add_argument("--format", default=None, help="output format for ase.io.write (default: from the suffix)")
    p.add_argument("--fmax", type=float, default=0.02, help="force convergence, eV/Å (default 0.02)")
    p.add_argument("--steps", type=int, default=1000, help="maximum optimizer steps (default 1000)")
    p.add_argument("--optimizer", default="FIRE", help="ASE optimizer (default FIRE)")
    p.add_argument("--cell-filter", default="FrechetCellFilter",
                   help="ASE cell filter, or 'none' to keep the cell fixed (default FrechetCellFilter)")
    p.add_argument("--fix-symmetry", action="store_true", help="keep the space group (ASE FixSymmetry; default off)")
    p.add_argument("--trajectory", help="write the optimisation trajectory here (default: none)")
    add_model_options(p)
    add_dispersion_options(p)
    p.set_defaults(func=cmd_relax)

    p = sub.add_parser("export", help="write a TorchScript model file for LAMMPS")
    p.add_argument("model_positional", nargs="?", metavar="MODEL", help="the same as --model")
    p.add_argument("-o", "--output", required=True, help="output .pt file")
    p.add_argument("--task", default=None, help="channel of a multi-task checkpoint to export (its biases and AtomRef folded in)")
    p.add_argument("--aot", action="store_true",
                   help="also compile the network ahead of time for this machine's CPU into <output stem>.pt2, "
                   "for 'pair_style chgnet model.pt2' (faster; valid for this torch, CPU and .pt file only)")
    add_model_options(p, dtype_default="float32")
    p.set_defaults(func=cmd_export)
