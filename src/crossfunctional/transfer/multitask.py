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
import copy
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossfunctional.io import atomic_path, atomic_write
from crossfunctional.models.chgnet import MAX_Z
from crossfunctional.models.loading import ModelError
from crossfunctional.transfer.data import LabelledStructure, TransferDataError, check_records, split_records

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

#: value of ``checkpoint["multitask"]["format"]``
FORMAT = "crossfunctional-multitask-chgnet"
FORMAT_VERSION = 1
_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]*$")
_KEYS = "efsm"


# ====================================================================== checkpoint format
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


def _read(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except Exception as exc:
        raise ModelError(f"cannot read {path} with weights_only=True: {str(exc).splitlines()[0]}") from None
    return state


# ====================================================================== the model
class _TaskBiasHook:
    """Forward hook on a first linear layer: adds the rows' task biases.

    A callable object (not a closure), so ``copy.deepcopy`` of the owning
    model re-points it at the copy."""

    def __init__(self, owner: MultiTaskCHGNet, index: int, part: int, rows: str) -> None:
        self.owner, self.index, self.part, self.rows = owner, index, part, rows

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        rows = self.owner._rows
        if rows is None:
            raise RuntimeError("the shared CHGNet of a MultiTaskCHGNet must be called through MultiTaskCHGNet.forward (it needs a task)")
        h = output.shape[-1]
        bias = self.owner.task_bias[self.index][:, self.part * h : (self.part + 1) * h]
        return output + bias.index_select(0, rows[self.rows])


class MultiTaskCHGNet(nn.Module):
    """An upstream ``chgnet.model.CHGNet`` (shared parameters) with per-task
    AtomRef and per-task first-layer biases in every gated MLP (module docstring).

    Args:
        base: upstream CHGNet; its weights become the shared parameters (the
            module is used, not copied). Its ``composition_model`` is not used
            in the forward pass (the per-task AtomRef replaces it) and is frozen.
        tasks: task names (letters, digits, ``_ . + -``; first a letter), unique.
        atomref: [T, 94] eV/atom; default: the base's AtomRef for every task.
        source_task: the task the base model was trained on (default ``tasks[0]``).

    Attributes:
        tasks: list of task names, index = task id.
        atomref: Parameter [T, 94] eV/atom (frozen unless set trainable).
        task_bias: ParameterList of [T, 2H] per gated MLP, in the order of
            ``bias_prefixes`` (upstream state-dict prefixes).

    Raises:
        ModelError: bad task names or an AtomRef of the wrong shape.
    """

    def __init__(
        self,
        base: nn.Module,
        tasks: Sequence[str],
        atomref: torch.Tensor | np.ndarray | None = None,
        source_task: str | None = None,
    ) -> None:
        super().__init__()
        tasks = list(tasks)
        _check_task_names(tasks)
        if not getattr(base, "is_intensive", True) or getattr(base, "composition_model", None) is None:
            raise ModelError("the base CHGNet must be intensive and have an AtomRef composition model")
        self.base = base
        self.tasks = tasks
        self.source_task = source_task or tasks[0]
        task_index(tasks, self.source_task, "the multi-task model (source_task)")
        weight = base.composition_model.fc.weight
        weight.requires_grad_(False)
        if atomref is None:
            atomref = weight.detach().reshape(1, MAX_Z).repeat(len(tasks), 1)
        atomref = torch.as_tensor(atomref, dtype=weight.dtype).clone()
        if atomref.shape != (len(tasks), MAX_Z):
            raise ModelError(f"atomref must have shape ({len(tasks)}, {MAX_Z}), got {tuple(atomref.shape)}")
        self.atomref = nn.Parameter(atomref, requires_grad=False)
        self.bias_prefixes: list[str] = []
        self.task_bias = nn.ParameterList()
        self._rows: dict[str, torch.Tensor] | None = None
        for prefix, gmlp, rows in _gated_mlps(base):
            core = next(m for m in gmlp.mlp_core.layers if isinstance(m, nn.Linear))
            gate = next(m for m in gmlp.mlp_gate.layers if isinstance(m, nn.Linear))
            index = len(self.bias_prefixes)
            self.bias_prefixes.append(prefix)
            self.task_bias.append(nn.Parameter(torch.zeros(len(tasks), 2 * core.out_features, dtype=weight.dtype)))
            core.register_forward_hook(_TaskBiasHook(self, index, 0, rows))
            gate.register_forward_hook(_TaskBiasHook(self, index, 1, rows))

    # ------------------------------------------------------------ construction
    @classmethod
    def upgrade(cls, base: Any, tasks: Sequence[str], source_task: str | None = None) -> MultiTaskCHGNet:
        """A multi-task model from a single-task one: zero task biases and the
        source AtomRef for every task, so every task (the original one in
        particular) predicts exactly what ``base`` predicts.

        Args:
            base: registered name, chgnet checkpoint path, or an upstream
                ``chgnet.model.CHGNet`` (deep-copied).
            tasks: task names; ``source_task`` (default ``tasks[0]``) is the
                functional ``base`` was trained on.

        Raises:
            ModelError: unreadable base, bad task names.
        """
        if isinstance(base, nn.Module):
            model = copy.deepcopy(base)
        else:
            from crossfunctional.transfer.finetune import load_upstream

            model, _ = load_upstream(base)
        return cls(model, tasks, source_task=source_task)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], where: str = "checkpoint") -> MultiTaskCHGNet:
        """Rebuild from :meth:`state` (or a checkpoint holding it under ``"multitask"``).

        Raises:
            ModelError: not a multi-task checkpoint or inconsistent contents.
        """
        from chgnet.model import CHGNet as UpstreamCHGNet

        mt = _mt(state, where)
        with contextlib.redirect_stdout(io.StringIO()):
            base = UpstreamCHGNet(**mt["model_args"])
        try:
            base.load_state_dict(mt["state_dict"])
        except RuntimeError as exc:
            raise ModelError(f"{where}: shared weights do not fit the CHGNet architecture: {exc}") from None
        model = cls(base, mt["tasks"], atomref=mt["atomref"], source_task=mt.get("source_task"))
        if list(mt["task_bias"]) != model.bias_prefixes:
            raise ModelError(f"{where}: task biases are for {list(mt['task_bias'])}, the model has {model.bias_prefixes}")
        with torch.no_grad():
            for param, prefix in zip(model.task_bias, model.bias_prefixes):
                value = mt["task_bias"][prefix]
                if value.shape != param.shape:
                    raise ModelError(f"{where}: task bias of {prefix} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
                param.copy_(value)
        return model

    @classmethod
    def load(cls, path: str | os.PathLike) -> MultiTaskCHGNet:
        """Read a multi-task checkpoint (``best_model.pth.tar``, ``last.pth.tar``)
        with ``weights_only=True``.

        Raises:
            ModelError: missing file, or not a multi-task checkpoint.
        """
        state = _read(path)
        if not is_multitask(state):
            raise ModelError(f"{path} is not a multi-task checkpoint (a single-task chgnet model? use MultiTaskCHGNet.upgrade)")
        return cls.from_state(state, where=str(path))

    def state(self) -> dict[str, Any]:
        """The checkpoint contents (CPU tensors, a copy)::

            {"format": FORMAT, "version": 1, "tasks": [T names], "source_task": str,
             "model_args": chgnet model args, "state_dict": upstream CHGNet state dict,
             "task_bias": {gated-MLP prefix: [T, 2H]}, "atomref": [T, 94] eV/atom}
        """
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "tasks": list(self.tasks),
            "source_task": self.source_task,
            "model_args": dict(self.base.model_args),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.base.state_dict().items()},
            "task_bias": {p: b.detach().cpu().clone() for p, b in zip(self.bias_prefixes, self.task_bias)},
            "atomref": self.atomref.detach().cpu().clone(),
        }

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write ``{"multitask": self.state(), **extra}`` atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save({"multitask": self.state(), **extra}, tmp)
        return path

    def fold(self, task: str) -> dict[str, Any]:
        """Plain chgnet model dict of one task (:func:`fold_task`)."""
        return fold_task({"multitask": self.state()}, task, "the multi-task model")

    def task_model(self, task: str) -> Any:
        """An upstream ``chgnet.model.CHGNet`` running ``task`` (folded)."""
        from chgnet.model import CHGNet as UpstreamCHGNet

        folded = self.fold(task)
        with contextlib.redirect_stdout(io.StringIO()):
            model = UpstreamCHGNet(**folded["model_args"])
        model.load_state_dict(folded["state_dict"])
        return model.to(dtype=self.atomref.dtype)

    def task_id(self, task: str) -> int:
        """Index of ``task`` (ModelError naming the tasks if unknown)."""
        return task_index(self.tasks, task, "the multi-task model")

    # ------------------------------------------------------------ prediction
    def graph(self, structure: Any) -> Any:
        """chgnet CrystalGraph of a pymatgen Structure, coordinates in the
        model's dtype (float64 graphs for a float64 model)."""
        graph = self.base.graph_converter(structure)
        dtype = self.atomref.dtype
        if dtype != torch.float32:
            graph.atom_frac_coord = torch.tensor(structure.frac_coords, dtype=dtype, requires_grad=True)
            graph.lattice = torch.tensor(structure.lattice.matrix, dtype=dtype, requires_grad=True)
            graph.neighbor_image = graph.neighbor_image.to(dtype)
        return graph

    def forward(self, graphs: Sequence[Any], task_ids: torch.Tensor | Sequence[int] | int, targets: str = "e") -> dict[str, Any]:
        """Predict a batch of chgnet CrystalGraphs, each with its task.

        Args:
            graphs: B chgnet CrystalGraphs.
            task_ids: [B] int task indices (or one int for all).
            targets: subset of "efsm" to compute.

        Returns:
            ``{"e": [B] eV/atom, "f": B x [N_b, 3] eV/Å, "s": B x [3, 3] GPa
            (ASE sign, positive tensile), "m": B x [N_b] μB (non-negative)}``
            for the requested targets; forces and stress keep the autograd
            graph (create_graph=True, as chgnet's trainer needs).

        Raises:
            ModelError: a task id out of range.
        """
        from chgnet.model.model import BatchedGraph

        device = self.atomref.device
        ids = torch.as_tensor(task_ids, dtype=torch.long, device=device).reshape(-1)
        if ids.numel() == 1 and len(graphs) > 1:
            ids = ids.expand(len(graphs))
        if ids.numel() != len(graphs):
            raise ValueError(f"{ids.numel()} task ids for {len(graphs)} graphs")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.tasks)):
            raise ModelError(f"task id out of range 0..{len(self.tasks) - 1} (tasks: {', '.join(self.tasks)})")
        g = BatchedGraph.from_graphs(
            graphs,
            bond_basis_expansion=self.base.bond_basis_expansion,
            angle_basis_expansion=self.base.angle_basis_expansion,
            compute_stress="s" in targets,
        )
        if bool((ids == ids[0]).all()):
            rows = {"atom": ids[:1], "bond": ids[:1]}  # one task: the bias row broadcasts
        else:
            atom_task = ids.index_select(0, g.atom_owners.long())
            bond_graph = g.batched_bond_graph
            rows = {
                "atom": atom_task.index_select(0, g.batched_atom_graph[:, 0].long()),
                "bond": atom_task.index_select(0, bond_graph[:, 0].long()) if bond_graph.numel() else ids[:0],
            }
        self._rows = rows
        try:
            pred = self.base._compute(
                g, compute_force="f" in targets, compute_stress="s" in targets, compute_magmom="m" in targets
            )
        finally:
            self._rows = None
        comp = torch.stack(
            [torch.bincount(gr.atomic_number.long() - 1, minlength=MAX_Z).to(self.atomref.dtype) / gr.atomic_number.shape[0] for gr in graphs]
        )
        pred["e"] = pred["e"] + (comp * self.atomref.index_select(0, ids)).sum(dim=1)
        return pred

    def bias_l2(self) -> torch.Tensor:
        """Σ_l ||task_bias[l]||² over all tasks (the selective L2 term without λ_T)."""
        return sum((b * b).sum() for b in self.task_bias)

    def bias_norms(self) -> dict[str, float]:
        """L2 norm of each task's biases (all gated MLPs together)."""
        sq = sum((b.detach() ** 2).sum(dim=1) for b in self.task_bias)
        return {t: float(v) ** 0.5 for t, v in zip(self.tasks, sq)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """θ_C: the upstream network's trainable weights (its AtomRef excluded)."""
        return [p for n, p in self.base.named_parameters() if not n.startswith("composition_model")]


def _check_task_names(tasks: Sequence[str]) -> None:
    if not tasks:
        raise ModelError("a multi-task model needs at least one task name")
    for t in tasks:
        if not isinstance(t, str) or not _TASK_NAME.match(t):
            raise ModelError(f"bad task name {t!r}: use letters, digits, '_', '.', '+', '-', starting with a letter")
    dup = sorted({t for t in tasks if list(tasks).count(t) > 1})
    if dup:
        raise ModelError(f"task names must be unique, repeated: {', '.join(dup)}")


def _gated_mlps(base: nn.Module):
    """(state-dict prefix, GatedMLP, row kind) of every gated MLP in the atom,
    bond and angle convolutions. Atom-convolution rows are atom-graph edges
    (task of the centre atom ``atom_graph[:, 0]``); bond and angle rows are
    angles (task of the centre atom ``bond_graph[:, 0]``)."""
    for i, layer in enumerate(base.atom_conv_layers):
        yield f"atom_conv_layers.{i}.twoBody_atom", layer.twoBody_atom, "atom"
    for name in ("bond_conv_layers", "angle_layers"):
        for i, layer in enumerate(getattr(base, name) or []):
            if layer is not None:
                yield f"{name}.{i}.twoBody_bond", layer.twoBody_bond, "bond"


# ====================================================================== data
def read_bridge(path: str | os.PathLike, tasks: Sequence[str]) -> dict[str, list[LabelledStructure]]:
    """Read a domain-bridging set: an extended XYZ file whose frames carry the
    labels of several tasks as ``energy_<task>`` (info, eV), ``forces_<task>``
    (arrays, [N, 3] eV/Å), ``stress_<task>`` (info, 6 Voigt components or 3x3,
    eV/Å³, positive tensile) and ``magmoms_<task>`` (arrays, μB); ``material_id``
    in the info groups frames (as :func:`~crossfunctional.transfer.data.read_extxyz`).

    Returns:
        {task: records}, one record per (frame, task) with that task's labels.

    Raises:
        InputFileError: missing or unreadable file.
        TransferDataError: a frame with labels of fewer than two tasks, or
            labels of a task not in ``tasks``.
    """
    from crossfunctional.io import read_structures
    from crossfunctional.transfer.data import read_extxyz

    path = Path(path)
    frames = read_structures(path)
    for k, atoms in enumerate(frames):
        named = {key.split("_", 1)[1] for key in list(atoms.info) + list(atoms.arrays) if key.startswith("energy_")}
        unknown = sorted(named - set(tasks))
        if unknown:
            raise TransferDataError(f"{path.name}:{k}: labels of unknown task(s) {', '.join(unknown)}; tasks: {', '.join(tasks)}")
        if len(named) < 2:
            raise TransferDataError(
                f"{path.name}:{k}: a bridge structure needs energy labels of at least two tasks "
                f"(energy_<task> in the frame info), found {sorted(named) or 'none'}"
            )
    out: dict[str, list[LabelledStructure]] = {}
    for task in tasks:
        recs = read_extxyz(path, energy_key=f"energy_{task}", forces_key=f"forces_{task}",
                           stress_key=f"stress_{task}", magmoms_key=f"magmoms_{task}")
        recs = [r for r in recs if r.energy is not None]
        if recs:
            out[task] = recs
    return out


def write_bridge(bridge: Mapping[str, Sequence[LabelledStructure]], path: str | os.PathLike) -> Path:
    """Write {task: records} as one extended XYZ file (:func:`read_bridge`'s
    layout); records of the same structure (same material id and positions)
    share a frame. Written atomically."""
    from ase.io import write

    frames: dict[str, Any] = {}
    for task, recs in bridge.items():
        for rec in recs:
            key = _structure_key(rec)
            if key not in frames:
                atoms = rec.atoms()
                atoms.info["material_id"] = rec.material_id
                frames[key] = atoms
            atoms = frames[key]
            atoms.info[f"energy_{task}"] = float(rec.energy)
            if rec.forces is not None:
                atoms.arrays[f"forces_{task}"] = np.asarray(rec.forces, dtype=float)
            if rec.stress is not None:
                s = np.asarray(rec.stress)
                atoms.info[f"stress_{task}"] = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            if rec.magmoms is not None:
                atoms.arrays[f"magmoms_{task}"] = np.asarray(rec.magmoms, dtype=float)
    path = Path(path)
    with atomic_path(path) as tmp:
        write(tmp, list(frames.values()), format="extxyz")
    return path


def _structure_key(rec: LabelledStructure) -> str:
    s = rec.structure
    h = hashlib.sha256()
    h.update(np.asarray(rec.atomic_numbers).tobytes())
    h.update(np.round(s.lattice.matrix, 6).tobytes())
    h.update(np.round(s.cart_coords, 5).tobytes())
    return h.hexdigest()[:20]


@dataclass
class _Entry:
    """One (structure, task) training or validation entry, labels in chgnet units."""

    graph: int  # index into the graph list
    task: int
    weight: float
    n_atoms: int
    energy: float  # eV/atom
    forces: torch.Tensor | None  # [N, 3] eV/Å
    stress: torch.Tensor | None  # [3, 3] GPa, positive tensile
    magmoms: torch.Tensor | None  # [N] μB, |label|
    bridge: bool = False


class _Graphs:
    """chgnet graphs built once per distinct structure (bridge structures
    share theirs across tasks)."""

    def __init__(self, model: MultiTaskCHGNet) -> None:
        self.model, self.graphs, self.index = model, [], {}

    def add(self, rec: LabelledStructure, where: str) -> int:
        key = _structure_key(rec)
        if key not in self.index:
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    graph = self.model.graph(rec.structure)
            except Exception as exc:
                raise TransferDataError(
                    f"{where}: chgnet cannot build a graph for {rec.source or rec.material_id} "
                    f"({rec.structure.composition.reduced_formula}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                ) from None
            self.index[key] = len(self.graphs)
            self.graphs.append(graph)
        return self.index[key]


def _entries(records, task: int, weight: float, targets: str, graphs: _Graphs, where: str, dtype, bridge=False) -> list[_Entry]:
    from ase import units

    out = []
    for rec in records:
        out.append(
            _Entry(
                graph=graphs.add(rec, where),
                task=task,
                weight=weight,
                n_atoms=rec.n_atoms,
                energy=rec.energy_per_atom,
                forces=None if "f" not in targets or rec.forces is None else torch.as_tensor(np.asarray(rec.forces), dtype=dtype),
                stress=None if "s" not in targets or rec.stress is None else torch.as_tensor(np.asarray(rec.stress) / units.GPa, dtype=dtype),
                magmoms=None if "m" not in targets or rec.magmoms is None else torch.as_tensor(np.abs(np.asarray(rec.magmoms)), dtype=dtype),
                bridge=bridge,
            )
        )
    return out


# ====================================================================== configuration
@dataclass
class MultiTaskConfig:
    """Training settings.

    Attributes:
        epochs, batch_size: 50 and 64 (Huang et al. 2025's fine-tuning).
        learning_rate, final_learning_rate: Adam, cosine decay per step from
            1e-3 to 1e-5.
        loss: "Huber" (δ = ``huber_delta`` 0.1, chgnet's), "MSE" or "MAE".
        energy_weight, force_weight, stress_weight, magmom_weight: λ_e:λ_f:λ_s:λ_m
            = 3 : 1 : 0.1 : 1 (issue 6's defaults, the paper's).
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
        allow_rank_deficient: for atomref_fit="labels", accept rank-deficient data.
        targets: restrict the trained labels (e.g. "ef"); None: all present.
        val_fraction: share of each task's data held out for validation when
            no validation data are given (split by material id).
        best_task: choose ``best_model.pth.tar`` by this task's validation
            score only (default None: all tasks, weighted by task_weights).
        seed: initialisation-free here (weights come from the base); seeds the
            batch order and the validation split.
        device: torch device.
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
    task_weights: dict[str, float] = field(default_factory=dict)
    bias_l2: float = 0.0
    task_lr_factor: float = 300.0
    bridge_weight: float = 1.0
    atomref_fit: str = "residual"
    train_atomref: bool = False
    allow_rank_deficient: bool = False
    targets: str | None = None
    val_fraction: float = 0.1
    best_task: str | None = None
    seed: int = 0
    device: str = "cpu"

    def check(self, tasks: Sequence[str]) -> None:
        """Raises ValueError naming a setting that cannot be used."""
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not (self.learning_rate > 0 and 0 < self.final_learning_rate <= self.learning_rate):
            raise ValueError(f"need 0 < final_learning_rate <= learning_rate, got {self.final_learning_rate}, {self.learning_rate}")
        if self.loss not in ("Huber", "MSE", "MAE"):
            raise ValueError(f"loss must be Huber, MSE or MAE, got {self.loss!r}")
        if not self.task_lr_factor > 0:
            raise ValueError(f"task_lr_factor must be > 0, got {self.task_lr_factor}")
        for name in ("energy_weight", "force_weight", "stress_weight", "magmom_weight", "bias_l2", "bridge_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        unknown = sorted(set(self.task_weights) - set(tasks))
        if unknown:
            raise ValueError(f"task_weights for unknown task(s) {', '.join(unknown)}; tasks: {', '.join(tasks)}")
        if any(not w >= 0 for w in self.task_weights.values()):
            raise ValueError(f"task weights must be >= 0, got {self.task_weights}")
        if self.atomref_fit not in ("residual", "labels", "source"):
            raise ValueError(f"atomref_fit must be residual, labels or source, got {self.atomref_fit!r}")
        if self.targets is not None and (not self.targets.startswith("e") or set(self.targets) - set(_KEYS)):
            raise ValueError(f"targets must start with 'e' and use only e, f, s, m; got {self.targets!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.best_task is not None and self.best_task not in tasks:
            raise ValueError(f"best_task {self.best_task!r} is not a task; tasks: {', '.join(tasks)}")

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


def _fingerprint(*groups: Mapping[str, Sequence[LabelledStructure]]) -> str:
    h = hashlib.sha256()
    for group in groups:
        h.update(b"|")
        for task in sorted(group):
            h.update(task.encode())
            for r in group[task]:
                h.update(f"{r.material_id}:{r.n_atoms}:{r.energy:.8f};".encode())
    return h.hexdigest()[:16]


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


def _write_history(path: Path, rows: list[dict[str, float]], cols: list[str]) -> None:
    with atomic_write(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({c: row.get(c, "") for c in cols})


def plot_history(rows: list[dict[str, float]], tasks: list[str], targets: dict[str, str], path: str | os.PathLike, title: str = "") -> Path:
    """Training curves: one panel per label kind (train dashed, validation
    solid, one colour per task, log scale), and the norm of each task's biases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = {"e": "energy MAE (eV/atom)", "f": "force MAE (eV/Å)", "s": "stress MAE (GPa)", "m": "magmom MAE (μB)"}
    keys = [k for k in _KEYS if any(k in targets[t] for t in tasks)]
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(3.6 * (len(keys) + 1), 3.3), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys):
        for t, task in enumerate(tasks):
            for split, style in (("train", "--"), ("val", "-")):
                pts = [(r["epoch"], r.get(f"{split}_{task}_{key}", float("nan"))) for r in rows]
                pts = [(x, y) for x, y in pts if np.isfinite(y) and y > 0]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", ms=2.5, color=colours[t % len(colours)], label=f"{task} {split}")
        ax.set_xlabel("epoch (0 = before training)")
        ax.set_ylabel(units[key])
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    for t, task in enumerate(tasks):
        pts = [(r["epoch"], r.get(f"bias_norm_{task}", float("nan"))) for r in rows]
        pts = [(x, y) for x, y in pts if np.isfinite(y)]
        if pts:
            ax.plot(*zip(*pts), "-o", ms=2.5, color=colours[t % len(colours)], label=task)
    ax.set_xlabel("epoch")
    ax.set_ylabel("‖task biases‖₂")
    ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


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
    config = copy.deepcopy(config) if config is not None else MultiTaskConfig()
    for key, value in overrides.items():
        if key not in {f.name for f in fields(MultiTaskConfig)}:
            raise TypeError(f"train_multitask() got an unknown setting {key!r}")
        setattr(config, key, value)
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
        "data": _fingerprint(train, val_d, bridge),
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
    if isinstance(base, (str, os.PathLike)) and Path(base).is_file() and is_multitask(_read(base)):
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
        resume_state = torch.load(last_path, map_location="cpu", weights_only=True)
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
        _write_history(out / "history.csv", history, cols)

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
        _write_history(out / "history.csv", history, cols)
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
    state = torch.load(out / "checkpoints" / "last.pth.tar", map_location="cpu", weights_only=True)
    tr = state["training"]
    history = [dict(r) for r in tr["history"]]
    tasks, targets = settings["tasks"], settings["targets"]
    best_row = next(r for r in history if r["epoch"] == int(tr["best_epoch"]))
    return MultiTaskResult(
        output_dir=out, best_checkpoint=out / "best_model.pth.tar", last_checkpoint=out / "checkpoints" / "last.pth.tar",
        tasks=tasks, source_task=settings["source_task"], targets=targets, history=history, best_epoch=int(tr["best_epoch"]),
        metrics=_metrics(best_row, tasks, targets), atomref_notes=tr["atomref_notes"], resumed_from_epoch=int(tr["epoch"]),
    )
