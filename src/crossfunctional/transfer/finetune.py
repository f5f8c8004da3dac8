"""Fine-tuning with chgnet's ``Trainer``: the four transfer methods of Huang et al.,
npj Comput. Mater. 2025 (Table 1); the scaling law (Fig. 6) is in
:mod:`crossfunctional.transfer.scaling`.

Methods (by name, paper number in brackets):

- ``scratch`` (1): AtomRef fitted to the target training data (Eq. 2) and
  frozen; graph network randomly initialised.
- ``trainable-atomref`` (2): pretrained network; the source AtomRef is
  trained along with it.
- ``frozen-atomref`` (3): pretrained network; the source AtomRef is frozen.
- ``refit-atomref`` (4, default): pretrained network; AtomRef refitted to the
  target training data (Eq. 2), put in the upstream model's
  ``composition_model`` (Eq. 3 re-referencing) and frozen. With
  ``atomref_prior`` the refit is instead the base AtomRef plus an elemental
  prior plus a ridge fit of the remaining error
  (:func:`~crossfunctional.transfer.atomref.fit_atomref_with_prior`), which
  needs far fewer compounds per element.

Defaults are the paper's training scheme: Huber loss (chgnet's delta 0.1),
energy:force:stress:magmom loss weights 3:1:0.1:1, Adam, learning rate 1e-3
with cosine decay to 1e-5, batch size 64, 50 epochs. Targets follow the
labels present. Loss units are chgnet's: energy eV/atom, forces eV/Å,
stress GPa, magmoms μB.

A run directory holds ``run.json`` (settings, split sizes, status),
``atomref.json`` (for methods 1 and 4), ``checkpoints/`` (chgnet's per-epoch
and best checkpoints; a run resumes from the last one), ``history.csv``
(per-epoch MAEs), ``training_curves.png``, ``train.log`` (the Trainer's own
output), ``model.pth.tar`` (the chgnet checkpoint with the lowest validation
energy MAE), ``model.pt`` (its TorchScript export for the ASE calculator and
LAMMPS) and ``metrics.json`` (test MAEs in Table 1 units).
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossfunctional.io import atomic_path, atomic_write
from crossfunctional.models import ModelError
from crossfunctional.models.checkpoints import read_model_dict, read_state
from crossfunctional.transfer.atomref import AtomRefFit, PriorAtomRefFit, fit_atomref, fit_atomref_with_prior, get_atomref
from crossfunctional.transfer.data import LabelledStructure, TransferDataError, check_records
from crossfunctional.transfer.run import (
    UNITS,
    ConfigError,
    TrainingConfig,
    checkpoint_epoch,
    fingerprint,
    latest_checkpoint,
    plot_curves,
    read_history,
    restore_rng,
    rng_state,
    save_checkpoint,
    write_history,
)

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "FinetuneConfig",
    "FinetuneResult",
    "evaluate",
    "finetune",
    "load_upstream",
]


@dataclass(frozen=True)
class Method:
    """One transfer method of Table 1."""

    number: int
    pretrained: bool  # start from the source network (else random initialisation)
    atomref: str  # "fit": Eq. 2 on the training labels; "source": the source model's
    train_atomref: bool
    description: str


METHODS: dict[str, Method] = {
    "scratch": Method(1, False, "fit", False, "training from scratch with the target AtomRef (fitted, frozen)"),
    "trainable-atomref": Method(2, True, "source", True, "transfer learning, source AtomRef trainable"),
    "frozen-atomref": Method(3, True, "source", False, "transfer learning, source AtomRef frozen"),
    "refit-atomref": Method(4, True, "fit", False, "transfer learning with the AtomRef refitted to the target (frozen)"),
}


@dataclass
class FinetuneConfig(TrainingConfig):
    """Fine-tuning settings: the shared training settings
    (:class:`~crossfunctional.transfer.run.TrainingConfig`, the paper's
    defaults) and the transfer method.

    Attributes:
        method: one of :data:`METHODS` (default "refit-atomref", Method 4).
    """

    method: str = "refit-atomref"

    def check(self) -> None:
        """Raises :class:`~crossfunctional.transfer.run.ConfigError` naming a setting that cannot be used."""
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        super().check()


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced.

    Attributes:
        output_dir: the run directory.
        checkpoint: chgnet checkpoint of the best epoch (lowest validation energy MAE).
        torchscript: its TorchScript export (``CrossFunctionalCalculator(model=...)``).
        method, targets: as trained.
        history: per-epoch rows (epoch 0 = before training) with train/val MAEs
            in chgnet units (eV/atom, eV/Å, GPa, μB) and the learning rate.
        best_epoch: epoch of ``checkpoint``.
        metrics: MAEs of the exported model on the test set (or the
            validation set without one) in Table 1 units: meV/atom, meV/Å, GPa, μB.
        atomref_fit: the Eq. 2 fit (methods 1 and 4), or the prior-based
            fit of Method 4 with ``atomref_prior``.
    """

    output_dir: Path
    checkpoint: Path
    torchscript: Path
    method: str
    targets: str
    history: list[dict[str, float]]
    best_epoch: int
    metrics: dict[str, Any]
    atomref_fit: AtomRefFit | PriorAtomRefFit | None = None
    resumed_from_epoch: int = 0

    @property
    def val_energy_mae_initial(self) -> float:
        """Validation energy MAE before training, eV/atom."""
        return self.history[0]["val_e"]

    @property
    def val_energy_mae_best(self) -> float:
        """Validation energy MAE of the saved model, eV/atom."""
        return next(row["val_e"] for row in self.history if row["epoch"] == self.best_epoch)


