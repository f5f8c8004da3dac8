"""``crossfunctional transfer ...``: AtomRef refit, correlation, re-referencing,
fine-tuning, the scaling law and multi-task training.

::

    crossfunctional transfer fit-atomref  data.extxyz --base chgnet-0.3.0 -o atomref.json
    crossfunctional transfer fit-atomref  mp.json.gz --energy-key e_r2scan --energy-per-atom \\
            --base chgnet-0.3.0 --prior matpes -o atomref.json
    crossfunctional transfer correlate    data.extxyz --base chgnet-0.3.0 --output corr/
    crossfunctional transfer rereference  chgnet-0.3.0 --atomref atomref.json -o model.pt
    crossfunctional transfer finetune     train.extxyz --val val.extxyz --base chgnet-0.3.0 \\
            --method refit-atomref --epochs 50 -o run/
    crossfunctional transfer scaling      train.extxyz --val val.extxyz --sizes 100 300 1000 -o scaling/

Data files: extended XYZ (ASE units), ``vasprun.xml`` / ``OUTCAR``, or
MatPES/MPtrj-style JSON (VASP units, converted on reading); several files are
concatenated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _read(paths: list[str], args: argparse.Namespace):
    from crossfunctional.transfer.data import TransferDataError, read_labelled

    per_atom = getattr(args, "energy_per_atom", None)
    records = []
    for path in paths:
        is_json = str(path).lower().endswith((".json", ".json.gz"))
        if per_atom is not None and not is_json:
            raise TransferDataError(f"{path}: --energy-per-atom/--energy-total apply to JSON data only")
        kwargs = {"energy_per_atom": per_atom} if per_atom is not None else {}
        records.extend(read_labelled(path, energy_key=args.energy_key, **kwargs))
    return records


def _energy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--energy-key", default=None, help="energy field in the data files (default: energy)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--energy-per-atom", dest="energy_per_atom", action="store_const", const=True, default=None,
                       help="the energies under --energy-key are per atom (JSON data; default: known keys only)")
    group.add_argument("--energy-total", dest="energy_per_atom", action="store_const", const=False,
                       help="the energies under --energy-key are totals (JSON data)")


def cmd_fit_atomref(args: argparse.Namespace) -> int:
    from crossfunctional.transfer.atomref import fit_atomref

    records = _read(args.data, args)
    if args.prior is not None or args.prior_elements is not None:
        from crossfunctional.transfer.atomref import fit_atomref_with_prior

        prior = tuple(args.prior_elements) if args.prior_elements else ("matpes" if args.prior == "matpes" else None)
        fit = fit_atomref_with_prior(records, base=args.base, prior=prior)
    else:
        fit = fit_atomref(records, source=args.base, allow_rank_deficient=args.allow_rank_deficient)
    fit.write(args.output)
    print(fit.summary())
    print(f"wrote {args.output}")
    return 0


def cmd_correlate(args: argparse.Namespace) -> int:
    from crossfunctional.transfer.atomref import correlate

    records = _read(args.data, args)
    result = correlate(records, source=args.base, target_atomref=args.target_atomref)
    print(
        f"n = {result.n}: Pearson ρ before referencing {result.pearson_before:.4f}, after {result.pearson_after:.4f} "
        f"(source AtomRef: {result.source_atomref_from}; target AtomRef: {result.target_atomref_from})"
    )
    if args.output:
        path = result.write(args.output, title=f"{args.base} vs labels of {', '.join(Path(p).name for p in args.data)}")
        print(f"wrote {path}, correlation.csv and correlation.png")
    return 0


def cmd_rereference(args: argparse.Namespace) -> int:
    from crossfunctional.models import export
    from crossfunctional.transfer.atomref import rereference

    model = rereference(args.model, args.atomref)
    path = export(model, args.output, dtype=args.dtype)
    print(f"wrote {path}: {args.model} with the AtomRef of {args.atomref} (Eq. 3)")
    return 0


def _config(args: argparse.Namespace):
    from crossfunctional.transfer.finetune import FinetuneConfig

    return FinetuneConfig(
        method=getattr(args, "method", "refit-atomref"),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        final_learning_rate=args.final_lr,
        targets=args.targets,
        seed=args.seed,
        device=args.device,
        allow_rank_deficient=args.allow_rank_deficient,
    )


def _splits(args: argparse.Namespace):
    from crossfunctional.transfer.data import split_records

    train = _read(args.train, args)
    if args.val:
        val = _read(args.val, args)
        test = _read(args.test, args) if getattr(args, "test", None) else None
        return train, val, test
    fractions = args.split
    parts = split_records(train, fractions, by=args.split_by, seed=args.seed)
    print(f"split {len(train)} structures by {args.split_by} ({fractions}): " + " / ".join(str(len(p)) for p in parts))
    return parts[0], parts[1], (parts[2] if len(parts) > 2 else None)


def cmd_finetune(args: argparse.Namespace) -> int:
    from crossfunctional.transfer.finetune import finetune

    train, val, test = _splits(args)
    prior = tuple(args.atomref_prior_elements) if args.atomref_prior_elements else args.atomref_prior
    result = finetune(train, val, test, base=args.base, output_dir=args.output, config=_config(args),
                      progress=not args.no_progress, atomref_prior=prior)
    m = result.metrics
    print(f"{result.method}: best epoch {result.best_epoch}; {m['split']} MAEs: " + ", ".join(
        f"{k} {v:.4g}" for k, v in m.items() if k.endswith(("atom", "_A", "GPa", "muB"))
    ))
    print(f"wrote {result.checkpoint} (chgnet checkpoint) and {result.torchscript} (TorchScript, for the calculator and LAMMPS)")
    return 0


def cmd_scaling(args: argparse.Namespace) -> int:
    from crossfunctional.transfer.scaling import scaling_law

    train, val, _ = _splits(args)
    result = scaling_law(train, val, args.sizes, output_dir=args.output, methods=args.methods, base=args.base,
                         config=_config(args), fit_min_size=args.fit_min_size, seed=args.seed,
                         progress=not args.no_progress)
    for method, fits in result.fits.items():
        for q, fit in fits.items():
            print(f"{method:>18} {q:<6} slope {fit.slope:.3f}  R² {fit.r2:.3f}  ({fit.n_points} sizes)")
    print("crossover training size: " + json.dumps(result.crossovers))
    print(f"wrote {Path(args.output) / 'scaling.json'}, scaling.csv and scaling.png")
    return 0


def _training_options(p: argparse.ArgumentParser, with_test: bool) -> None:
    p.add_argument("train", nargs="+", help="training data file(s)")
    p.add_argument("--val", nargs="+", help="validation data file(s); without it the training data are split")
    if with_test:
        p.add_argument("--test", nargs="+", help="test data file(s) for the final MAEs")
    p.add_argument("--split", nargs="+", type=float, default=[0.8, 0.1, 0.1],
                   help="train/val[/test] fractions when --val is not given (default 0.8 0.1 0.1)")
    p.add_argument("--split-by", choices=["material", "structure"], default="material",
                   help="keep structures of one material id together (default) or split frames")
    p.add_argument("--base", default="chgnet-0.3.0", help="source model: registered name or chgnet checkpoint (default chgnet-0.3.0)")
    p.add_argument("--epochs", type=int, default=50, help="epochs (default 50, the paper's)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (default 1e-3)")
    p.add_argument("--final-lr", type=float, default=1e-5, help="learning rate at the end of the cosine decay (default 1e-5)")
    p.add_argument("--targets", default=None, help="chgnet targets, e.g. efs (default: the labels present)")
    p.add_argument("--seed", type=int, default=0, help="random seed for splits, initialisation and batches")
    p.add_argument("--device", default="cpu", help="torch device for training (default cpu)")
    _energy_options(p)
    p.add_argument("--allow-rank-deficient", action="store_true",
                   help="accept an AtomRef fit the data cannot fully determine (undetermined parts keep the source's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``transfer`` and its sub-commands (fit-atomref, correlate,
    rereference, finetune, scaling, multitask)."""
    from crossfunctional.transfer.finetune import METHODS

    p = sub.add_parser("transfer", help="transfer a pretrained model to a new functional (AtomRef refit, fine-tuning)")
    tsub = p.add_subparsers(dest="transfer", required=True)

    t = tsub.add_parser("fit-atomref", help="fit AtomRef to labelled data (Eq. 2, or with an elemental prior) and write atomref.json")
    t.add_argument("data", nargs="+", help="labelled data file(s)")
    t.add_argument("--base", default="chgnet-0.3.0", help="model whose AtomRef absent elements keep (default chgnet-0.3.0)")
    t.add_argument("-o", "--output", required=True, help="output atomref.json")
    _energy_options(t)
    t.add_argument("--prior", choices=["matpes", "none"], default=None,
                   help="refit the base model's AtomRef as base + elemental prior + ridge fit of the residual: "
                   "'matpes' uses the shipped MatPES r2SCAN - PBE elemental ground states, 'none' no prior "
                   "(default: plain Eq. 2)")
    t.add_argument("--prior-elements", nargs=2, metavar=("SOURCE.json", "TARGET.json"), default=None,
                   help="a prior from your own elemental calculations at the source and target level (JSON records)")
    t.add_argument("--allow-rank-deficient", action="store_true",
                   help="accept rank-deficient data (undetermined directions keep the base AtomRef)")
    t.set_defaults(func=cmd_fit_atomref)

    t = tsub.add_parser("correlate", help="Pearson ρ of base-model energies vs labels, before/after AtomRef subtraction")
    t.add_argument("data", nargs="+", help="labelled data file(s)")
    t.add_argument("--base", default="chgnet-0.3.0", help="source model (default chgnet-0.3.0)")
    t.add_argument("--target-atomref", default=None,
                   help="AtomRef subtracted from the labels: atomref.json or a model (default: Eq. 2 fit on the labels)")
    t.add_argument("-o", "--output", help="write DIR/correlation.json, correlation.csv and correlation.png (default: print only)")
    _energy_options(t)
    t.set_defaults(func=cmd_correlate)

    t = tsub.add_parser("rereference", help="replace a model's AtomRef (Eq. 3) and export it as TorchScript")
    t.add_argument("model", help="model name, chgnet checkpoint or TorchScript file")
    t.add_argument("--atomref", required=True, help="atomref.json (from fit-atomref) or a model to take the AtomRef from")
    t.add_argument("-o", "--output", required=True, help="output .pt file")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="precision of the export (default float32)")
    t.set_defaults(func=cmd_rereference)

    t = tsub.add_parser("finetune", help="fine-tune with chgnet's Trainer by one of the paper's four methods")
    _training_options(t, with_test=True)
    t.add_argument("--method", default="refit-atomref", choices=list(METHODS),
                   help="; ".join(f"{k} (Method {m.number}): {m.description}" for k, m in METHODS.items()))
    t.add_argument("--atomref-prior", choices=["matpes"], default=None,
                   help="Method 4 only: refit the AtomRef as base + elemental prior + ridge fit of the residual "
                   "instead of Eq. 2 ('matpes': the shipped MatPES r2SCAN - PBE elemental ground states)")
    t.add_argument("--atomref-prior-elements", nargs=2, metavar=("SOURCE.json", "TARGET.json"), default=None,
                   help="Method 4 only: the same with a prior from your own elemental calculations at both levels")
    t.add_argument("-o", "--output", required=True, help="run directory (resumed if it holds an unfinished run)")
    t.set_defaults(func=cmd_finetune)

    t = tsub.add_parser("scaling", help="MAE against training-set size on nested subsets, log-log fits (Fig. 6)")
    _training_options(t, with_test=False)
    t.add_argument("--sizes", nargs="+", type=int, required=True, help="training-set sizes")
    t.add_argument("--methods", nargs="+", default=["refit-atomref", "scratch"], choices=list(METHODS),
                   help="methods to compare (default refit-atomref scratch)")
    t.add_argument("--fit-min-size", type=int, default=0, help="fit only sizes >= this (the paper used 1000)")
    t.add_argument("-o", "--output", required=True, help="output directory")
    t.set_defaults(func=cmd_scaling)

    from crossfunctional.cli.multitask import register as register_multitask

    register_multitask(tsub)
