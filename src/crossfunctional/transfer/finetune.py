"""Fine-tuning with chgnet's ``Trainer``: the four transfer methods of Huang et al.,
npj Comput. Mater. 2025 (Table 1), and the scaling-law analysis (Fig. 6).

Methods (by name, paper number in brackets):

- ``scratch`` (1): AtomRef fitted to the target training data (Eq. 2) and
  frozen; graph network randomly initialised.
- ``trainable-atomref`` (2): pretrained network; the source AtomRef is
  trained along with it.
- ``frozen-atomref`` (3): pretrained network; the source AtomRef is frozen.
- ``refit-atomref`` (4, default): pretrained network; AtomRef refitted to the
  target training data (Eq. 2), put in the upstream model's
  ``composition_model`` (Eq. 3 re-referencing) and frozen.

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
import copy
import csv
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossfunctional.io import atomic_path, atomic_write
from crossfunctional.models import ModelError
from crossfunctional.transfer.atomref import AtomRefFit, fit_atomref, get_atomref
from crossfunctional.transfer.data import LabelledStructure, TransferDataError, check_records

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "FinetuneConfig",
    "FinetuneResult",
    "PowerLawFit",
    "ScalingResult",
    "crossover",
    "evaluate",
    "finetune",
    "fit_power_law",
    "load_upstream",
    "scaling_law",
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
class FinetuneConfig:
    """Training settings (defaults: the paper's).

    Attributes:
        method: one of :data:`METHODS`.
        epochs: training epochs (50).
        batch_size: structures per batch (64).
        learning_rate: initial Adam learning rate (1e-3).
        final_learning_rate: end of the cosine decay (1e-5).
        loss: "Huber" (paper), "MSE" or "MAE"; ``huber_delta`` is chgnet's 0.1.
        energy_weight, force_weight, stress_weight, magmom_weight: 3 : 1 : 0.1 : 1.
        targets: chgnet target string ("e", "ef", "efs", "efsm", ...); None
            follows the labels present.
        seed: seeds weight initialisation and batch order.
        device: torch device for training.
        allow_rank_deficient: accept a rank-deficient AtomRef fit (methods 1, 4).
    """

    method: str = "refit-atomref"
    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-5
    loss: str = "Huber"
    huber_delta: float = 0.1
    energy_weight: float = 3.0
    force_weight: float = 1.0
    stress_weight: float = 0.1
    magmom_weight: float = 1.0
    targets: str | None = None
    seed: int = 0
    device: str = "cpu"
    allow_rank_deficient: bool = False

    def check(self) -> None:
        """Raises ValueError naming a setting that cannot be used."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.learning_rate > 0 and 0 < self.final_learning_rate <= self.learning_rate):
            raise ValueError(
                f"need 0 < final_learning_rate <= learning_rate, got {self.final_learning_rate} and {self.learning_rate}"
            )
        if self.loss not in ("Huber", "MSE", "MAE"):
            raise ValueError(f"loss must be Huber, MSE or MAE, got {self.loss!r}")
        if self.targets is not None and (not self.targets.startswith("e") or set(self.targets) - set("efsm")):
            raise ValueError(f"targets must start with 'e' and use only e, f, s, m; got {self.targets!r}")


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
        atomref_fit: the Eq. 2 fit (methods 1 and 4).
    """

    output_dir: Path
    checkpoint: Path
    torchscript: Path
    method: str
    targets: str
    history: list[dict[str, float]]
    best_epoch: int
    metrics: dict[str, Any]
    atomref_fit: AtomRefFit | None = None
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
    checkpoint), read with ``torch.load(weights_only=True)``.

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
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist()):
                raise ModelError(
                    f"{path} is an exported TorchScript model; fine-tuning needs the chgnet checkpoint it came from"
                )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"cannot read {path} as a chgnet checkpoint with weights_only=True: {str(exc).splitlines()[0]}"
        ) from None
    model_dict = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(model_dict, dict) or "state_dict" not in model_dict or "model_args" not in model_dict:
        raise ModelError(f"{path} is not a chgnet checkpoint (no 'state_dict' and 'model_args')")
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


def _fingerprint(*splits: Sequence[LabelledStructure]) -> str:
    h = hashlib.sha256()
    for split in splits:
        h.update(b"|")
        for r in split:
            h.update(f"{r.material_id}:{r.n_atoms}:{r.energy:.8f};".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------- history
_KEYS = "efsm"


def _write_history(path: Path, rows: list[dict[str, float]], targets: str) -> None:
    cols = ["epoch", "learning_rate", "seconds"] + [f"{split}_{k}" for split in ("train", "val") for k in targets]
    with atomic_write(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({c: row.get(c, "") for c in cols})


def _read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: (float(v) if v not in ("", None) else float("nan")) for k, v in row.items()} for row in csv.DictReader(fh)]


def plot_history(rows: list[dict[str, float]], targets: str, path: str | os.PathLike, title: str = "") -> Path:
    """Training curves: one panel per target, train and validation MAE per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = {"e": "energy MAE (eV/atom)", "f": "force MAE (eV/Å)", "s": "stress MAE (GPa)", "m": "magmom MAE (μB)"}
    fig, axes = plt.subplots(1, len(targets), figsize=(3.6 * len(targets), 3.3), squeeze=False)
    for ax, key in zip(axes[0], targets):
        for split, style in (("train", "o-"), ("val", "s-")):
            pts = [(r["epoch"], r.get(f"{split}_{key}", float("nan"))) for r in rows]
            pts = [(x, y) for x, y in pts if np.isfinite(y) and y > 0]
            if pts:
                ax.plot(*zip(*pts), style, ms=3, label=split)
        ax.set_xlabel("epoch (0 = before training)")
        ax.set_ylabel(units[key])
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


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

    config = copy.deepcopy(config) if config is not None else FinetuneConfig()
    for key, value in overrides.items():
        if key not in {f.name for f in fields(FinetuneConfig)}:
            raise TypeError(f"finetune() got an unknown setting {key!r}")
        setattr(config, key, value)
    config.check()
    method = METHODS[config.method]
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
        "data": _fingerprint(train, val, test or []),
        "n_train": len(train),
        "n_val": len(val),
        "n_test": 0 if test is None else len(test),
    }
    previous = None
    if run_file.is_file():
        previous = json.loads(run_file.read_text())
        same = all(previous.get(k) == settings[k] for k in ("method", "base", "config", "targets", "data"))
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
    if method.atomref == "fit":
        fit = fit_atomref(train, source=source_atomref, allow_rank_deficient=config.allow_rank_deficient)
        fit.source = str(base)
    elements_train = {el for r in train for el in r.structure.composition.chemical_system.split("-")}
    unseen = sorted({el for split in (val, test or []) for r in split for el in r.structure.composition.chemical_system.split("-")} - elements_train)

    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
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
        test_data = None if test is None else _structure_data(test, targets, "test set", log)
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
        history = _read_history(out / "history.csv")
        start = 0
        last = sorted(ckpt_dir.glob("epoch*.pth.tar")) if ckpt_dir.is_dir() else []
        if previous is not None and last:
            state = torch.load(last[-1], map_location="cpu", weights_only=True)
            trainer.model.load_state_dict(state["model"]["state_dict"])
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.scheduler.load_state_dict(state["scheduler"])
            trainer.training_history = state["training_history"]
            start = len(trainer.training_history["e"]["train"])
            history = [row for row in history if row["epoch"] <= start]
            logger.info("resuming %s after epoch %d of %d", out, start, config.epochs)
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
            _write_history(out / "history.csv", history, targets)

        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, initial=start, desc=f"{config.method}", unit="epoch", disable=not progress, file=sys.stderr)
        for epoch in range(start, config.epochs):
            t0 = time.perf_counter()
            trainer.starting_epoch, trainer.epochs = epoch, epoch + 1
            batches = tqdm(train_loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, file=sys.stderr)
            with contextlib.redirect_stdout(log):
                trainer.train(batches, val_loader, save_dir=str(ckpt_dir), train_composition_model=method.train_atomref)
            hist = trainer.training_history
            if len(hist["e"]["train"]) != epoch + 1 or not all(math.isfinite(hist[k]["val"][-1]) for k in targets):
                raise RuntimeError(f"training diverged (NaN loss) in epoch {epoch + 1}; see {log_path}")
            row = {"epoch": epoch + 1, "learning_rate": trainer.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
            row |= {f"{split}_{k}": float(hist[k][split][-1]) for split in ("train", "val") for k in targets}
            history.append(row)
            _write_history(out / "history.csv", history, targets)
            bar.update(1)
            bar.set_postfix({f"val_{k}": f"{row[f'val_{k}']:.4g}" for k in targets})
        bar.close()
    finally:
        log.close()

    title = f"{config.method} (Method {method.number}) from {base}"
    plot_history(history, targets, out / "training_curves.png", title=title)
    best = sorted(ckpt_dir.glob("bestE_*.pth.tar"))
    if not best:
        raise RuntimeError(f"no best checkpoint in {ckpt_dir}")
    best_epoch = int(best[-1].name.split("_")[1].removeprefix("epoch")) + 1
    state = torch.load(best[-1], map_location="cpu", weights_only=True)
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


def _export(checkpoint: Path, path: Path, name: str) -> Path:
    from crossfunctional.models import export, from_checkpoint

    model = from_checkpoint(checkpoint, name=name)
    return export(model, path)


def _load_result(out: Path, settings: dict[str, Any]) -> FinetuneResult:
    metrics = json.loads((out / "metrics.json").read_text())
    fit = None
    if (out / "atomref.json").is_file():
        d = json.loads((out / "atomref.json").read_text())
        fit = AtomRefFit(
            atomref=get_atomref(d["atomref"]), fitted_elements=d["fitted_elements"], kept_from_source=d["kept_from_source"],
            absent_elements=d.get("absent_elements", []), rank=d.get("rank", 0), rank_deficient=d.get("rank_deficient", False),
            undetermined_elements=d.get("undetermined_elements", []), n_structures=d.get("n_structures", 0),
            residual_mae=d.get("residual_mae_eV_per_atom", float("nan")), source=d.get("source", ""),
        )
    history = _read_history(out / "history.csv")
    for row in history:
        row["epoch"] = int(row["epoch"])
    return FinetuneResult(
        output_dir=out, checkpoint=out / "model.pth.tar", torchscript=out / "model.pt", method=settings["method"],
        targets=settings["targets"], history=history, best_epoch=int(settings["best_epoch"]), metrics=metrics,
        atomref_fit=fit, resumed_from_epoch=int(settings["config"]["epochs"]),
    )


# ----------------------------------------------------------------- scaling law
@dataclass
class PowerLawFit:
    """``log10(MAE) = intercept + slope * log10(n)`` fitted by least squares.

    Attributes:
        slope: log-log slope (dimensionless).
        intercept: log10 of the MAE at n = 1 (MAE units).
        r2: coefficient of determination of the log-log fit.
        n_points: points used.
    """

    slope: float
    intercept: float
    r2: float
    n_points: int

    def predict(self, n: float | np.ndarray) -> float | np.ndarray:
        return 10 ** (self.intercept + self.slope * np.log10(n))


def fit_power_law(sizes: Sequence[float], maes: Sequence[float]) -> PowerLawFit:
    """Fit MAE = 10**intercept * n**slope in log-log space (Fig. 6).

    Raises:
        ValueError: fewer than 2 points, or non-positive sizes or MAEs.
    """
    x = np.asarray(sizes, dtype=float)
    y = np.asarray(maes, dtype=float)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"a power-law fit needs >= 2 (size, MAE) pairs, got {x.size} and {y.size}")
    if np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("sizes and MAEs must be positive and finite for a log-log fit")
    lx, ly = np.log10(x), np.log10(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + slope * lx)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return PowerLawFit(float(slope), float(intercept), r2, int(x.size))


