"""Multi-fidelity (multi-task) CHGNet: shared parameters, task-specific parameters,
selective L2 regularisation and a domain-bridging set.

Method: J. Kim et al., "Optimizing cross-domain transfer for universal machine
learning interatomic potentials" (SevenNet-Omni, 2025). One potential is
trained on several data sets computed with different settings (here:
functionals, "tasks"); shared parameters θ_C carry the potential energy
surface, small task-specific parameters θ_T carry each task's corrections.
θ_T is penalised by an L2 term (selective regularisation) so that the shared
part does the work, and a small domain-bridging set (structures labelled by
more than one task) ties the tasks' energy surfaces together. The per-task
energy reference follows Huang et al., npj Comput. Mater. 2025 (AtomRef,
Eqs. 2 and 3).

Task-specific parameters of :class:`MultiTaskCHGNet` (everything else shared):

- a per-task AtomRef ``atomref`` [T, 94] (eV/atom, element Z at column Z - 1);
  the energy per atom of a structure of task t is
  ``E/N = c . atomref[t] + E_GNN(t)/N`` with ``c`` the element fractions;
- a per-task additive bias on the first linear layer of the core and of the
  gate MLP of every gated MLP in the atom, bond and angle convolutions,
  ``task_bias[l]`` [T, 2H] (core block first, then gate). For a first layer
  ``y = W x + b`` this is ``y = W x + b + B[t]``, which equals
  ``[W | B^T] [x; onehot(t)] + b``: a task one-hot concatenated to the layer's
  input, as SevenNet's task embedding.

Folding a task (:func:`fold_task`) adds ``B[t]`` to the first-layer biases
and writes ``atomref[t]`` into ``composition_model.fc.weight``: the result
is a plain ``chgnet`` model dict, which :func:`crossfunctional.models.load_model`
(``task=``), the ASE calculator and the LAMMPS pair style run at single-task
speed with the same numbers.

Training (:func:`train_multitask`) loss per batch (entries of all tasks mixed),
with per-entry weight ``w = task_weight[t]`` (times ``bridge_weight`` for
bridge entries) and Huber loss h (chgnet's δ = 0.1)::

    L = λ_e Σ_i w_i h(e_i) / n_e + λ_f Σ_(i,a,k) w_i h(F_iak) / (3 n_f)
      + λ_s Σ_(i,k,l) w_i h(σ_ikl) / (9 n_s) + λ_m Σ_(i,a) w_i h(m_ia) / n_m
      + λ_T Σ_l ||task_bias[l]||²

(errors: energy eV/atom, forces eV/Å, stress GPa, magmoms μB against |label|,
chgnet's units; n_* count the labelled entries / atoms in the batch; the last
term is the selective L2 regularisation over all tasks' biases, AtomRef not
included). Defaults: λ_e:λ_f:λ_s:λ_m = 3:1:0.1:1, Adam, learning rate 1e-3
with cosine decay to 1e-5 (Huang et al. 2025's fine-tuning settings) for the
shared parameters and 300 times that for the task biases, and λ_T = 0: both
chosen by the sweep in ``benchmarks/multitask.py`` (the SevenNet summary gives
no values; on that data no λ_T > 0 lowered the r2SCAN validation error).

Checkpoints are plain dicts of tensors, lists and strings under the key
``"multitask"`` (read with ``torch.load(weights_only=True)``); see
:meth:`MultiTaskCHGNet.state`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossfunctional.io import atomic_write
from crossfunctional.models.chgnet import MAX_Z
from crossfunctional.models.checkpoints import FORMAT, fold_task, is_multitask, read_state
from crossfunctional.transfer.data import LabelledStructure, TransferDataError, check_records, split_records
from crossfunctional.transfer.multitask_data import _KEYS, _entries, _Entry, _Graphs, _structure_key, read_bridge, write_bridge
from crossfunctional.transfer.multitask_model import MultiTaskCHGNet, _check_task_names
from crossfunctional.transfer.run import UNITS, ConfigError, TrainingConfig, fingerprint, plot_curves, write_history

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "MultiTaskCHGNet",
    "MultiTaskConfig",
    "MultiTaskResult",
    "fold_task",
    "is_multitask",
    "read_bridge",
    "train_multitask",
    "write_bridge",
]



# ====================================================================== configuration
@dataclass
class MultiTaskConfig(TrainingConfig):
    """Multi-task training settings: the shared ones
    (:class:`~crossfunctional.transfer.run.TrainingConfig`: epochs, batch
    size, learning-rate schedule, loss and its 3 : 1 : 0.1 : 1 weights,
    targets, seed, device, the paper's defaults; ``allow_rank_deficient``
    applies to atomref_fit="labels"; ``seed`` seeds the batch order and the
    validation split) and these.

    Attributes:
        task_weights: {task: loss weight}, 1 for tasks not listed.
        bias_l2: λ_T of the selective L2 term Σ_l ||task_bias[l]||² (sum over
            all tasks' biases, ~2.6k numbers per task). Default 0: the sweep in
            ``benchmarks/multitask.py`` (r2SCAN validation error, 20
            structures) found no λ_T > 0 that helped; 1e-7 was within 1.5 %,
            1e-6 and above undid most of what the biases gained (at 1e-5 they
            shrink to norm ~2 and the r2SCAN channel is the shared network).
            The loss is ~1e-2, so the penalty matters from λ_T ~ 1e-7 on.
        task_lr_factor: learning rate of the task-specific parameters relative
            to the shared ones (default 300, from the same sweep: 1, 30, 300,
            1000 gave validation scores 0.308, 0.303, 0.272, 0.275). Adam moves
            every parameter by about the learning rate per step, and a
            first-layer bias is an additive pre-activation shift of order one,
            so at the shared rate (1e-3) and the few hundred steps of a
            fine-tune the biases stay ~1e-2 and barely act.
        bridge_weight: extra loss weight of bridge entries (1).
        atomref_fit: initial AtomRef of every task except the source task:
            "residual" (default: the source AtomRef plus the least-squares
            per-element shift of (label - source prediction) per atom, i.e.
            Eq. 3's E_ref_target - E_ref_source estimated from the data; for
            rank-deficient data the shift closest to zero), "labels" (Eq. 2 on
            the task's labels, Method 4 of Huang et al.) or "source" (keep the
            source AtomRef). The source task keeps the base's AtomRef.
        train_atomref: train the per-task AtomRef too (default frozen, as
            Method 4; not L2-regularised).
        val_fraction: share of each task's data held out for validation when
            no validation data are given (split by material id).
        best_task: choose ``best_model.pth.tar`` by this task's validation
            score only (default None: all tasks, weighted by task_weights).
    """

    task_weights: dict[str, float] = field(default_factory=dict)
    bias_l2: float = 0.0
    task_lr_factor: float = 300.0
    bridge_weight: float = 1.0
    atomref_fit: str = "residual"
    train_atomref: bool = False
    val_fraction: float = 0.1
    best_task: str | None = None

    def check(self, tasks: Sequence[str]) -> None:
        """Raises :class:`~crossfunctional.transfer.run.ConfigError` naming a setting that cannot be used."""
        super().check()
        if not self.task_lr_factor > 0:
            raise ConfigError(f"task_lr_factor must be > 0, got {self.task_lr_factor}")
        for name in ("bias_l2", "bridge_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        unknown = sorted(set(self.task_weights) - set(tasks))
        if unknown:
            raise ConfigError(f"task_weights for unknown task(s) {', '.join(unknown)}; tasks: {', '.join(tasks)}")
        if any(not w >= 0 for w in self.task_weights.values()):
            raise ConfigError(f"task weights must be >= 0, got {self.task_weights}")
        if self.atomref_fit not in ("residual", "labels", "source"):
            raise ConfigError(f"atomref_fit must be residual, labels or source, got {self.atomref_fit!r}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.best_task is not None and self.best_task not in tasks:
            raise ConfigError(f"best_task {self.best_task!r} is not a task; tasks: {', '.join(tasks)}")

    def weight(self, task: str) -> float:
        return float(self.task_weights.get(task, 1.0))


@dataclass
class MultiTaskResult:
    """What :func:`train_multitask` produced.

    Attributes:
        output_dir: run directory.
        best_checkpoint: ``best_model.pth.tar`` (lowest validation score).
        last_checkpoint: ``checkpoints/last.pth.tar`` (resumable state).
        tasks, source_task: as trained.
        targets: {task: trained labels, e.g. "efs"}.
        history: per-epoch rows (epoch 0 = before training): ``train_loss``,
            ``bias_l2``, ``bias_norm_<task>``, ``train_<task>_<k>``,
            ``val_<task>_<k>`` (k in e, f, s, m; eV/atom, eV/Å, GPa, μB),
            ``val_score``, ``learning_rate``, ``seconds``.
        best_epoch: epoch of ``best_checkpoint``.
        metrics: validation MAEs of the best model per task in Table 1 units
            (meV/atom, meV/Å, GPa, μB).
        atomref_notes: how each task's AtomRef was initialised.
        resumed_from_epoch: epochs already done when this call started.
        status: "complete" or "stopped" (a callback stopped it; resumable).
    """

    output_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    tasks: list[str]
    source_task: str
    targets: dict[str, str]
    history: list[dict[str, float]]
    best_epoch: int
    metrics: dict[str, dict[str, float]]
    atomref_notes: dict[str, str]
    resumed_from_epoch: int = 0
    status: str = "complete"


# ====================================================================== training
def _losses(kind: str, delta: float):
    import torch.nn.functional as F

    if kind == "Huber":
        return lambda a, b: F.huber_loss(a, b, reduction="none", delta=delta)
    if kind == "MSE":
        return lambda a, b: (a - b) ** 2
    return lambda a, b: (a - b).abs()


class _Meter:
    """Sums of |error| and counts per (task, target)."""

    def __init__(self) -> None:
        self.sum: dict[tuple[int, str], float] = {}
        self.n: dict[tuple[int, str], int] = {}

    def add(self, task: int, key: str, abs_err: torch.Tensor) -> None:
        k = (task, key)
        self.sum[k] = self.sum.get(k, 0.0) + float(abs_err.detach().sum())
        self.n[k] = self.n.get(k, 0) + abs_err.numel()

    def mae(self, task: int, key: str) -> float:
        n = self.n.get((task, key), 0)
        return self.sum[(task, key)] / n if n else float("nan")


def _run_batch(model: MultiTaskCHGNet, graphs: list, batch: list[_Entry], cfg: MultiTaskConfig, device, meter: _Meter | None, loss_fn=None):
    """Forward one batch, return the data loss (a tensor, or None without
    ``loss_fn``) and add absolute errors to ``meter``."""
    need = "e" + "".join(k for k, attr in (("f", "forces"), ("s", "stress"), ("m", "magmoms")) if any(getattr(b, attr) is not None for b in batch))
    gs = [graphs[b.graph] if device.type == "cpu" else graphs[b.graph].to(device) for b in batch]
    dtype = model.atomref.dtype
    ids = torch.tensor([b.task for b in batch], device=device)
    pred = model(gs, ids, targets=need)
    w = torch.tensor([b.weight for b in batch], dtype=dtype, device=device)
    e_label = torch.tensor([b.energy for b in batch], dtype=dtype, device=device)
    total = None
    if loss_fn is not None:
        total = cfg.energy_weight * (w * loss_fn(pred["e"], e_label)).sum() / len(batch)
    if meter is not None:
        err = (pred["e"].detach() - e_label).abs()
        for k, b in enumerate(batch):
            meter.add(b.task, "e", err[k : k + 1])
    for key, attr, lam, per in (("f", "forces", cfg.force_weight, 3), ("s", "stress", cfg.stress_weight, 9), ("m", "magmoms", cfg.magmom_weight, 1)):
        if key not in need:
            continue
        idx = [k for k, b in enumerate(batch) if getattr(b, attr) is not None]
        p = torch.cat([pred[key][k].reshape(-1) for k in idx])
        y = torch.cat([getattr(batch[k], attr).reshape(-1) for k in idx]).to(device)
        ww = torch.cat([w[k].expand(pred[key][k].numel()) for k in idx])
        if loss_fn is not None and lam > 0:
            total = total + lam * (ww * loss_fn(p, y)).sum() / p.numel()
        if meter is not None:
            err = (p.detach() - y).abs()
            start = 0
            for k in idx:
                n = pred[key][k].numel()
                meter.add(batch[k].task, key, err[start : start + n])
                start += n
    return total


def _evaluate(model: MultiTaskCHGNet, graphs: list, entries: list[_Entry], cfg: MultiTaskConfig, device) -> _Meter:
    meter = _Meter()
    model.eval()
    for start in range(0, len(entries), cfg.batch_size):
        with torch.enable_grad():
            _run_batch(model, graphs, entries[start : start + cfg.batch_size], cfg, device, meter)
    return meter


def _score(meter: _Meter, tasks: list[str], targets: dict[str, str], cfg: MultiTaskConfig, only: str | None = None) -> float:
    """Validation score: Σ_t w_t Σ_k λ_k MAE_tk / Σ_t w_t (loss weights and units as the
    loss), over all tasks or the task ``only``."""
    lam = {"e": cfg.energy_weight, "f": cfg.force_weight, "s": cfg.stress_weight, "m": cfg.magmom_weight}
    num = den = 0.0
    for t, task in enumerate(tasks):
        if only is not None and task != only:
            continue
        w = cfg.weight(task) if only is None else 1.0
        parts = [lam[k] * meter.mae(t, k) for k in targets[task] if math.isfinite(meter.mae(t, k))]
        if parts and w > 0:
            num += w * sum(parts)
            den += w
    return num / den if den else float("nan")


def _as_task_dict(data: Any, name: str, tasks: list[str] | None = None) -> dict[str, list[LabelledStructure]]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        n = len(data) if hasattr(data, "__len__") else "?"
        raise TransferDataError(
            f"{name} must be given per task, {{task: records}}; got {type(data).__name__} of {n} structures without a task name"
        )
    out = {}
    for task, recs in data.items():
        if not isinstance(task, str) or not task:
            raise TransferDataError(f"{name}: a data set without a task name ({task!r})")
        if isinstance(recs, LabelledStructure):
            recs = [recs]
        out[task] = list(recs)
        if tasks is not None and task not in tasks:
            raise TransferDataError(f"{name}: data for unknown task {task!r}; tasks: {', '.join(tasks)}")
    return out


def plot_history(rows: list[dict[str, float]], tasks: list[str], targets: dict[str, str], path: str | os.PathLike, title: str = "") -> Path:
    """Training curves: one panel per label kind (train dashed, validation
    solid, one colour per task, log scale), and the norm of each task's biases."""
    colours = [f"C{t % 10}" for t in range(len(tasks))]
    keys = [k for k in _KEYS if any(k in targets[t] for t in tasks)]
    panels = [
        (UNITS[k], [(f"{split}_{task}_{k}", f"{task} {split}", style, colours[t])
                    for t, task in enumerate(tasks) for split, style in (("train", "--o"), ("val", "-o"))], True)
        for k in keys
    ]
    panels.append(("‖task biases‖₂", [(f"bias_norm_{task}", task, "-o", colours[t]) for t, task in enumerate(tasks)], False))
    return plot_curves(rows, panels, path, title)


def _init_atomref(model: MultiTaskCHGNet, data: dict[str, list[LabelledStructure]], graphs: _Graphs, cfg: MultiTaskConfig, out: Path) -> dict[str, str]:
    """Initial per-task AtomRef (``cfg.atomref_fit``); writes ``atomref_<task>.json``."""
    from crossfunctional.transfer.atomref import fit_atomref

    source = model.atomref[model.task_id(model.source_task)].detach().cpu().double().numpy()
    notes = {model.source_task: "source model's AtomRef (source task)"}
    for task in model.tasks:
        if task == model.source_task:
            continue
        recs = data.get(task, [])
        if cfg.atomref_fit == "source" or not recs:
            notes[task] = "source model's AtomRef"
            continue
        if cfg.atomref_fit == "labels":
            fit = fit_atomref(recs, source=source, allow_rank_deficient=cfg.allow_rank_deficient)
            notes[task] = "Eq. 2 fit to the task's labels"
        else:
            # E_label/N - (prediction of the source channel - its AtomRef part): the GNN part is kept
            src = model.task_id(model.source_task)
            gnn = []
            ids = [graphs.add(r, f"task {task!r}") for r in recs]
            with torch.no_grad():
                for start in range(0, len(ids), 32):
                    gs = [graphs.graphs[i] for i in ids[start : start + 32]]
                    pred = model(gs, src, targets="e")["e"]
                    comp = torch.stack([torch.bincount(g.atomic_number.long() - 1, minlength=MAX_Z).to(pred.dtype) / g.atomic_number.shape[0] for g in gs])
                    gnn.extend((pred - comp @ model.atomref[src]).tolist())
            target = np.array([r.energy_per_atom for r in recs]) - np.array(gnn)
            with contextlib.redirect_stderr(io.StringIO()):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fit = fit_atomref(recs, source=source, allow_rank_deficient=True, energies_per_atom=target)
            notes[task] = (
                "source AtomRef + least-squares per-element shift of (label - source prediction) "
                f"({len(fit.fitted_elements)} elements, rank {fit.rank}{', rank-deficient: minimum-norm shift' if fit.rank_deficient else ''})"
            )
        fit.source = f"{model.source_task} channel"
        fit.notes.append(notes[task])
        fit.write(out / f"atomref_{task}.json")
        with torch.no_grad():
            model.atomref[model.task_id(task)] = torch.as_tensor(fit.atomref, dtype=model.atomref.dtype)
    return notes


def train_multitask(
    train: Mapping[str, Sequence[LabelledStructure]],
    val: Mapping[str, Sequence[LabelledStructure]] | None = None,
    bridge: Mapping[str, Sequence[LabelledStructure]] | None = None,
    base: Any = "chgnet-0.3.0",
    output_dir: str | os.PathLike = "multitask",
    config: MultiTaskConfig | None = None,
    source_task: str | None = None,
    progress: bool = True,
    resume: bool = True,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
    **overrides: Any,
) -> MultiTaskResult:
    """Train a multi-task CHGNet on several labelled data sets at once.

    Args:
        train: {task: labelled structures}, one data set per task (ASE units,
            :mod:`crossfunctional.transfer.data`). Every task needs data (here
            or in ``bridge``).
        val: {task: structures} for validation; None: ``val_fraction`` of each
            task's ``train`` is held out (split by material id).
        bridge: domain-bridging set {task: structures}: the same structures
            labelled by at least two tasks (:func:`read_bridge`); trained with
            weight ``bridge_weight`` on top of the task weight.
        base: single-task source model (registered name, chgnet checkpoint, or
            an upstream CHGNet), upgraded with :meth:`MultiTaskCHGNet.upgrade`;
            or a multi-task checkpoint to continue from (its tasks must match).
        output_dir: run directory: ``run.json``, ``atomref_<task>.json``,
            ``checkpoints/last.pth.tar`` (resumable state: model, optimizer,
            scheduler, history), ``best_model.pth.tar`` (lowest validation
            score), ``history.csv``, ``training_curves.png``, ``metrics.json``.
        config: :class:`MultiTaskConfig`; keyword ``overrides`` replace fields.
        source_task: the task ``base`` was trained on (default: the first task
            of ``train``); it keeps the base's AtomRef.
        progress: tqdm bars on stderr.
        resume: continue an unfinished run in ``output_dir`` (same settings and
            data) from its last checkpoint; a finished run is returned as is.
        callback: called after every epoch with (epoch, history row); returning
            True stops the run there (status "stopped", resumable).

    Returns:
        :class:`MultiTaskResult`.

    Raises:
        TransferDataError: data not given per task, a task without data,
            bridge data of a task not trained or a bridge structure with one
            task only, missing/inconsistent labels, elements beyond Z = 94,
            structures chgnet cannot make graphs of; ValueError: bad settings;
            ModelError: a base that cannot be read, bad task names. All before
            any training step.
        RuntimeError: the loss became NaN.
    """
    config = MultiTaskConfig.with_overrides(config, overrides, "train_multitask")
    train = _as_task_dict(train, "training data")
    tasks = list(train)
    bridge = _as_task_dict(bridge, "bridge data", tasks)
    if not tasks:
        raise TransferDataError("no training data: give {task: records} for at least one task")
    _check_task_names(tasks)
    config.check(tasks)
    empty = [t for t in tasks if not train[t] and not bridge.get(t)]
    if empty:
        raise TransferDataError(f"task(s) {', '.join(empty)} have no data (neither training nor bridge structures)")
    source_task = source_task or tasks[0]
    if source_task not in tasks:
        raise TransferDataError(f"source task {source_task!r} is not among the tasks with data: {', '.join(tasks)}")
    targets: dict[str, str] = {}
    for task in tasks:
        found = set()
        for name, recs in ((f"task {task!r} training data", train[task]), (f"task {task!r} bridge data", bridge.get(task, []))):
            if recs:
                found |= set(check_records(recs, name))
        targets[task] = "".join(k for k in _KEYS if k in found and (config.targets is None or k in config.targets))
    if bridge:
        by_structure: dict[str, set[str]] = {}
        names: dict[str, str] = {}
        for task, recs in bridge.items():
            for r in recs:
                key = _structure_key(r)
                by_structure.setdefault(key, set()).add(task)
                names[key] = r.source or r.material_id
        single = [names[k] for k, ts in by_structure.items() if len(ts) < 2]
        if single:
            raise TransferDataError(
                f"bridge data: {len(single)} structure(s) carry labels of one task only ({', '.join(single[:5])}); "
                "a bridge structure needs labels of at least two tasks"
            )
    if val is None:
        val_d: dict[str, list[LabelledStructure]] = {}
        for task in tasks:
            if len(train[task]) < 2:
                raise TransferDataError(f"task {task!r}: {len(train[task])} training structure(s) cannot be split for validation; give val data")
            tr, va = split_records(train[task], (1 - config.val_fraction, config.val_fraction), seed=config.seed)
            train[task], val_d[task] = list(tr), list(va)
    else:
        val_d = _as_task_dict(val, "validation data", tasks)
    missing_val = [t for t in tasks if not val_d.get(t)]
    if missing_val:
        raise TransferDataError(f"task(s) {', '.join(missing_val)} have no validation data")
    for task in tasks:
        check_records(val_d[task], f"task {task!r} validation data")

    out = Path(output_dir)
    settings = {
        "tasks": tasks,
        "source_task": source_task,
        "base": str(base) if not isinstance(base, nn.Module) else f"<{type(base).__name__} module>",
        "config": asdict(config),
        "targets": targets,
        "data": fingerprint(train, val_d, bridge),
        "n_train": {t: len(train[t]) for t in tasks},
        "n_val": {t: len(val_d[t]) for t in tasks},
        "n_bridge": {t: len(bridge.get(t, [])) for t in tasks},
        "method": "multi-task CHGNet: per-task AtomRef and first-layer biases, selective L2 (Kim et al. 2025)",
    }
    run_file = out / "run.json"
    previous = None
    if run_file.is_file():
        previous = json.loads(run_file.read_text())
        same = all(previous.get(k) == settings[k] for k in ("tasks", "source_task", "base", "config", "targets", "data"))
        if not resume:
            raise TransferDataError(f"{out} already holds a run; use another output directory or resume")
        if not same:
            raise TransferDataError(f"{out} holds a run with other settings or data; use another output directory")
        if previous.get("status") == "complete":
            return _load_result(out, previous)

    device = torch.device(config.device)
    if isinstance(base, (str, os.PathLike)) and Path(base).is_file() and is_multitask(read_state(base)):
        model = MultiTaskCHGNet.load(base)
        if model.tasks != tasks:
            raise TransferDataError(f"multi-task base {base} has tasks {model.tasks}, the data {tasks}")
    else:
        model = MultiTaskCHGNet.upgrade(base, tasks, source_task=source_task)
    out.mkdir(parents=True, exist_ok=True)
    graphs = _Graphs(model)
    dtype = model.atomref.dtype
    entries: list[_Entry] = []
    val_entries: list[_Entry] = []
    for t, task in enumerate(tasks):
        entries += _entries(train[task], t, config.weight(task), targets[task], graphs, f"task {task!r} training data", dtype)
        entries += _entries(bridge.get(task, []), t, config.weight(task) * config.bridge_weight, targets[task], graphs,
                            f"task {task!r} bridge data", dtype, bridge=True)
        val_entries += _entries(val_d[task], t, config.weight(task), targets[task], graphs, f"task {task!r} validation data", dtype)
    ckpt_dir = out / "checkpoints"
    last_path = ckpt_dir / "last.pth.tar"
    resume_state = None
    if previous is not None and last_path.is_file():
        resume_state = read_state(last_path)
        model = MultiTaskCHGNet.from_state(resume_state, where=str(last_path))
        graphs.model = model
        atomref_notes = resume_state["training"]["atomref_notes"]
    else:
        atomref_notes = _init_atomref(model, {t: train[t] + bridge.get(t, []) for t in tasks}, graphs, config, out)
    model.to(device)
    model.atomref.requires_grad_(config.train_atomref)
    groups = [{"params": model.shared_parameters(), "lr": config.learning_rate},
              {"params": list(model.task_bias) + ([model.atomref] if config.train_atomref else []),
               "lr": config.learning_rate * config.task_lr_factor}]
    optimizer = torch.optim.Adam(groups, lr=config.learning_rate)
    steps = math.ceil(len(entries) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps, eta_min=config.final_learning_rate)
    history: list[dict[str, float]] = []
    start, best_score, best_epoch = 0, float("inf"), 0
    if resume_state is not None:
        tr = resume_state["training"]
        optimizer.load_state_dict(tr["optimizer"])
        scheduler.load_state_dict(tr["scheduler"])
        history = [dict(r) for r in tr["history"]]
        start, best_score, best_epoch = int(tr["epoch"]), float(tr["best_score"]), int(tr["best_epoch"])
        logger.info("resuming %s after epoch %d of %d", out, start, config.epochs)
    settings["status"] = "running"
    settings["atomref"] = atomref_notes
    with atomic_write(run_file) as fh:
        json.dump(settings, fh, indent=1)
    cols = ["epoch", "learning_rate", "seconds", "train_loss", "bias_l2", "val_score"] + [f"val_score_{t}" for t in tasks]
    select = "val_score" if config.best_task is None else f"val_score_{config.best_task}"
    cols += [f"bias_norm_{t}" for t in tasks]
    cols += [f"{split}_{t}_{k}" for t in tasks for split in ("train", "val") for k in targets[t]]

    def row_of(epoch: int, seconds: float, loss: float, meter_train: _Meter | None, meter_val: _Meter) -> dict[str, float]:
        row = {"epoch": epoch, "learning_rate": optimizer.param_groups[0]["lr"], "seconds": seconds, "train_loss": loss,
               "bias_l2": float(model.bias_l2().detach()), "val_score": _score(meter_val, tasks, targets, config)}
        row |= {f"val_score_{t}": _score(meter_val, tasks, targets, config, only=t) for t in tasks}
        row |= {f"bias_norm_{t}": v for t, v in model.bias_norms().items()}
        for ti, t in enumerate(tasks):
            for k in targets[t]:
                row[f"val_{t}_{k}"] = meter_val.mae(ti, k)
                if meter_train is not None:
                    row[f"train_{t}_{k}"] = meter_train.mae(ti, k)
        return row

    def save_last(epoch: int) -> None:
        model.save(last_path, training={
            "epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "history": history, "best_score": best_score, "best_epoch": best_epoch, "atomref_notes": atomref_notes,
        })

    def save_best(epoch: int, row: dict[str, float]) -> None:
        model.save(out / "best_model.pth.tar", training={"epoch": epoch, "val_score": row[select], "history_row": row,
                                                         "atomref_notes": atomref_notes})

    if start == 0:
        t0 = time.perf_counter()
        row = row_of(0, 0.0, float("nan"), None, _evaluate(model, graphs.graphs, val_entries, config, device))
        row["seconds"] = time.perf_counter() - t0
        history = [row]
        best_score, best_epoch = row[select], 0
        save_best(0, row)
        save_last(0)
        write_history(out / "history.csv", history, cols)

    loss_fn = _losses(config.loss, config.huber_delta)
    from tqdm.auto import tqdm

    status = "complete"
    bar = tqdm(total=config.epochs, initial=start, desc="multitask", unit="epoch", disable=not progress, file=sys.stderr)
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        model.train()
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(entries), generator=gen).tolist()
        meter, loss_sum = _Meter(), 0.0
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        for idx in tqdm(batches, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, file=sys.stderr):
            batch = [entries[i] for i in idx]
            loss = _run_batch(model, graphs.graphs, batch, config, device, meter, loss_fn)
            if config.bias_l2 > 0:
                loss = loss + config.bias_l2 * model.bias_l2()
            if not torch.isfinite(loss):
                raise RuntimeError(f"training diverged (non-finite loss) in epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(batch)
        row = row_of(epoch + 1, 0.0, loss_sum / len(entries), meter, _evaluate(model, graphs.graphs, val_entries, config, device))
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if row[select] < best_score:
            best_score, best_epoch = row[select], epoch + 1
            save_best(epoch + 1, row)
        save_last(epoch + 1)
        write_history(out / "history.csv", history, cols)
        bar.update(1)
        bar.set_postfix({"loss": f"{row['train_loss']:.4g}", "val": f"{row['val_score']:.4g}"})
        if callback is not None and callback(epoch + 1, row):
            status = "stopped"
            break
    bar.close()
    plot_history(history, tasks, targets, out / "training_curves.png",
                 title=f"multi-task CHGNet from {settings['base']} (tasks {', '.join(tasks)}; λ_T = {config.bias_l2:g})")
    best_row = next(r for r in history if r["epoch"] == best_epoch)
    metrics = _metrics(best_row, tasks, targets)
    with atomic_write(out / "metrics.json") as fh:
        json.dump({"best_epoch": best_epoch, "split": "validation", "tasks": metrics}, fh, indent=1)
    settings.update(status=status, best_epoch=best_epoch, epochs_done=int(history[-1]["epoch"]))
    with atomic_write(run_file) as fh:
        json.dump(settings, fh, indent=1)
    return MultiTaskResult(
        output_dir=out, best_checkpoint=out / "best_model.pth.tar", last_checkpoint=last_path, tasks=tasks,
        source_task=source_task, targets=targets, history=history, best_epoch=best_epoch, metrics=metrics,
        atomref_notes=atomref_notes, resumed_from_epoch=start, status=status,
    )


def _metrics(row: Mapping[str, float], tasks: list[str], targets: dict[str, str]) -> dict[str, dict[str, float]]:
    scale = {"e": (1000, "energy_mae_meV_per_atom"), "f": (1000, "force_mae_meV_per_A"), "s": (1, "stress_mae_GPa"), "m": (1, "magmom_mae_muB")}
    return {t: {scale[k][1]: scale[k][0] * float(row[f"val_{t}_{k}"]) for k in targets[t]} for t in tasks}


def _load_result(out: Path, settings: dict[str, Any]) -> MultiTaskResult:
    state = read_state(out / "checkpoints" / "last.pth.tar")
    tr = state["training"]
    history = [dict(r) for r in tr["history"]]
    tasks, targets = settings["tasks"], settings["targets"]
    best_row = next(r for r in history if r["epoch"] == int(tr["best_epoch"]))
    return MultiTaskResult(
        output_dir=out, best_checkpoint=out / "best_model.pth.tar", last_checkpoint=out / "checkpoints" / "last.pth.tar",
        tasks=tasks, source_task=settings["source_task"], targets=targets, history=history, best_epoch=int(tr["best_epoch"]),
        metrics=_metrics(best_row, tasks, targets), atomref_notes=tr["atomref_notes"], resumed_from_epoch=int(tr["epoch"]),
    )
