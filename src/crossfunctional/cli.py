"""The ``crossfunctional`` command line.

::

    crossfunctional models
    crossfunctional predict structure.cif
    crossfunctional relax POSCAR -o relaxed.cif
    crossfunctional export chgnet-r2scan -o chgnet_r2scan.pt
    crossfunctional benchmark density --models chgnet-r2scan chgnet-0.3.0 --output density/

Input structures are anything ``ase.io.read`` understands. Errors print one
line naming the problem and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from crossfunctional.models import DEFAULT_MODEL

DEFAULT_BENCHMARK_MODELS = ("chgnet-r2scan", "chgnet-0.3.0")

# the commands' own modules live in the folder cli/ next to this file (crossfunctional.cli.phonons)
__path__ = [str(Path(__file__).with_name("cli"))]


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or file (default {DEFAULT_MODEL})")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default cpu)")
    parser.add_argument(
        "--dtype", default=None, choices=["float32", "float64"], help="precision (default: the model file's, float32 for the shipped weights)"
    )


def _calculator(args: argparse.Namespace):
    from crossfunctional.calculators import CrossFunctionalCalculator

    return CrossFunctionalCalculator(model=args.model, device=args.device, dtype=args.dtype)


def cmd_models(args: argparse.Namespace) -> int:
    from crossfunctional.models import available_models

    print("Registered models (also accepted: a chgnet checkpoint .pth.tar or an exported TorchScript .pt file):")
    for name, functional in available_models().items():
        default = "  [default]" if name == DEFAULT_MODEL else ""
        print(f"  {name:<16} {functional}{default}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ase.units import GPa

    from crossfunctional.calculators import predict_batch
    from crossfunctional.io import atomic_write, read_structures

    frames = read_structures(args.structure)
    results = predict_batch(frames, _calculator(args))  # all frames as batched graphs
    records = []
    for k, (atoms, res) in enumerate(zip(frames, results)):
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
        print(f"frame {k}: {rec['formula']}  E = {energy:.6f} eV  ({rec['energy_per_atom_eV']:.6f} eV/atom)")
        print(f"  max |F| = {np.linalg.norm(res['forces'], axis=1).max():.6f} eV/Å")
        if "stress_GPa_voigt" in rec:
            print("  stress (GPa, xx yy zz yz xz xy, positive tensile): " + " ".join(f"{s:.4f}" for s in rec["stress_GPa_voigt"]))
        else:
            print("  stress: not defined (structure is not fully periodic)")
        print("  magmoms (μB): " + " ".join(f"{m:.3f}" for m in rec["magmoms_muB"]))
    if args.output:
        with atomic_write(args.output) as fh:
            json.dump({"model": args.model, "frames": records}, fh, indent=1)
        print(f"wrote {args.output}")
    return 0


def cmd_relax(args: argparse.Namespace) -> int:
    from ase.io import write

    from crossfunctional.io import atomic_path, read_structures
    from crossfunctional.workflows import relax

    atoms = read_structures(args.structure, index=-1)[0]
    atoms.calc = _calculator(args)
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
        write(tmp, result.atoms, format=args.format)
    status = "converged" if result.converged else "NOT converged"
    print(
        f"{status} in {result.steps} steps: E = {result.energy:.6f} eV, max |F| = {result.fmax:.5f} eV/Å, "
        f"volume = {result.atoms.get_volume():.4f} Å^3; wrote {args.output}"
    )
    return 0 if result.converged else 1


def cmd_export(args: argparse.Namespace) -> int:
    from crossfunctional.models import export, load_model, model_metadata

    model = load_model(args.model, dtype=args.dtype, task=args.task)
    path = export(model, args.output, dtype=args.dtype)
    meta = model_metadata(model)
    print(f"wrote {path} ({meta['model_name']}, cutoff {meta['cutoff']} Å, {args.dtype})")
    return 0


def cmd_benchmark_density(args: argparse.Namespace) -> int:
    from crossfunctional.workflows import density_benchmark

    result = density_benchmark(
        models=tuple(args.models),
        fmax=args.fmax,
        steps=args.steps,
        device=args.device,
        dtype=args.dtype,
        solids=args.solids,
    )
    print(result.table())
    result.write(args.output)
    print(f"wrote {Path(args.output) / 'density_benchmark.json'}, .csv and density_parity.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossfunctional",
        description="Universal interatomic potentials transferred to r2SCAN: ASE relaxations, predictions, "
        "TorchScript export for LAMMPS, and the Sol58LC density benchmark.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the models that can be loaded")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("predict", help="energy, forces, stress, magmoms of every frame in a file")
    p.add_argument("structure", help="structure file (any format ase.io.read understands)")
    p.add_argument("-o", "--output", help="also write the results as JSON")
    _add_model_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("relax", help="relax positions (and cell) with an ASE optimizer")
    p.add_argument("structure", help="structure file (the last frame is relaxed)")
    p.add_argument("-o", "--output", required=True, help="relaxed structure file")
    p.add_argument("--format", default=None, help="output format for ase.io.write (default: from the suffix)")
    p.add_argument("--fmax", type=float, default=0.02, help="force convergence, eV/Å (default 0.02)")
    p.add_argument("--steps", type=int, default=1000, help="maximum optimizer steps (default 1000)")
    p.add_argument("--optimizer", default="FIRE", help="ASE optimizer (default FIRE)")
    p.add_argument("--cell-filter", default="FrechetCellFilter", help="ASE cell filter or 'none' (default FrechetCellFilter)")
    p.add_argument("--fix-symmetry", action="store_true", help="keep the space group (ASE FixSymmetry)")
    p.add_argument("--trajectory", help="write the optimisation trajectory here")
    _add_model_options(p)
    p.set_defaults(func=cmd_relax)

    p = sub.add_parser("export", help="write a TorchScript model file for LAMMPS")
    p.add_argument("model", help="model name, chgnet checkpoint or TorchScript file")
    p.add_argument("-o", "--output", required=True, help="output .pt file")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--task", default=None, help="channel of a multi-task checkpoint to export (its biases and AtomRef folded in)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("benchmark", help="accuracy benchmarks against experiment")
    bsub = p.add_subparsers(dest="benchmark", required=True)
    b = bsub.add_parser("density", help="Sol58LC lattice constants and densities against experiment and PBE")
    b.add_argument("--models", nargs="+", default=list(DEFAULT_BENCHMARK_MODELS), help="models to benchmark")
    b.add_argument("--output", default="density_benchmark", help="output folder (default ./density_benchmark)")
    b.add_argument("--fmax", type=float, default=0.01, help="force convergence, eV/Å (default 0.01)")
    b.add_argument("--steps", type=int, default=1000, help="maximum FIRE steps (default 1000)")
    b.add_argument("--solids", nargs="+", default=None, help="only these solids (names from the Sol58LC table)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    b.set_defaults(func=cmd_benchmark_density)

    # transfer to a new functional (issue 6): AtomRef refit, correlation, fine-tuning, scaling law
    from crossfunctional.transfer.cli import add_transfer_commands

    add_transfer_commands(sub)

    # multi-task training (issue 7): crossfunctional transfer multitask
    from crossfunctional.transfer.multitask import add_multitask_command

    add_multitask_command(sub.choices["transfer"])

    # LAMMPS (issue 5): build-lammps-plugin, md (the lammps package is imported only when they run)
    from crossfunctional.lammps import add_lammps_commands

    add_lammps_commands(sub)

    # phonons with phonopy (crossfunctional/cli/phonons.py); phonopy itself is imported only when the command runs
    from crossfunctional.cli.phonons import register as register_phonons

    register_phonons(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 success, 1 not converged, 2 bad input)."""
    from crossfunctional.io import InputFileError
    from crossfunctional.models import ModelError
    from crossfunctional.neighbors import StructureError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (InputFileError, ModelError, StructureError, ValueError, OSError) as exc:
        print(f"crossfunctional: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
