"""Data of multi-task training: the domain-bridging set (structures labelled
by more than one task, extended XYZ with ``energy_<task>``, ``forces_<task>``,
``stress_<task>``), and the per-task training entries and their cached graphs."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from crossfunctional.io import atomic_path
from crossfunctional.transfer.data import LabelledStructure, TransferDataError

if TYPE_CHECKING:
    from crossfunctional.transfer.multitask_model import MultiTaskCHGNet

_KEYS = "efsm"


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


