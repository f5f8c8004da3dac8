"""The segment API of CHGNet with an emulated ghost exchange (no MPI, no
LAMMPS): two slab-shaped pseudo-ranks of a periodic cell, each with its local
atoms and the periodic images within a ghost cutoff as separate nodes,
driven segment by segment as the LAMMPS pair style does (forward exchange of
the atom features after each segment, reverse exchange of their adjoints in
the segment-by-segment backward pass). Energy and forces must equal the
model's own periodic evaluation; a ghost cutoff below the short-bond halo
must not (so the check is not vacuous)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase.build import bulk

from crossfunctional.models import load_model
from crossfunctional.neighbors import neighbor_list


@pytest.fixture(scope="module")
def model():
    return torch.jit.script(load_model("chgnet-r2scan", dtype="float64"))


@pytest.fixture(scope="module")
def si64():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.1, seed=3)
    atoms.wrap()
    return atoms


def _rank_graph(atoms, lo, hi, ghost_cut, short_cut=3.0, cutoff=6.0):
    """Nodes (atom index, image shift) of the slab lo <= x < hi (local first)
    and of the images within ghost_cut of it; edges within the cutoff, both
    directions, ghost-ghost only when short (as the pair style)."""
    cell = atoms.cell.array
    pos = atoms.positions
    local = [(m, (0, 0, 0)) for m in range(len(atoms)) if lo <= pos[m, 0] < hi]
    local_set = {m for m, _ in local}
    ghosts = []
    for s in itertools.product(range(-3, 4), repeat=3):
        p = pos + np.array(s) @ cell
        dx = np.maximum(np.maximum(lo - p[:, 0], p[:, 0] - hi), 0.0)
        dyz = np.maximum(np.maximum(-p[:, 1:], p[:, 1:] - cell.diagonal()[1:]), 0.0)
        d = np.sqrt(dx**2 + (dyz**2).sum(1))
        for m in np.nonzero(d < ghost_cut)[0]:
            if s == (0, 0, 0) and m in local_set:
                continue
            ghosts.append((int(m), s))
    nodes = local + ghosts
    xyz = np.array([pos[m] + np.array(s) @ cell for m, s in nodes])
    nlocal = len(local)
    diff = xyz[None, :, :] - xyz[:, None, :]
    r = np.linalg.norm(diff, axis=2)
    i, j = np.nonzero((r < cutoff) & (r > 0))
    ghost_pair = (i >= nlocal) & (j >= nlocal)
    keep = ~ghost_pair | (r[i, j] < short_cut * (1 + 1e-4))
    i, j = i[keep], j[keep]
    return {
        "nodes": nodes,
        "nlocal": nlocal,
        "z": torch.tensor(atoms.numbers[[m for m, _ in nodes]], dtype=torch.long),
        "edge_index": torch.tensor(np.stack([i, j]), dtype=torch.long),
        "vectors": torch.tensor(diff[i, j], dtype=torch.float64),
    }


def _emulated(model, atoms, ghost_cut):
    """Energy and forces of two pseudo-ranks with the exchange between segments."""
    half = atoms.cell[0, 0] / 2
    ranks = [_rank_graph(atoms, 0.0, half, ghost_cut), _rank_graph(atoms, half, 2 * half, ghost_cut)]
    owner = {}  # atom index -> (rank, node)
    for k, rk in enumerate(ranks):
        for a in range(rk["nlocal"]):
            owner[rk["nodes"][a][0]] = (k, a)

    def forward(rows):  # ghost rows := owners' rows
        out = [x.detach().clone() for x in rows]
        for k, rk in enumerate(ranks):
            for a in range(rk["nlocal"], len(rk["nodes"])):
                q, b = owner[rk["nodes"][a][0]]
                out[k][a] = rows[q][b].detach()
        return [x.requires_grad_(True) for x in out]

    def reverse(adj):  # owners += ghost rows, ghost rows := 0
        out = [x.clone() for x in adj]
        for k, rk in enumerate(ranks):
            for a in range(rk["nlocal"], len(rk["nodes"])):
                q, b = owner[rk["nodes"][a][0]]
                out[q][b] += adj[k][a]
                out[k][a] = 0.0
        return out

    def leaf(x):
        return x.detach().requires_grad_(True)

    for rk in ranks:
        e = rk["edge_index"]
        rk["r"] = leaf(rk["vectors"])
        topo = model.build_graph(e, torch.zeros(e.shape[1], 3, dtype=torch.long), rk["vectors"], len(rk["nodes"]))
        rk["g"] = model.with_geometry(topo, rk["r"])
        rk["seg"] = [([rk["r"]], list(model.seg_first(rk["z"], rk["g"])))]
    atom = forward([rk["seg"][0][1][0] for rk in ranks])
    state = [[atom[k]] + [leaf(x) for x in rk["seg"][0][1][1:]] for k, rk in enumerate(ranks)]
    nseg = model.num_segments()
    for s in range(1, nseg - 1):
        outs = [list(model.seg_mid(s, *state[k], rk["g"])) for k, rk in enumerate(ranks)]
        for k, rk in enumerate(ranks):
            rk["seg"].append((list(state[k]), outs[k]))
        atom = forward([o[0] for o in outs])
        state = [[atom[k], leaf(outs[k][1]), leaf(outs[k][2]), state[k][3], state[k][4]] for k in range(2)]
    energy = 0.0
    adj = []
    for k, rk in enumerate(ranks):
        e, _ = model.seg_last(rk["z"], *state[k], rk["g"])
        local_e = e[: rk["nlocal"]].sum()
        energy += float(local_e.detach())
        adj.append(list(torch.autograd.grad(local_e, state[k], allow_unused=True)))
        adj[k] = [torch.zeros_like(x) if a is None else a for a, x in zip(adj[k], state[k])]
    a_adj = reverse([a[0] for a in adj])
    w_adj = [[a[3], a[4]] for a in adj]
    b_adj = [[a[1], a[2]] for a in adj]
    for s in range(nseg - 2, 0, -1):
        new = []
        for k, rk in enumerate(ranks):
            inputs, outputs = rk["seg"][s]
            g = torch.autograd.grad(outputs, inputs, [a_adj[k], b_adj[k][0], b_adj[k][1]], allow_unused=True)
            g = [torch.zeros_like(x) if y is None else y for y, x in zip(g, inputs)]
            new.append(g[0])
            b_adj[k] = [g[1], g[2]]
            w_adj[k] = [w_adj[k][0] + g[3], w_adj[k][1] + g[4]]
        a_adj = reverse(new)
    forces = np.zeros((len(atoms), 3))
    for k, rk in enumerate(ranks):
        inputs, outputs = rk["seg"][0]
        (grad,) = torch.autograd.grad(outputs, inputs, [a_adj[k], *b_adj[k], *w_adj[k]])
        e = rk["edge_index"].numpy()
        m = np.array([n[0] for n in rk["nodes"]])
        np.add.at(forces, m[e[0]], grad.numpy())
        np.subtract.at(forces, m[e[1]], grad.numpy())
    return energy, forces


def _reference(model, atoms):
    edges = neighbor_list(atoms, 6.0).to_torch("cpu", torch.float64)
    energies, _, grad = model(*edges, True)
    e = edges[1].numpy()
    forces = np.zeros((len(atoms), 3))
    np.add.at(forces, e[0], grad.numpy())
    np.subtract.at(forces, e[1], grad.numpy())
    return float(energies.sum()), forces


def test_emulated_two_rank_exchange_is_exact(model, si64):
    ref_e, ref_f = _reference(model, si64)
    energy, forces = _emulated(model, si64, ghost_cut=12.0)
    assert abs(energy - ref_e) / abs(ref_e) < 1e-12
    assert np.abs(forces - ref_f).max() / np.abs(ref_f).max() < 1e-10
    assert np.abs(ref_f).max() > 0.5


def test_emulated_exchange_needs_the_short_bond_halo(model, si64):
    ref_e, ref_f = _reference(model, si64)
    _, forces = _emulated(model, si64, ghost_cut=6.5)  # atom cutoff, but not the 12 Å bond halo
    assert np.abs(forces - ref_f).max() / np.abs(ref_f).max() > 1e-6
