"""``crossfunctional transfer multitask``: one CHGNet trained on several
functionals' data with task-specific parameters (Kim et al. 2025)."""

from __future__ import annotations

import argparse


def _task_files(items: list[str] | None, option: str) -> dict[str, list[str]]:
    from crossfunctional.transfer.data import TransferDataError

    out: dict[str, list[str]] = {}
    for item in items or []:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise TransferDataError(f"{option} {item!r}: a data set without a task; write {option} TASK=FILE (e.g. {option} r2scan=scan.extxyz)")
        out.setdefault(task, []).append(path)
    return out


def cmd_multitask(args: argparse.Namespace) -> int:
    from crossfunctional.transfer.data import LabelledStructure, TransferDataError, read_labelled
    from crossfunctional.transfer.multitask import MultiTaskConfig, read_bridge, train_multitask

    def read(files: dict[str, list[str]]) -> dict[str, list[LabelledStructure]]:
        return {task: [r for p in paths for r in read_labelled(p, energy_key=args.energy_key)] for task, paths in files.items()}

    train_files = _task_files(args.task, "--task")
    if not train_files:
        raise TransferDataError("give at least one --task TASK=FILE")
    train = read(train_files)
    val = read(_task_files(args.val, "--val")) if args.val else None
    tasks = list(train)
    bridge: dict[str, list[LabelledStructure]] = {}
    for path in args.bridge or []:
        for task, recs in read_bridge(path, tasks).items():
            bridge.setdefault(task, []).extend(recs)
    weights = {}
    for item in args.task_weight or []:
        task, sep, value = item.partition("=")
        if not sep:
            raise TransferDataError(f"--task-weight {item!r}: write TASK=WEIGHT")
        weights[task] = float(value)
    config = MultiTaskConfig(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, final_learning_rate=args.final_lr,
        task_weights=weights, bias_l2=args.bias_l2, task_lr_factor=args.task_lr_factor, bridge_weight=args.bridge_weight,
        atomref_fit=args.atomref_fit,
        train_atomref=args.train_atomref, allow_rank_deficient=args.allow_rank_deficient, targets=args.targets,
        val_fraction=args.val_fraction, best_task=args.best_task, seed=args.seed, device=args.device,
    )
    res = train_multitask(train, val, bridge or None, base=args.base, output_dir=args.output, config=config,
                          source_task=args.source_task, progress=not args.no_progress)
    print(f"best epoch {res.best_epoch}; validation MAEs:")
    for task, m in res.metrics.items():
        print(f"  {task:<12} " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()))
    print(f"wrote {res.best_checkpoint}; run a task with CrossFunctionalCalculator(model=..., task=TASK) "
          f"or export it: crossfunctional export {res.best_checkpoint} --task TASK -o TASK.pt")
    return 0


def register(tsub: argparse._SubParsersAction) -> None:
    """Register ``transfer multitask`` on the ``transfer`` command's sub-parsers."""
    from crossfunctional.transfer.multitask import MultiTaskConfig

    t = tsub.add_parser("multitask", help="train one CHGNet on several functionals' data (task-specific parameters, Kim et al. 2025)")
    t.add_argument("--task", action="append", required=True, metavar="TASK=FILE",
                   help="training data of a task (repeat per task and file); the first task is the base model's own unless --source-task")
    t.add_argument("--val", action="append", metavar="TASK=FILE",
                   help="validation data of a task (default: --val-fraction of each task's data)")
    t.add_argument("--bridge", action="append", metavar="FILE",
                   help="domain-bridging set: extxyz with energy_<task>, forces_<task>, stress_<task> labels of >= 2 tasks per frame")
    t.add_argument("--base", default="chgnet-0.3.0", help="single-task source model (default chgnet-0.3.0) or a multi-task checkpoint")
    t.add_argument("--source-task", default=None, help="task the base model was trained on (keeps its AtomRef; default: the first --task)")
    t.add_argument("-o", "--output", required=True, help="run directory (resumed if it holds an unfinished run)")
    t.add_argument("--epochs", type=int, default=50, help="epochs (default 50)")
    t.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    t.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (default 1e-3)")
    t.add_argument("--final-lr", type=float, default=1e-5, help="learning rate at the end of the cosine decay (default 1e-5)")
    t.add_argument("--bias-l2", type=float, default=MultiTaskConfig.bias_l2,
                   help=f"selective L2 weight on the task biases (default {MultiTaskConfig.bias_l2:g}, from the benchmark sweep)")
    t.add_argument("--task-lr-factor", type=float, default=MultiTaskConfig.task_lr_factor,
                   help=f"learning rate of the task biases relative to the shared weights (default {MultiTaskConfig.task_lr_factor:g})")
    t.add_argument("--task-weight", action="append", metavar="TASK=W", help="loss weight of a task (default 1)")
    t.add_argument("--bridge-weight", type=float, default=1.0, help="extra loss weight of bridge structures (default 1)")
    t.add_argument("--atomref-fit", choices=["residual", "labels", "source"], default="residual",
                   help="initial AtomRef of the non-source tasks (default residual: source + per-element shift fitted to label - prediction)")
    t.add_argument("--train-atomref", action="store_true", help="train the per-task AtomRef (default frozen)")
    t.add_argument("--allow-rank-deficient", action="store_true", help="accept a rank-deficient Eq. 2 fit (--atomref-fit labels)")
    t.add_argument("--targets", default=None, help="restrict the trained labels, e.g. ef (default: all present)")
    t.add_argument("--val-fraction", type=float, default=0.1, help="validation share without --val (default 0.1)")
    t.add_argument("--best-task", default=None, help="pick best_model.pth.tar by this task's validation error (default: all tasks)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--energy-key", default=None, help="energy field in the data files (default: energy)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_multitask)
