"""The multi-task CHGNet (Kim et al. 2025): an upstream CHGNet whose
parameters are shared by all tasks, plus per-task AtomRef [T, 94] and per-task
first-layer biases of every gated MLP (the format and the folding of one task
into a plain model are in :mod:`crossfunctional.models.checkpoints`; training
in :mod:`crossfunctional.transfer.multitask`)."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossfunctional.models.chgnet import MAX_Z
from crossfunctional.models.checkpoints import FORMAT, FORMAT_VERSION, ModelError, _mt, fold_task, is_multitask, read_state, task_index

_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]*$")


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
        state = read_state(path)
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
        """Write ``{"multitask": self.state(), **extra}`` atomically (synced to disk, then renamed)."""
        from crossfunctional.transfer.run import save_checkpoint

        return save_checkpoint({"multitask": self.state(), **extra}, path)

    def fold(self, task: str) -> dict[str, Any]:
        """Plain chgnet model dict of one task (:func:`fold_task`)."""
        return fold_task({"multitask": self.state()}, task, "the multi-task model")

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


