"""Many relaxations at once: one packed graph per optimizer step.

:func:`relax_many` drives torch-sim's batched FIRE with the Fréchet cell
filter (``torch_sim.frechet_cell_fire``, ASE's FIRE flavour and defaults) and
its :class:`torch_sim.InFlightAutoBatcher`, with our model behind torch-sim's
model interface (:class:`TorchSimModel`). Every structure keeps its own FIRE
and cell-filter state, its own step cap and its own convergence test (the
largest norm over the atomic forces and the filter's cell rows below
``fmax``, as :func:`crossfunctional.workflows.relax` with
``FrechetCellFilter``), and leaves the batch as soon as it is done; new
structures take its place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ase import Atoms

from crossfunctional.errors import WorkflowError
from crossfunctional.io import as_atoms
from crossfunctional.workflows.relax import RelaxResult

__all__ = ["TorchSimModel", "relax_many"]

log = logging.getLogger(__name__)


def _model_interface():
    from torch_sim.models.interface import ModelInterface

    return ModelInterface


class TorchSimModel(torch.nn.Module):
    """Our model behind torch-sim's ``ModelInterface`` (energies [n_systems] eV,
    forces [n_atoms, 3] eV/Å, stress [n_systems, 3, 3] eV/Å³ with ASE's sign).

    The graph of every system is built with our neighbour list and all systems
    are evaluated as one packed graph (:func:`crossfunctional.calculators.predict_batch`).

    Args:
        calculator: a :class:`~crossfunctional.calculators.CrossFunctionalCalculator`
            whose model runs.
    """

    def __init__(self, calculator) -> None:
        super().__init__()
        self.calculator = calculator
        self._device = calculator.device
        self._dtype = calculator.dtype
        self._compute_stress = True
        self._compute_forces = True
        self._memory_scales_with = "n_atoms"

    device = property(lambda self: self._device)
    dtype = property(lambda self: self._dtype)
    compute_stress = property(lambda self: self._compute_stress)
    compute_forces = property(lambda self: self._compute_forces)
    memory_scales_with = property(lambda self: self._memory_scales_with)

    def forward(self, state: Any, **kwargs) -> dict[str, torch.Tensor]:
        from ase.stress import voigt_6_to_full_3x3_stress

        cells = state.row_vector_cell.detach().cpu().double().numpy()
        positions = state.positions.detach().cpu().double().numpy()
        numbers = state.atomic_numbers.detach().cpu().numpy()
        system = state.system_idx.detach().cpu().numpy()
        frames = [
            Atoms(numbers=numbers[system == k], positions=positions[system == k], cell=cells[k], pbc=True)
            for k in range(cells.shape[0])
        ]
        results = self.calculator.predict_batch(frames)
        kw = {"device": state.positions.device, "dtype": state.positions.dtype}
        return {
            "energy": torch.tensor([r["energy"] for r in results], **kw),
            "forces": torch.tensor(np.concatenate([r["forces"] for r in results]), **kw),
            "stress": torch.tensor(np.stack([voigt_6_to_full_3x3_stress(r["stress"]) for r in results]), **kw),
        }


def _system_fmax(state) -> torch.Tensor:
    """[n_systems] largest norm over the atomic forces and the cell-filter rows (eV/Å)."""
    norms = state.forces.norm(dim=1)
    n = state.n_systems
    atom_max = torch.zeros(n, dtype=norms.dtype, device=norms.device).scatter_reduce(
        0, state.system_idx, norms, reduce="amax", include_self=True
    )
    cell_max = state.cell_forces.norm(dim=2).max(dim=1).values
    return torch.maximum(atom_max, cell_max)


def relax_many(
    structures: Sequence[Any],
    model: str | torch.nn.Module = "chgnet-r2scan",
    calculator=None,
    fmax: float = 0.02,
    steps: int = 500,
    device: str = "cpu",
    dtype: str | None = "float32",
    max_atoms_per_batch: int = 2_000,
    progress: bool = False,
    on_result: Callable[[int, RelaxResult], None] | None = None,
) -> list[RelaxResult]:
    """Relax positions and cells of many structures at once (FIRE with the
    Fréchet cell filter, ASE's FIRE parameters), each to its own ``fmax``
    within its own ``steps``.

    Args:
        structures: ASE Atoms or pymatgen Structures, fully periodic.
        model, device, dtype: the model for a calculator made here (ignored
            with ``calculator``).
        calculator: a :class:`~crossfunctional.calculators.CrossFunctionalCalculator`
            to reuse.
        fmax: convergence threshold, eV/Å, on the atomic forces and the cell
            filter's rows (virial / N), as :func:`~crossfunctional.workflows.relax`.
        steps: the most FIRE steps a structure may take.
        max_atoms_per_batch: atoms evaluated together at most (memory bound).
        progress: a tqdm bar of finished structures.
        on_result: called with (input index, result) as each structure
            leaves the batch (to save results as they come).

    Returns:
        One :class:`~crossfunctional.workflows.relax.RelaxResult` per input, in
        input order (``trajectory`` None).

    Raises:
        crossfunctional.errors.WorkflowError: no structures, a structure that is
            not periodic in all three directions, ``fmax`` <= 0 or negative ``steps``.
    """
    import torch_sim as ts

    from crossfunctional.calculators import CrossFunctionalCalculator

    frames = [as_atoms(s) for s in structures]
    if not frames:
        raise WorkflowError("relax_many needs at least one structure")
    for k, atoms in enumerate(frames):
        if len(atoms) == 0 or not atoms.pbc.all():
            raise WorkflowError(f"structure {k} must be non-empty and periodic in all three directions (cell relaxation)")
    if not fmax > 0:
        raise WorkflowError(f"fmax must be a positive force in eV/Å, got {fmax!r}")
    if int(steps) != steps or steps < 0:
        raise WorkflowError(f"steps must be a non-negative integer, got {steps!r}")
    calc = calculator if calculator is not None else CrossFunctionalCalculator(model=model, device=device, dtype=dtype)
    tsmodel = TorchSimModel(calc)
    init_fn, update_fn = ts.frechet_cell_fire(model=tsmodel, md_flavor="ase_fire")
    state = init_fn(ts.initialize_state(frames, tsmodel.device, tsmodel.dtype))
    batcher = ts.InFlightAutoBatcher(
        model=tsmodel, memory_scales_with="n_atoms", max_memory_scaler=max(max_atoms_per_batch, max(len(a) for a in frames)),
        return_indices=True,
    )
    batcher.load_states(state)
    n = len(frames)
    steps_done = np.zeros(n, dtype=int)
    out: list[RelaxResult | None] = [None] * n
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="relax", unit="structure")
    current, _, idx = batcher.next_batch(None, None)
    while current is not None:
        sys_fmax = _system_fmax(current).detach().cpu().numpy()
        idx_arr = np.asarray(idx, dtype=int)
        converged = sys_fmax < fmax
        leave = converged | (steps_done[idx_arr] >= steps)
        if leave.any():
            positions = current.positions.detach().cpu().double().numpy()
            cells = current.row_vector_cell.detach().cpu().double().numpy()
            system = current.system_idx.detach().cpu().numpy()
            energies = current.energy.detach().cpu().double().numpy()
            for j in np.flatnonzero(leave):
                i = int(idx_arr[j])
                atoms = frames[i].copy()
                atoms.set_cell(cells[j], scale_atoms=False)
                atoms.positions = positions[system == j]
                atoms.calc = calc
                out[i] = RelaxResult(atoms=atoms, energy=float(energies[j]), converged=bool(converged[j]),
                                     steps=int(steps_done[i]), fmax=float(sys_fmax[j]))
                if on_result is not None:
                    on_result(i, out[i])
            if bar is not None:
                bar.update(int(leave.sum()))
            current, _, idx = batcher.next_batch(current, torch.as_tensor(leave))
            continue
        current = update_fn(current)
        steps_done[idx_arr] += 1
    if bar is not None:
        bar.close()
    return out  # type: ignore[return-value]