# ----------------------------------------------------------------- model loading
def load_upstream(base: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Upstream ``chgnet.model.CHGNet`` of ``base`` (registered name or chgnet
    checkpoint), read by :mod:`crossfunctional.models.checkpoints`.

    Returns:
        (model, model_dict) with model_dict = {"state_dict", "model_args"}.

    Raises:
        crossfunctional.models.ModelError: unknown name, missing or unreadable
            file, or a TorchScript export (which cannot be fine-tuned).
    """
    from chgnet.model import CHGNet as UpstreamCHGNet

    from crossfunctional.models import MODELS

    key = str(base)
    if key in MODELS:
        import chgnet

        path = Path(chgnet.__file__).parent / MODELS[key][0]
    else:
        path = Path(key)
        if not path.is_file():
            raise ModelError(f"base model {key!r} is neither a registered name ({', '.join(MODELS)}) nor a file")
    model_dict = read_model_dict(path)
    with contextlib.redirect_stdout(io.StringIO()):
        model = UpstreamCHGNet.from_dict(model_dict)
    return model, model_dict


def _set_upstream_atomref(model: Any, atomref: np.ndarray) -> None:
    weight = model.composition_model.fc.weight
    with torch.no_grad():
        weight.copy_(torch.as_tensor(atomref, dtype=weight.dtype).view_as(weight))


# ----------------------------------------------------------------- evaluation
def evaluate(model: Any, records: Sequence[LabelledStructure], max_edges: int = 50_000) -> dict[str, Any]:
    """MAEs of ``model`` (name, file or loaded crossfunctional module) on
    labelled ``records``, in the paper's Table 1 units: energy meV/atom,
    forces meV/Å (over components), stress GPa (over the 9 tensor components,
    ASE sign on both sides), magmoms μB (over labelled atoms, against |label|
    as chgnet trains). Only labels present are scored."""
    from ase.stress import voigt_6_to_full_3x3_stress
    from ase.units import GPa

    from crossfunctional.calculators import predict_batch

    preds = predict_batch([r.atoms() for r in records], model, max_edges=max_edges)
    e_err, f_err, s_err, m_err = [], [], [], []
    for rec, p in zip(records, preds):
        if rec.energy is not None:
            e_err.append(abs(p["energy"] - rec.energy) / rec.n_atoms)
        if rec.forces is not None:
            f_err.append(np.abs(p["forces"] - rec.forces).reshape(-1))
        if rec.stress is not None and "stress" in p:
            s_err.append(np.abs(voigt_6_to_full_3x3_stress(p["stress"]) - rec.stress).reshape(-1) / GPa)
        if rec.magmoms is not None:
            m_err.append(np.abs(p["magmoms"] - np.abs(rec.magmoms)))
    out: dict[str, Any] = {"n": len(records)}
    if e_err:
        out["energy_mae_meV_per_atom"] = 1000 * float(np.mean(e_err))
    if f_err:
        out["force_mae_meV_per_A"] = 1000 * float(np.mean(np.concatenate(f_err)))
    if s_err:
        out["stress_mae_GPa"] = float(np.mean(np.concatenate(s_err)))
    if m_err:
        out["magmom_mae_muB"] = float(np.mean(np.concatenate(m_err)))
    return out


# ----------------------------------------------------------------- data for chgnet
def _structure_data(records: Sequence[LabelledStructure], targets: str, name: str, log: io.TextIOBase):
    """chgnet ``StructureData`` with labels in chgnet's convention (energy
    per atom eV/atom, forces eV/Å, stress in VASP kBar positive compressive,
    which StructureData turns into GPa positive tensile, magmoms μB), every
    graph built up front so that structures chgnet would silently skip are
    reported instead."""
    from chgnet.data.dataset import StructureData

    n = len(records)
    forces = [r.forces if r.forces is not None else np.zeros((r.n_atoms, 3)) for r in records]
    with contextlib.redirect_stdout(log):
        data = StructureData(
            structures=[r.structure for r in records],
            energies=[r.energy_per_atom for r in records],
            forces=[np.asarray(f).tolist() for f in forces],
            stresses=[r.stress_vasp_kbar().tolist() for r in records] if "s" in targets else None,
            magmoms=[None if r.magmoms is None else np.asarray(r.magmoms).tolist() for r in records] if "m" in targets else None,
            structure_ids=[r.material_id for r in records],
            shuffle=False,
        )
    for k in range(n):  # builds and caches every graph
        data[k]
    if data.failed_graph_id:
        bad = [records[int(g)] for g in data.failed_graph_id]
        shown = ", ".join(f"{r.source or r.material_id} ({r.structure.composition.reduced_formula})" for r in bad[:5])
        raise TransferDataError(
            f"{name}: chgnet cannot build a graph for {len(bad)} structure(s) (typically an atom with no "
            f"neighbour within 6 Å): {shown}"
        )
    return data


def _loader(data, batch_size: int, shuffle: bool, seed: int):
    from chgnet.data.dataset import collate_graphs
    from torch.utils.data import DataLoader

    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_graphs, generator=gen, num_workers=0)


_KEYS = "efsm"


def _history_columns(targets: str) -> list[str]:
    return ["epoch", "learning_rate", "seconds"] + [f"{split}_{k}" for split in ("train", "val") for k in targets]


def plot_history(rows: list[dict[str, float]], targets: str, path: str | os.PathLike, title: str = "") -> Path:
    """Training curves: one panel per target, train and validation MAE per epoch (log scale)."""
    panels = [(UNITS[k], [(f"train_{k}", "train", "o-", None), (f"val_{k}", "val", "s-", None)], True) for k in targets]
    return plot_curves(rows, panels, path, title)


# ----------------------------------------------------------------- fine-tuning
def _targets_for(train, val, test, requested: str | None) -> str:
    t_train = check_records(train, "training set")
    t_val = check_records(val, "validation set")
    splits = [("validation set", t_val)]
    if test is not None:
        splits.append(("test set", check_records(test, "test set")))
    available = t_train
    for name, t in splits:
        for key, label in (("f", "forces"), ("s", "stress")):
            if (key in t_train) != (key in t):
                have, lack = ("training set", name) if key in t_train else (name, "training set")
                raise TransferDataError(f"the {have} has {label} labels but the {lack} has none; label both or neither")
    if requested is None:
        return available
    missing = [k for k in requested if k not in available]
    if missing:
        raise TransferDataError(f"targets {requested!r} asked for labels the training set lacks: {', '.join(missing)}")
    return requested


def finetune(
    train: Sequence[LabelledStructure],
    val: Sequence[LabelledStructure],
    test: Sequence[LabelledStructure] | None = None,
    base: str | os.PathLike = "chgnet-0.3.0",
    output_dir: str | os.PathLike = "finetune",
    config: FinetuneConfig | None = None,
    progress: bool = True,
    resume: bool = True,
    atomref_records: Sequence[LabelledStructure] = (),
    atomref_prior: Any = None,
    **overrides: Any,
) -> FinetuneResult:
    """Transfer ``base`` to the labels of ``train`` with one of the four methods.

    Args:
        train, val, test: labelled structures (:mod:`crossfunctional.transfer.data`);
            ``test`` is optional (metrics then come from ``val``).
        base: source model, a registered name or a chgnet checkpoint.
        output_dir: run directory (layout in the module docstring).
        config: :class:`FinetuneConfig`; keyword ``overrides`` replace its fields.
        progress: tqdm bars (epochs and batches) on stderr.
        resume: continue an unfinished run in ``output_dir`` from its last
            checkpoint (settings and data must match); a finished run is
            returned as is.
        atomref_records: labelled structures that enter only the AtomRef fit
            of the methods that fit one (1 and 4), beside ``train``: for
            instance an isolated O2 molecule that pins the oxygen reference
            when every training crystal is an oxide. Never trained on, never
            scored.
        atomref_prior: Method 4 only. None (default): the AtomRef is the Eq. 2
            fit of the labels. Otherwise the prior of
            :func:`~crossfunctional.transfer.atomref.fit_atomref_with_prior`
            (``"matpes"``, a [94] array in eV/atom, or a ``(source, target)``
            pair of elemental reference files): the AtomRef becomes the base
            model's AtomRef + prior + a ridge fit (penalty by 5-fold
            cross-validation) of the base model's remaining per-atom error on
            ``train`` and ``atomref_records``.

    Returns:
        :class:`FinetuneResult` with the checkpoint, TorchScript file, history
        and test MAEs.

    Raises:
        ValueError: bad settings; TransferDataError: empty splits, missing or
            inconsistent labels, elements beyond Z = 94, structures chgnet
            cannot make graphs of, a rank-deficient AtomRef fit; ModelError: a
            base that cannot be fine-tuned. All before any training step.
        RuntimeError: the loss became NaN.
    """
    from chgnet.trainer import Trainer

    config = FinetuneConfig.with_overrides(config, overrides, "finetune")
    config.check()
    method = METHODS[config.method]
    if atomref_prior is not None and config.method != "refit-atomref":
        raise ConfigError(f"atomref_prior refits the AtomRef of Method 4 (refit-atomref), not of {config.method}")
    if test is not None and len(test) == 0:
        raise TransferDataError("test set is empty (pass test=None to report validation metrics instead)")
    targets = _targets_for(train, val, test, config.targets)

    out = Path(output_dir)
    run_file = out / "run.json"
    settings = {
        "method": config.method,
        "method_number": method.number,
        "base": str(base),
        "config": asdict(config),
        "targets": targets,
        "data": fingerprint(train, val, test or []),
        "n_train": len(train),
        "n_val": len(val),
        "n_test": 0 if test is None else len(test),
    }
    if atomref_records:
        settings["atomref_data"] = fingerprint(atomref_records)
    if atomref_prior is not None:
        settings["atomref_prior"] = _describe_prior(atomref_prior)
    previous = None
    if run_file.is_file():
        previous = json.loads(run_file.read_text())
        same = all(previous.get(k) == settings.get(k) for k in ("method", "base", "config", "targets", "data", "atomref_data", "atomref_prior"))
        if not resume:
            raise TransferDataError(f"{out} already holds a run; use another output directory or resume")
        if not same:
            raise TransferDataError(
                f"{out} holds a run with other settings or data (method {previous.get('method')}, base "
                f"{previous.get('base')}); use another output directory"
            )
        if previous.get("status") == "complete":
            return _load_result(out, previous)

    upstream, model_dict = load_upstream(base)
    source_atomref = get_atomref(upstream)
    fit = None
    if atomref_prior is not None:
        fit = fit_atomref_with_prior([*train, *atomref_records], base=str(base), prior=atomref_prior, seed=config.seed)
    elif method.atomref == "fit":
        fit = fit_atomref([*train, *atomref_records], source=source_atomref, allow_rank_deficient=config.allow_rank_deficient)
        fit.source = str(base)
    elements_train = {el for r in train for el in r.structure.composition.chemical_system.split("-")}
    unseen = sorted({el for split in (val, test or []) for r in split for el in r.structure.composition.chemical_system.split("-")} - elements_train)

    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    staging = ckpt_dir / ".staging"
    log_path = out / "train.log"
    log = open(log_path, "a", encoding="utf-8", buffering=1)
    try:
        torch.manual_seed(config.seed)
        if method.pretrained:
            model = upstream
        else:
            from chgnet.model import CHGNet as UpstreamCHGNet

            with contextlib.redirect_stdout(log):
                model = UpstreamCHGNet(**model_dict["model_args"])  # random initialisation
        if fit is not None:
            _set_upstream_atomref(model, fit.atomref)
            fit.write(out / "atomref.json")

        train_data = _structure_data(train, targets, "training set", log)
        val_data = _structure_data(val, targets, "validation set", log)
        if test is not None:  # refuse unusable test labels before any training step
            _structure_data(test, targets, "test set", log)
        train_loader = _loader(train_data, config.batch_size, True, config.seed)
        val_loader = _loader(val_data, config.batch_size, False, config.seed)

        with contextlib.redirect_stdout(log):
            trainer = Trainer(
                model=model,
                targets=targets,
                energy_loss_ratio=config.energy_weight,
                force_loss_ratio=config.force_weight,
                stress_loss_ratio=config.stress_weight,
                mag_loss_ratio=config.magmom_weight,
                optimizer="Adam",
                scheduler="CosLR",
                scheduler_params={"decay_fraction": config.final_learning_rate / config.learning_rate},
                criterion=config.loss,
                delta=config.huber_delta,
                epochs=config.epochs,
                learning_rate=config.learning_rate,
                print_freq=10**9,
                torch_seed=None,
                use_device=config.device,
            )
        # chgnet's Trainer steps the scheduler at (up to) 10 points per epoch, fewer when an
        # epoch has < 10 batches; size the cosine to the steps it really takes so that the
        # learning rate ends at final_learning_rate whatever the data size.
        from torch.optim.lr_scheduler import CosineAnnealingLR

        n_batches = len(train_loader)
        steps = len({int(k) for k in np.arange(1, 11) * n_batches // 10 if 1 <= k <= n_batches})
        trainer.scheduler = CosineAnnealingLR(
            trainer.optimizer, T_max=config.epochs * steps, eta_min=config.final_learning_rate
        )
        history = read_history(out / "history.csv")
        start = 0
        last = latest_checkpoint(ckpt_dir) if previous is not None else None
        if last is not None:
            _, state = last
            trainer.model.load_state_dict(state["model"]["state_dict"])
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.scheduler.load_state_dict(state["scheduler"])
            trainer.training_history = state["training_history"]
            start = len(trainer.training_history["e"]["train"])
            if "rng" in state:  # the batch order and any sampling continue as in an uninterrupted run
                restore_rng(state["rng"], train_loader.generator)
            history = [row for row in history if row["epoch"] <= start]
            logger.info("resuming %s after epoch %d of %d", out, start, config.epochs)
        else:
            history = []
        settings.update(status="running", unseen_val_test_elements=unseen, method_description=method.description)
        with atomic_write(run_file) as fh:
            json.dump(settings, fh, indent=1)

        if start == 0:
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(log):
                trainer.model.to(trainer.device)
                init = trainer._validate(val_loader)
            history = [{"epoch": 0, "learning_rate": config.learning_rate, "seconds": time.perf_counter() - t0}
                       | {f"val_{k}": float(init[k]) for k in targets}]
            write_history(out / "history.csv", history, _history_columns(targets))

        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, initial=start, desc=f"{config.method}", unit="epoch", disable=not progress, file=sys.stderr)
        for epoch in range(start, config.epochs):
            t0 = time.perf_counter()
            trainer.starting_epoch, trainer.epochs = epoch, epoch + 1
            batches = tqdm(train_loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, file=sys.stderr)
            with contextlib.redirect_stdout(log):
                # chgnet's Trainer deletes its previous epoch file before writing the next one: let it write into a
                # staging folder, then keep our own checkpoint (atomic, with the random states)
                trainer.train(batches, val_loader, save_dir=str(staging), train_composition_model=method.train_atomref)
            _keep_checkpoints(staging, ckpt_dir, train_loader.generator)
            hist = trainer.training_history
            if len(hist["e"]["train"]) != epoch + 1 or not all(math.isfinite(hist[k]["val"][-1]) for k in targets):
                raise RuntimeError(f"training diverged (NaN loss) in epoch {epoch + 1}; see {log_path}")
            row = {"epoch": epoch + 1, "learning_rate": trainer.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
            row |= {f"{split}_{k}": float(hist[k][split][-1]) for split in ("train", "val") for k in targets}
            history.append(row)
            write_history(out / "history.csv", history, _history_columns(targets))
            bar.update(1)
            bar.set_postfix({f"val_{k}": f"{row[f'val_{k}']:.4g}" for k in targets})
        bar.close()
    finally:
        log.close()

    title = f"{config.method} (Method {method.number}) from {base}"
    plot_history(history, targets, out / "training_curves.png", title=title)
    best = sorted(ckpt_dir.glob("bestE_*.pth.tar"), key=checkpoint_epoch)
    if not best:
        raise RuntimeError(f"no best checkpoint in {ckpt_dir}")
    best_epoch = int(best[-1].name.split("_")[1].removeprefix("epoch")) + 1
    state = read_state(best[-1])
    checkpoint = out / "model.pth.tar"
    with atomic_path(checkpoint) as tmp:
        torch.save(
            {
                "model": state["model"],
                "training_history": state["training_history"],
                "transfer": {"method": config.method, "method_number": method.number, "base": str(base),
                             "best_epoch": best_epoch, "targets": targets},
            },
            tmp,
        )
    torchscript = _export(checkpoint, out / "model.pt", name=f"{Path(str(base)).name}+{config.method}")
    metrics = evaluate(torchscript, test if test is not None else val)
    metrics["split"] = "test" if test is not None else "val"
    metrics["best_epoch"] = best_epoch
    with atomic_write(out / "metrics.json") as fh:
        json.dump(metrics, fh, indent=1)
    settings.update(status="complete", best_epoch=best_epoch)
    with atomic_write(run_file) as fh:
        json.dump(settings, fh, indent=1)
    return FinetuneResult(
        output_dir=out,
        checkpoint=checkpoint,
        torchscript=torchscript,
        method=config.method,
        targets=targets,
        history=history,
        best_epoch=best_epoch,
        metrics=metrics,
        atomref_fit=fit,
        resumed_from_epoch=start,
    )


def _keep_checkpoints(staging: Path, ckpt_dir: Path, generator: torch.Generator) -> None:
    """Move the epoch's checkpoints from chgnet's staging folder into the run:
    the epoch checkpoint rewritten atomically with the random states, then the
    previous one deleted; a new best-energy or best-force checkpoint renamed
    into place, then the older one deleted."""
    import os

    staged = sorted(staging.glob("epoch*.pth.tar"), key=checkpoint_epoch)
    if not staged:
        raise RuntimeError(f"chgnet's Trainer wrote no checkpoint into {staging}")
    state = read_state(staged[-1])
    state["rng"] = rng_state(generator)
    kept = save_checkpoint(state, ckpt_dir / staged[-1].name)
    for old in ckpt_dir.glob("epoch*.pth.tar"):
        if old != kept:
            old.unlink()
    for kind in ("bestE_", "bestF_"):
        new = sorted(staging.glob(f"{kind}*.pth.tar"), key=checkpoint_epoch)
        if new:
            target = ckpt_dir / new[-1].name
            os.replace(new[-1], target)
            for old in ckpt_dir.glob(f"{kind}*.pth.tar"):
                if old != target:
                    old.unlink()
    for leftover in staging.glob("*.pth.tar"):
        leftover.unlink()


def _export(checkpoint: Path, path: Path, name: str) -> Path:
    from crossfunctional.models import export, from_checkpoint

    model = from_checkpoint(checkpoint, name=name)
    return export(model, path)


def _describe_prior(prior: Any) -> str:
    """A stable description of an ``atomref_prior`` for ``run.json`` (a resumed run must use the same prior)."""
    import hashlib

    if isinstance(prior, str):
        if prior != "matpes":
            raise ConfigError(f"unknown AtomRef prior {prior!r}; use 'matpes', a [94] array or a (source, target) pair of files")
        return "matpes"
    if isinstance(prior, tuple) and len(prior) == 2:
        digests = [hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16] for p in prior]
        return f"elements {prior[0]} ({digests[0]}) -> {prior[1]} ({digests[1]})"
    arr = np.ascontiguousarray(np.asarray(prior, dtype=float))
    return f"array sha256 {hashlib.sha256(arr.tobytes()).hexdigest()[:16]}"


def _load_result(out: Path, settings: dict[str, Any]) -> FinetuneResult:
    metrics = json.loads((out / "metrics.json").read_text())
    fit = None
    if (out / "atomref.json").is_file() and "prior" in (d := json.loads((out / "atomref.json").read_text())):
        fit = PriorAtomRefFit(
            atomref=get_atomref(d["atomref"]), base_atomref=get_atomref(d["base_atomref"]), prior=get_atomref(d["prior"]),
            residual=get_atomref(d["residual"]), alpha=float(d["alpha"]),
            cv_mae={float(a): v for a, v in d["cv_mae_eV_per_atom"].items()}, fitted_elements=d["fitted_elements"],
            no_prior_elements=d["no_prior_elements"], n_structures=d["n_structures"],
            residual_mae=d["residual_mae_eV_per_atom"], base=d["base"],
        )
    elif (out / "atomref.json").is_file():
        d = json.loads((out / "atomref.json").read_text())
        fit = AtomRefFit(
            atomref=get_atomref(d["atomref"]), fitted_elements=d["fitted_elements"], kept_from_source=d["kept_from_source"],
            absent_elements=d.get("absent_elements", []), rank=d.get("rank", 0), rank_deficient=d.get("rank_deficient", False),
            undetermined_elements=d.get("undetermined_elements", []), n_structures=d.get("n_structures", 0),
            residual_mae=d.get("residual_mae_eV_per_atom", float("nan")), source=d.get("source", ""),
        )
    history = read_history(out / "history.csv")
    for row in history:
        row["epoch"] = int(row["epoch"])
    return FinetuneResult(
        output_dir=out, checkpoint=out / "model.pth.tar", torchscript=out / "model.pt", method=settings["method"],
        targets=settings["targets"], history=history, best_epoch=int(settings["best_epoch"]), metrics=metrics,
        atomref_fit=fit, resumed_from_epoch=int(settings["config"]["epochs"]),
    )