def crossover(a: PowerLawFit, b: PowerLawFit) -> float | None:
    """Training-set size where two fitted power laws give the same MAE
    (the paper's estimate of where transfer stops beating scratch); None for
    parallel lines."""
    if math.isclose(a.slope, b.slope, rel_tol=1e-12, abs_tol=1e-12):
        return None
    return float(10 ** ((b.intercept - a.intercept) / (a.slope - b.slope)))


@dataclass
class ScalingResult:
    """Validation MAEs against training-set size per method, with fits.

    Attributes:
        rows: one dict per run: method, size, energy_mae_meV_per_atom,
            force_mae_meV_per_A (validation set, exported model).
        fits: {method: {"energy": PowerLawFit, "force": PowerLawFit}} over
            sizes >= fit_min_size.
        crossovers: {"energy": n or None, "force": n or None} between the
            first two methods.
    """

    rows: list[dict[str, Any]]
    fits: dict[str, dict[str, PowerLawFit]]
    crossovers: dict[str, float | None]
    fit_min_size: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "fits": {m: {q: asdict(f) for q, f in d.items()} for m, d in self.fits.items()},
            "crossover_training_size": self.crossovers,
            "fit_min_size": self.fit_min_size,
            "model": "log10(MAE) = intercept + slope * log10(n_train)",
        }

    def write(self, directory: str | os.PathLike) -> Path:
        """``scaling.json``, ``scaling.csv`` and ``scaling.png`` (log-log MAE
        against training size with the fitted lines), written atomically."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        directory = Path(directory)
        with atomic_write(directory / "scaling.json") as fh:
            json.dump(self.as_dict(), fh, indent=1)
        cols = ["method", "size", "energy_mae_meV_per_atom", "force_mae_meV_per_A"]
        with atomic_write(directory / "scaling.csv", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
        quantities = [("energy", "energy_mae_meV_per_atom", "energy MAE (meV/atom)"), ("force", "force_mae_meV_per_A", "force MAE (meV/Å)")]
        quantities = [q for q in quantities if any(q[1] in r for r in self.rows)]
        fig, axes = plt.subplots(1, len(quantities), figsize=(4.6 * len(quantities), 3.8), squeeze=False)
        for ax, (q, key, label) in zip(axes[0], quantities):
            for method in dict.fromkeys(r["method"] for r in self.rows):
                pts = sorted((r["size"], r[key]) for r in self.rows if r["method"] == method and key in r)
                line = ax.plot(*zip(*pts), "o", label=method)[0]
                fit = self.fits.get(method, {}).get(q)
                if fit is not None:
                    xs = np.geomspace(min(p[0] for p in pts), max(p[0] for p in pts), 50)
                    ax.plot(xs, fit.predict(xs), "-", color=line.get_color(),
                            label=f"slope {fit.slope:.3f}, R² {fit.r2:.3f}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("training structures")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_path(directory / "scaling.png") as tmp:
            fig.savefig(tmp, dpi=120)
        plt.close(fig)
        return directory / "scaling.json"


def scaling_law(
    train: Sequence[LabelledStructure],
    val: Sequence[LabelledStructure],
    sizes: Sequence[int],
    output_dir: str | os.PathLike = "scaling",
    methods: Sequence[str] = ("refit-atomref", "scratch"),
    base: str | os.PathLike = "chgnet-0.3.0",
    config: FinetuneConfig | None = None,
    fit_min_size: int = 0,
    seed: int = 0,
    progress: bool = True,
    **overrides: Any,
) -> ScalingResult:
    """Train each method on nested subsets of ``train`` (the first ``size``
    structures of one seeded permutation, so smaller sets are contained in
    larger ones), score the exported models on ``val`` and fit log-log slopes
    and R² of MAE against size over sizes >= ``fit_min_size`` (Fig. 6); the
    crossover is where the first two methods' fitted lines meet.

    Runs go to ``output_dir/<method>_n<size>/`` and are resumed / reused like
    :func:`finetune` runs.

    Raises:
        ValueError / TransferDataError: sizes that are not positive or exceed
            the training set, unknown methods, and everything :func:`finetune`
            checks, before the first run starts.
    """
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive integers, got {sizes}")
    if sizes[-1] > len(train):
        raise TransferDataError(f"size {sizes[-1]} exceeds the {len(train)} training structures")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    check_records(val, "validation set")
    order = np.random.default_rng(seed).permutation(len(train))
    out = Path(output_dir)
    rows = []
    for method in methods:
        for size in sizes:
            subset = [train[i] for i in order[:size]]
            res = finetune(subset, val, None, base=base, output_dir=out / f"{method}_n{size}", config=config,
                           progress=progress, method=method, **overrides)
            rows.append({"method": method, "size": size} | {k: v for k, v in res.metrics.items() if k.endswith(("atom", "_A"))})
    fits: dict[str, dict[str, PowerLawFit]] = {}
    for method in methods:
        fits[method] = {}
        for q, key in (("energy", "energy_mae_meV_per_atom"), ("force", "force_mae_meV_per_A")):
            pts = [(r["size"], r[key]) for r in rows if r["method"] == method and key in r and r["size"] >= fit_min_size]
            if len(pts) >= 2:
                fits[method][q] = fit_power_law(*zip(*pts))
    crossovers: dict[str, float | None] = {}
    if len(methods) >= 2:
        for q in ("energy", "force"):
            a, b = fits[methods[0]].get(q), fits[methods[1]].get(q)
            crossovers[q] = crossover(a, b) if a and b else None
    result = ScalingResult(rows, fits, crossovers, fit_min_size)
    result.write(out)
    return result
