"""ASE calculator for the TorchScript CHGNet models of crossfunctional."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from crossfunctional.models import DEFAULT_MODEL, ModelError, load_model, model_metadata
from crossfunctional.neighbors import Edges, StructureError, neighbor_list

log = logging.getLogger(__name__)


def forces_and_virial(
    edge_index: torch.Tensor, edge_vectors: torch.Tensor, grad: torch.Tensor, num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forces and virial from g = dE/d(edge_vectors) (``DESIGN.md``).

    Args:
        edge_index: [2, E] int64, edges i -> j.
        edge_vectors: [E, 3] Å, r_j + S . cell - r_i.
        grad: [E, 3] eV/Å, dE/d(edge_vectors).
        num_nodes: N.

    Returns:
        forces [N, 3] eV/Å, F_i = Σ_j g_ij - Σ_j g_ji; and the virial [3, 3] eV,
        W = -Σ_e r_e ⊗ g_e, so that the stress (ASE sign, positive tensile) is -W / V.
    """
    forces = torch.zeros(num_nodes, 3, dtype=grad.dtype, device=grad.device)
    forces.index_add_(0, edge_index[0], grad).index_add_(0, edge_index[1], -grad)
    virial = -(edge_vectors.detach().t() @ grad)
    return forces, virial


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` as TorchScript, for evaluation under
    ``torch.jit.optimized_execution(False)``: the graph executor then runs the
    same kernels as the eager module (same numbers, no re-specialisation per
    graph size), without Python's overhead per operation (about 20% of the
    time on structures of a few atoms)."""
    if isinstance(model, torch.jit.ScriptModule):
        return model
    with warnings.catch_warnings():  # the project relies on TorchScript (export, LAMMPS) by design
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=DeprecationWarning)
        return torch.jit.script(model)


class CrossFunctionalCalculator(Calculator):
    """ASE calculator running a crossfunctional model (TorchScript CHGNet).

    Args:
        model: registered name (``"chgnet-r2scan"``, ``"chgnet-0.3.0"``), path to
            a ``chgnet`` checkpoint or an exported TorchScript file, or a loaded
            module with the model contract.
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: None (the model file's own precision: float32 for the shipped
            weights), ``"float32"`` or ``"float64"`` (for
            phonons and finite differences).
        task: the channel of a multi-task checkpoint (e.g. ``"r2scan"``),
            folded into a plain model (:func:`crossfunctional.models.load_model`).

    Properties, in ASE units: ``energy`` and ``free_energy`` (eV), ``forces``
    (eV/Å), ``stress`` (eV/Å³, Voigt order, positive tensile; only for fully
    periodic cells, otherwise ASE raises ``PropertyNotImplementedError``),
    ``magmoms`` (μB, non-negative as in CHGNet) and ``energies`` (site energies
    in eV, AtomRef included, summing to ``energy``).

    ``model`` is the module as loaded; ``runner`` the one evaluated: a model
    the calculator loads itself runs as TorchScript (:func:`compiled`), a
    module passed in runs as it is.

    Raises:
        crossfunctional.models.ModelError: unknown model or unreadable file; a
            multi-task checkpoint without ``task``, an unknown task (the message
            names the available ones), or ``task`` for a single-task model.
        crossfunctional.neighbors.StructureError: a structure the model cannot
            evaluate (unknown element, NaN, atoms closer than 0.5 Å, ...).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "magmoms", "energies"]

    def __init__(
        self,
        model: str | torch.nn.Module = DEFAULT_MODEL,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        task: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(model, torch.nn.Module):
            if task is not None:
                raise ModelError("task= selects the channel of a multi-task model file; a loaded module has one task already")
            self.model = model
            self.runner = model
        else:
            self.model = load_model(model, device=device, dtype=dtype, task=task)
            self.runner = compiled(self.model)
        param = next(iter(self.model.parameters()))
        self.device = param.device
        self.dtype = param.dtype
        self.cutoff = float(self.model.atom_graph_cutoff)
        self.metadata = model_metadata(self.model)

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        edges = neighbor_list(atoms, self.cutoff)
        n = len(atoms)
        isolated = n - np.unique(edges.edge_index[0]).size
        if isolated:
            log.warning("%d atom(s) have no neighbour within %.1f Å", isolated, self.cutoff)
        z, edge_index, shifts, vectors = edges.to_torch(self.device, self.dtype)
        with torch.enable_grad(), torch.jit.optimized_execution(False):
            site_energies, magmoms, grad = self.runner(z, edge_index, shifts, vectors, True)
        forces, virial = forces_and_virial(edge_index, vectors, grad, n)
        energies = site_energies.detach().cpu().double().numpy()
        energy = float(energies.sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": energies,
            "forces": forces.detach().cpu().double().numpy(),
            "magmoms": magmoms.detach().cpu().double().numpy(),
        }
        if atoms.pbc.all():
            stress = -virial.detach().cpu().double().numpy() / abs(atoms.get_volume())
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)


def predict_batch(
    structures: Sequence[Atoms],
    model: str | torch.nn.Module | CrossFunctionalCalculator = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    max_edges: int = 200_000,
) -> list[dict[str, np.ndarray | float]]:
    """Evaluate many independent structures as batched graphs.

    Structures are packed into one graph (node indices offset per structure)
    until ``max_edges`` directed edges are reached, so memory stays bounded.

    Args:
        structures: ASE Atoms, any mix of sizes and periodicities.
        model: a model name or file, a loaded module, or a
            :class:`CrossFunctionalCalculator` whose model is reused.
        device, dtype: as for the calculator (ignored when a module or
            calculator is passed).
        max_edges: upper bound on directed edges per packed graph.

    Returns:
        One dict per structure with the calculator's properties in ASE units:
        ``energy``, ``free_energy`` (eV), ``energies`` [n] eV, ``forces`` [n, 3]
        eV/Å, ``magmoms`` [n] μB and, for fully periodic cells, ``stress`` [6]
        eV/Å³ (Voigt, positive tensile).

    Raises:
        StructureError: as the calculator, naming the index of the structure.
    """
    if isinstance(model, CrossFunctionalCalculator):
        module = model.runner
    elif isinstance(model, torch.nn.Module):
        module = model
    else:
        module = compiled(load_model(model, device=device, dtype=dtype))
    param = next(iter(module.parameters()))
    cutoff = float(module.atom_graph_cutoff)
    edges = []
    for k, atoms in enumerate(structures):
        try:
            edges.append(neighbor_list(atoms, cutoff))
        except StructureError as exc:
            raise StructureError(f"structure {k}: {exc}") from None
    results: list[dict[str, np.ndarray | float]] = []
    start = 0
    while start < len(edges):
        stop, n_edges = start, 0
        while stop < len(edges) and (stop == start or n_edges + edges[stop].edge_index.shape[1] <= max_edges):
            n_edges += edges[stop].edge_index.shape[1]
            stop += 1
        results.extend(_evaluate_packed(module, structures[start:stop], edges[start:stop], param.device, param.dtype))
        start = stop
    return results


def _evaluate_packed(module, structures, edges, device, dtype) -> list[dict[str, np.ndarray | float]]:
    """One forward/backward pass over several structures packed into one graph."""
    n_atoms = [len(e.atomic_numbers) for e in edges]
    n_edges = [e.edge_index.shape[1] for e in edges]
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    packed = Edges(
        atomic_numbers=np.concatenate([e.atomic_numbers for e in edges]),
        edge_index=np.concatenate([e.edge_index + off for e, off in zip(edges, offsets)], axis=1),
        edge_shifts=np.concatenate([e.edge_shifts for e in edges]),
        edge_vectors=np.concatenate([e.edge_vectors for e in edges]),
    )
    z, edge_index, shifts, vectors = packed.to_torch(device, dtype)
    with torch.enable_grad(), torch.jit.optimized_execution(False):
        site_energies, magmoms, grad = module(z, edge_index, shifts, vectors, True)
    forces, _ = forces_and_virial(edge_index, vectors, grad, len(z))
    edge_owner = torch.repeat_interleave(torch.arange(len(edges), device=device), torch.tensor(n_edges, device=device))
    outer = -(vectors.detach().unsqueeze(2) * grad.unsqueeze(1))  # [E, 3, 3]
    virials = torch.zeros(len(edges), 3, 3, dtype=grad.dtype, device=device).index_add_(0, edge_owner, outer)
    site = site_energies.detach().cpu().double().numpy()
    f = forces.detach().cpu().double().numpy()
    m = magmoms.detach().cpu().double().numpy()
    w = virials.detach().cpu().double().numpy()
    out = []
    for k, atoms in enumerate(structures):
        sl = slice(offsets[k], offsets[k] + n_atoms[k])
        energy = float(site[sl].sum())
        res = {"energy": energy, "free_energy": energy, "energies": site[sl], "forces": f[sl], "magmoms": m[sl]}
        if atoms.pbc.all():
            res["stress"] = full_3x3_to_voigt_6_stress(-w[k] / abs(atoms.get_volume()))
        out.append(res)
    return out
