"""The one reader of model files: every file the project accepts goes through here.

- ``chgnet`` checkpoints (``.pth.tar``: ``{"model": {"state_dict",
  "model_args"}}``), the registered weights shipped in the ``chgnet`` package
  and the checkpoints chgnet's ``Trainer`` writes while fine-tuning;
- multi-task checkpoints (``{"multitask": {...}}``, Kim et al. 2025; format
  below), of which one task is folded into a plain model (:func:`fold_task`);
- TorchScript exports (``.pt``) written by
  :func:`crossfunctional.models.export`.

Files are untrusted input: pickled checkpoints are read with
``torch.load(..., weights_only=True)`` (:func:`read_state`), so a file cannot
run code on load; anything that would need full unpickling is refused with a
clear :class:`ModelError`.

Multi-task checkpoint format (``state["multitask"]``): ``format`` =
``FORMAT``, ``version``, ``tasks`` [T] names, ``state_dict`` and
``model_args`` of the shared CHGNet, ``task_bias`` {gated-MLP prefix: [T, 2H]}
(per-task first-layer biases of core and gate), ``atomref`` [T, 94] (eV/atom),
``source_task``.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from crossfunctional.errors import CrossFunctionalError
from crossfunctional.models.chgnet import MAX_Z

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelError",
    "fold_task",
    "is_multitask",
    "is_torchscript",
    "read_model_dict",
    "read_state",
    "read_torchscript",
    "task_index",
]


class ModelError(CrossFunctionalError, ValueError):
    """A model name, checkpoint or exported file that cannot be used."""


def read_state(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with clear errors.

    Raises:
        ModelError: missing file, or a file that is not a weights-only
            pickle (corrupt, truncated, or needing full unpickling).
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except Exception as exc:  # pickle.UnpicklingError, EOFError, RuntimeError of a truncated zip, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"cannot read {path} as a checkpoint with weights_only=True (files that need full unpickling are "
            f"refused): {reason}"
        ) from None


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with code and constants)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def read_torchscript(path: str | os.PathLike, task: str | None = None) -> torch.nn.Module:
    """A TorchScript export of this project (on the CPU).

    Raises:
        ModelError: unreadable archive, a TorchScript file without this
            project's metadata, or ``task`` other than the export's own.
    """
    path = Path(path)
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelError(f"cannot load TorchScript model {path}: {str(exc).splitlines()[0]}") from None
    if not hasattr(model, "metadata_json"):
        raise ModelError(f"{path} is a TorchScript file but not a crossfunctional export (no metadata)")
    own = json.loads(model.metadata_json).get("task")
    if task is not None and task != own:
        raise ModelError(
            f"{path} is an exported single-task model{f' (task {own!r})' if own else ''}; "
            f"task={task!r} applies only to multi-task checkpoints"
        )
    return model


def read_model_dict(path: str | os.PathLike, task: str | None = None) -> dict[str, Any]:
    """The ``{"state_dict", "model_args"}`` model dict of a chgnet checkpoint
    (or a ``Trainer`` output); for a multi-task checkpoint that of ``task``,
    folded into a plain model (:func:`fold_task`).

    Raises:
        ModelError: unreadable file, a TorchScript export (no training
            weights), no model dict, a multi-task checkpoint without ``task``
            or ``task`` for a single-task one.
    """
    path = Path(path)
    if path.is_file() and is_torchscript(path):
        raise ModelError(f"{path} is an exported TorchScript model; this needs the chgnet checkpoint it came from")
    state = read_state(path)
    if not isinstance(state, dict):
        raise ModelError(f"{path} is not a chgnet checkpoint (a dict with a 'model' entry)")
    if is_multitask(state):
        if task is None:
            tasks = ", ".join(map(str, state["multitask"].get("tasks", [])))
            raise ModelError(f"{path} is a multi-task checkpoint (tasks: {tasks}); choose one with task=... (CLI: --task)")
        return fold_task(state, task, where=str(path))
    if task is not None:
        raise ModelError(f"{path} is a single-task chgnet checkpoint; task={task!r} applies only to multi-task checkpoints")
    model = state.get("model", state)
    if not isinstance(model, dict) or "state_dict" not in model or "model_args" not in model:
        raise ModelError(f"{path} is not a chgnet checkpoint: no 'model': {{'state_dict', 'model_args'}}")
    return model


#: value of ``checkpoint["multitask"]["format"]``
FORMAT = "crossfunctional-multitask-chgnet"
FORMAT_VERSION = 1


def is_multitask(state: Any) -> bool:
    """Whether a loaded checkpoint dict is a multi-task checkpoint."""
    return isinstance(state, dict) and isinstance(state.get("multitask"), dict)


def _mt(state: Mapping[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    mt = state["multitask"] if is_multitask(state) else state
    if not isinstance(mt, dict) or mt.get("format") != FORMAT:
        raise ModelError(f"{where} is not a crossfunctional multi-task checkpoint (format {FORMAT!r})")
    if int(mt.get("version", 0)) > FORMAT_VERSION:
        raise ModelError(f"{where}: multi-task format version {mt['version']} is newer than this code ({FORMAT_VERSION})")
    for key in ("tasks", "state_dict", "model_args", "task_bias", "atomref"):
        if key not in mt:
            raise ModelError(f"{where}: multi-task checkpoint lacks {key!r}")
    return mt


def task_index(tasks: Sequence[str], task: str, where: str = "model") -> int:
    """Index of ``task`` in ``tasks``.

    Raises:
        ModelError: unknown task; the message names the available tasks.
    """
    if task not in tasks:
        raise ModelError(f"unknown task {task!r} for {where}; available tasks: {', '.join(tasks)}")
    return list(tasks).index(task)


def _first_linear_bias_keys(sd: Mapping[str, torch.Tensor], prefix: str) -> tuple[str, str]:
    """State-dict keys of the first-layer biases of a chgnet GatedMLP's core and
    gate MLPs (``layers.0`` with a hidden layer, ``layers.1`` after the
    leading Dropout without one)."""
    for first in (0, 1):
        core = f"{prefix}.mlp_core.layers.{first}.bias"
        if core in sd:
            return core, f"{prefix}.mlp_gate.layers.{first}.bias"
    raise ModelError(f"no first-layer bias for the gated MLP {prefix!r} in the checkpoint")


def fold_task(state: Mapping[str, Any], task: str, where: str = "checkpoint") -> dict[str, Any]:
    """Fold one task of a multi-task checkpoint into a plain ``chgnet`` model dict.

    For every gated MLP with prefix p and bias block ``B = task_bias[p][t]``
    [2H]: ``p.mlp_core.<first>.bias += B[:H]``, ``p.mlp_gate.<first>.bias +=
    B[H:]``; ``composition_model.fc.weight`` [1, 94] becomes ``atomref[t]``.
    Exact (the bias enters only as that sum), so the plain model gives the
    multi-task model's numbers for ``task``.

    Args:
        state: a multi-task checkpoint (``{"multitask": {...}}``) or its inner dict.
        task: task name.
        where: file name for error messages.

    Returns:
        ``{"state_dict", "model_args", "task", "tasks", "source_task"}``: the
        first two form a ``chgnet`` checkpoint's ``"model"`` entry.

    Raises:
        ModelError: not a multi-task checkpoint, or an unknown task (the
            message names the available tasks).
    """
    mt = _mt(state, where)
    tasks = list(mt["tasks"])
    t = task_index(tasks, task, where)
    sd = {k: v.detach().clone() for k, v in mt["state_dict"].items()}
    for prefix, bias in mt["task_bias"].items():
        core, gate = _first_linear_bias_keys(sd, prefix)
        h = sd[core].shape[0]
        if bias.shape != (len(tasks), 2 * h):
            raise ModelError(f"{where}: task bias of {prefix} has shape {tuple(bias.shape)}, expected {(len(tasks), 2 * h)}")
        sd[core] = sd[core] + bias[t, :h].to(sd[core].dtype)
        sd[gate] = sd[gate] + bias[t, h:].to(sd[gate].dtype)
    atomref = mt["atomref"]
    if atomref.shape != (len(tasks), MAX_Z):
        raise ModelError(f"{where}: atomref has shape {tuple(atomref.shape)}, expected {(len(tasks), MAX_Z)}")
    sd["composition_model.fc.weight"] = atomref[t].reshape(1, MAX_Z).to(sd["composition_model.fc.weight"].dtype).clone()
    return {
        "state_dict": sd,
        "model_args": dict(mt["model_args"]),
        "task": task,
        "tasks": tasks,
        "source_task": mt.get("source_task"),
    }
