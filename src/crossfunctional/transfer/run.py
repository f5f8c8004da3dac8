"""What every training run shares: the paper's settings and their checks, the
data fingerprint that guards a resume, the history CSV and the training-curve
plot. Used by :mod:`crossfunctional.transfer.finetune` (single task) and
:mod:`crossfunctional.transfer.multitask`."""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import random
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossfunctional.errors import CrossFunctionalError
from crossfunctional.io import atomic_write, save_figure

__all__ = [
    "ConfigError",
    "TrainingConfig",
    "checkpoint_epoch",
    "fingerprint",
    "latest_checkpoint",
    "plot_curves",
    "read_history",
    "restore_rng",
    "rng_state",
    "save_checkpoint",
    "write_history",
]

log = logging.getLogger(__name__)

#: label kinds and their axis titles
UNITS = {"e": "energy MAE (eV/atom)", "f": "force MAE (eV/Å)", "s": "stress MAE (GPa)", "m": "magmom MAE (μB)"}


class ConfigError(CrossFunctionalError, ValueError):
    """A training setting that cannot be used (the message names it)."""


@dataclass
class TrainingConfig:
    """Settings every training run shares (defaults: Huang et al. 2025's fine-tuning).

    Attributes:
        epochs: training epochs (50).
        batch_size: structures per batch (64).
        learning_rate: initial Adam learning rate (1e-3).
        final_learning_rate: end of the cosine decay (1e-5).
        loss: "Huber" (paper; δ = ``huber_delta``, chgnet's 0.1), "MSE" or "MAE".
        energy_weight, force_weight, stress_weight, magmom_weight: loss weights
            3 : 1 : 0.1 : 1.
        targets: chgnet target string ("e", "ef", "efs", "efsm", ...); None
            follows the labels present.
        seed: seeds initialisation, splits and batch order.
        device: torch device for training.
        allow_rank_deficient: accept a rank-deficient AtomRef fit.
    """

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

    @classmethod
    def with_overrides(cls, config: TrainingConfig | None, overrides: Mapping[str, Any], caller: str):
        """A copy of ``config`` (default: the defaults) with keyword
        ``overrides`` applied; an unknown keyword is a ``TypeError`` naming it."""
        import copy
        from dataclasses import fields

        config = copy.deepcopy(config) if config is not None else cls()
        names = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in names:
                raise TypeError(f"{caller}() got an unknown setting {key!r}")
            setattr(config, key, value)
        return config

    def check(self) -> None:
        """Raises :class:`ConfigError` naming a setting that cannot be used."""
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.learning_rate > 0 and 0 < self.final_learning_rate <= self.learning_rate):
            raise ConfigError(
                f"need 0 < final_learning_rate <= learning_rate, got {self.final_learning_rate} and {self.learning_rate}"
            )
        if self.loss not in ("Huber", "MSE", "MAE"):
            raise ConfigError(f"loss must be Huber, MSE or MAE, got {self.loss!r}")
        for name in ("energy_weight", "force_weight", "stress_weight", "magmom_weight", "huber_delta"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.targets is not None and (not self.targets.startswith("e") or set(self.targets) - set("efsm")):
            raise ConfigError(f"targets must start with 'e' and use only e, f, s, m; got {self.targets!r}")
        from crossfunctional.models import ModelError, resolve_device

        try:
            resolve_device(self.device)
        except ModelError as exc:
            raise ConfigError(str(exc)) from None


def fingerprint(*groups: Sequence[Any] | Mapping[str, Sequence[Any]]) -> str:
    """A short hash of the training data (material id, size and energy of every
    structure, in order), so that a resumed run refuses other data. Each group
    is a split (a sequence of labelled structures) or a {task: split} mapping."""
    h = hashlib.sha256()
    for group in groups:
        h.update(b"|")
        items = [(task, group[task]) for task in sorted(group)] if isinstance(group, Mapping) else [(None, group)]
        for task, records in items:
            if task is not None:
                h.update(task.encode())
            for r in records:
                h.update(f"{r.material_id}:{r.n_atoms}:{r.energy:.8f};".encode())
    return h.hexdigest()[:16]


def _cell(value: Any, column: str) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "epoch":
        return int(value)
    return value


def write_history(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """The per-epoch history as CSV, atomically: ``epoch`` as an integer, a
    value that was not measured as an empty cell."""
    path = Path(path)
    with atomic_write(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({c: _cell(row.get(c), c) for c in columns})
    return path


def read_history(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of :func:`write_history` (``epoch`` int, others float, empty cells NaN);
    [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [
            {k: (int(v) if k == "epoch" else float(v)) if v not in ("", None) else float("nan") for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def plot_curves(
    rows: Sequence[Mapping[str, float]],
    panels: Sequence[tuple[str, Sequence[tuple[str, str, str, str | None]], bool]],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Training curves, written atomically as PNG.

    Args:
        rows: history rows (``epoch`` and the columns named in ``panels``).
        panels: one (y label, series, log scale) per panel; a series is
            (column, legend label, line style, colour or None).
        path: the PNG file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.3), squeeze=False)
    for ax, (ylabel, series, log) in zip(axes[0], panels):
        for column, label, style, colour in series:
            pts = [(r["epoch"], r.get(column, float("nan"))) for r in rows]
            pts = [(x, y) for x, y in pts if math.isfinite(y) and (y > 0 or not log)]
            if pts:
                ax.plot(*zip(*pts), style, ms=3, color=colour, label=label)
        ax.set_xlabel("epoch (0 = before training)")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a broken file under ``path``: the state
    goes to a temporary file in the same folder, which is flushed and synced
    to disk and then renamed onto ``path`` (a killed write leaves only a
    hidden ``.*.tmp`` file, which :func:`latest_checkpoint` removes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(dict(state), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def checkpoint_epoch(path: str | os.PathLike) -> int:
    """The epoch number in a checkpoint name such as ``epoch12_e31_f55_sNA_mNA.pth.tar`` (-1 if none)."""
    match = re.search(r"epoch(\d+)", Path(path).name)
    return int(match.group(1)) if match else -1


def latest_checkpoint(folder: str | os.PathLike, pattern: str = "epoch*.pth.tar") -> tuple[Path, Any] | None:
    """The newest readable checkpoint in ``folder`` and its state, or None.

    Removes the temporary files a killed :func:`save_checkpoint` left behind;
    a checkpoint that cannot be read (truncated, corrupt) is skipped with a
    warning and the next older one is tried.
    """
    from crossfunctional.models.checkpoints import ModelError, read_state

    folder = Path(folder)
    if not folder.is_dir():
        return None
    for debris in folder.glob(".*.tmp"):
        debris.unlink()
    for path in sorted(folder.glob(pattern), key=checkpoint_epoch, reverse=True):
        try:
            return path, read_state(path)
        except ModelError as exc:
            log.warning("skipping unreadable checkpoint %s (%s)", path, exc)
            import warnings

            warnings.warn(f"skipping unreadable checkpoint {path.name}: {exc}", stacklevel=2)
    return None


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The random states a resumed run needs (torch, numpy, Python, and a data
    loader's generator), as tensors and lists that ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if generator is not None:
        out["loader"] = generator.get_state()
    return out


def restore_rng(state: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
    """Undo :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])
