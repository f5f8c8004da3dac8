"""TorchScript re-implementation of the CHGNet forward pass.

CHGNet: B. Deng, P. Zhong, K. Jun, J. Riebesell, K. Han, C. J. Bartel, G. Ceder,
"CHGNet as a pretrained universal neural network potential for charge-informed
atomistic modelling", Nat. Mach. Intell. 5, 1031 (2023). The r2SCAN weights
come from X. Huang et al., "Cross-functional transferability in universal
machine learning interatomic potentials", npj Comput. Mater. (2025).

The module follows the model contract of ``docs/design.md``: it takes atomic
numbers and a directed neighbour list (both directions of every pair present,
with integer image shifts and edge vectors ``r_ij = r_j + S_ij . cell - r_i``)
and never sees a cell. Everything that depends on geometry (undirected bonds,
the short-bond subgraph, angles, radial and angular bases) is built here, in
torch, so that it runs unchanged on CPU or CUDA and inside LAMMPS.

The arithmetic is CHGNet's; the evaluation order is ours: the first linear
layer of every gated MLP acts on a concatenation ``[x_a, x_b, ...]``, so it is
split into one product per input and each product is computed once per atom
or bond before it is gathered onto edges or angles (for the angle MLPs the
bond and vertex blocks are first summed per short directed edge, and the
angle's own block is an ``addmm`` onto the gathered sum). Core and gate
weights are stacked into one matrix. The last block's angle update, which
nothing reads, is skipped. The numbers equal upstream's to float rounding.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_Z = 94  # CHGNet's embedding covers H (Z = 1) to Pu (Z = 94)


class Graph(NamedTuple):
    """Geometry of one (possibly batched) structure, derived from the edges.

    Shapes: N nodes, E directed edges, B undirected bonds, S short bonds
    (length below the bond-graph cutoff), A angles.

    The atom convolution visits the directed edges in bond order: rows
    ``0..B-1`` are the bonds' representative edges (``bond_edge``), rows
    ``B..2B-1`` their reverses (``conv_center``/``conv_neighbor``), so that
    per-bond inputs are broadcast over a ``[2, B, ...]`` view instead of being
    gathered per edge. Short directed edges follow the same rule: short
    directed edge ``s < S`` is the representative edge of short bond ``s``,
    ``S + s`` its reverse.
    """

    center: Tensor  # [E] int64, i of edge i -> j
    neighbor: Tensor  # [E] int64, j of edge i -> j
    edge_bond: Tensor  # [E] int64, undirected bond of each directed edge
    bond_edge: Tensor  # [B] int64, the directed edge that represents each bond
    short_bonds: Tensor  # [S] int64, bond index of each short bond
    angle_center: Tensor  # [A] int64, atom at the vertex of each angle
    angle_edge_i: Tensor  # [A] int64, directed edge (from the vertex) of the first bond
    angle_edge_j: Tensor  # [A] int64, directed edge (from the vertex) of the second bond
    angle_bond_i: Tensor  # [A] int64, short-bond index of the first bond
    angle_bond_j: Tensor  # [A] int64, short-bond index of the second bond
    bond_length: Tensor  # [B] float, Å
    angle: Tensor  # [A] float, radians, angle between the two bonds
    conv_center: Tensor  # [2B] int64, i of the directed edges in bond order (see above)
    conv_neighbor: Tensor  # [2B] int64, j of the directed edges in bond order
    short_edge_atom: Tensor  # [2S] int64, atom each short directed edge leaves
    angle_edge: Tensor  # [A] int64, short directed edge of each angle's first bond


def reverse_edges(edge_index: Tensor, edge_shifts: Tensor, num_nodes: int) -> Tensor:
    """Index of the reverse of every directed edge.

    The reverse of edge ``(i, j, S)`` is ``(j, i, -S)``; CHGNet's undirected bond
    is the pair of them.

    Args:
        edge_index: [2, E] int64, source ``i`` and target ``j`` of each edge.
        edge_shifts: [E, 3] int64, integer image shift ``S`` of each edge.
        num_nodes: number of nodes N.

    Returns:
        [E] int64, position of each edge's reverse.

    Raises:
        RuntimeError: an edge has no reverse (the neighbour list is not full),
            or the node and shift ranges are too large to encode in int64.
    """
    n_edges = edge_index.shape[1]
    if n_edges == 0:
        return torch.zeros(0, dtype=torch.long, device=edge_index.device)
    s_max = int(edge_shifts.abs().max())
    base = 2 * s_max + 1
    if float(num_nodes) * float(num_nodes) * float(base) ** 3 >= 9.0e18:
        raise RuntimeError(
            "neighbour list too large to pair edges: num_nodes^2 * (2*max|shift|+1)^3 "
            "exceeds int64"
        )
    s = edge_shifts + s_max
    r = s_max - edge_shifts
    code = (s[:, 0] * base + s[:, 1]) * base + s[:, 2]
    rcode = (r[:, 0] * base + r[:, 1]) * base + r[:, 2]
    cube = base * base * base
    key = (edge_index[0] * num_nodes + edge_index[1]) * cube + code
    rkey = (edge_index[1] * num_nodes + edge_index[0]) * cube + rcode
    sorted_key, order = torch.sort(key)
    pos = torch.searchsorted(sorted_key, rkey).clamp(max=n_edges - 1)
    if not bool((sorted_key[pos] == rkey).all()):
        raise RuntimeError(
            "edge list is not symmetric: an edge (i, j, S) has no reverse (j, i, -S); "
            "pass a full neighbour list"
        )
    return order[pos]


class GatedMLP(nn.Module):
    """CHGNet's gated MLP, ``silu(LN(core(x))) * sigmoid(LN(gate(x)))``, whose
    input ``x`` is a concatenation of ``n_parts`` feature blocks of width
    ``part_dim``.

    The first linear layer of core and gate is stored stacked and split by
    input block, ``weight_in`` [n_parts, 2H, part_dim] (core rows first, then
    gate) and ``bias_in`` [2H]: the convolutions multiply each block with its
    slice, once per atom, bond or angle, and sum the products gathered onto
    edges or angles; ``forward(sum)`` (or ``forward_onto``, which adds the
    last block's product itself) finishes the MLP. With one hidden layer
    (``hidden_dim > 0``) a SiLU and a second linear layer follow, as in
    ``chgnet.model.functions.MLP``.

    ``forward`` splits its input with ``split``/``view`` only (no slicing), so
    that the backward pass concatenates the two halves' gradients instead of
    zero-filling a full-width buffer for each.
    """

    def __init__(self, part_dim: int, n_parts: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        first_out = hidden_dim if hidden_dim > 0 else out_dim
        self.part_dim = part_dim
        self.first_out = first_out
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
        self.weight_in = nn.Parameter(torch.zeros(n_parts, 2 * first_out, part_dim))
        self.bias_in = nn.Parameter(torch.zeros(2 * first_out))
        h = max(hidden_dim, 1)
        self.weight_core_out = nn.Parameter(torch.zeros(out_dim, h))
        self.bias_core_out = nn.Parameter(torch.zeros(out_dim))
        self.weight_gate_out = nn.Parameter(torch.zeros(out_dim, h))
        self.bias_gate_out = nn.Parameter(torch.zeros(out_dim))
        self.norm_core = nn.LayerNorm(out_dim)
        self.norm_gate = nn.LayerNorm(out_dim)

    def forward(self, pre: Tensor) -> Tensor:
        """Finish the MLP from the first layer's output ``pre`` [n, 2H] -> [n, out_dim]."""
        core, gate = (F.silu(pre) if self.hidden_dim > 0 else pre).split(self.first_out, dim=1)
        return self._gated(core, gate)

    @torch.jit.export
    def forward_onto(self, gathered: Tensor, part: int, x: Tensor) -> Tensor:
        """``forward(gathered + x @ weight_in[part].T)``: gathered [n, 2H], the
        other blocks' sum; x [n, part_dim] -> [n, out_dim]. Without a hidden
        layer core and gate get one ``addmm`` each, so that each half is
        contiguous for its layer norm."""
        if self.hidden_dim > 0:
            return self.forward(torch.addmm(gathered, x, self.weight_in[part].t()))
        w_core, w_gate = self.weight_in[part].split(self.first_out, dim=0)
        g_core, g_gate = gathered.split(self.first_out, dim=1)
        return self._gated(torch.addmm(g_core, x, w_core.t()), torch.addmm(g_gate, x, w_gate.t()))

    def _gated(self, core: Tensor, gate: Tensor) -> Tensor:
        """From the first layer's core and gate halves ([n, H] each, after the
        SiLU when there is a hidden layer) to the output [n, out_dim]."""
        if self.hidden_dim > 0:
            core = F.linear(core, self.weight_core_out, self.bias_core_out)
            gate = F.linear(gate, self.weight_gate_out, self.bias_gate_out)
        return F.silu(self.norm_core(core)) * torch.sigmoid(self.norm_gate(gate))


class AtomConv(nn.Module):
    """Atom update (CHGNet Eq. 3): ``v_i += L(Σ_j φ([v_i, e_ij, v_j]) * W_ag e~_ij)``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.mlp = GatedMLP(dim, 3, hidden_dim, dim)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, atom_feas: Tensor, bond_feas: Tensor, bond_weights: Tensor, g: Graph) -> Tensor:
        """atom_feas [N, F], bond_feas [B, F], bond_weights [B, F] -> [N, F].

        The ``v_i`` and ``v_j`` blocks of the first layer are one product per
        atom ([N, 4H]), gathered onto the directed edges (in the graph's bond
        order) and summed in place; the ``e_ij`` block (with the bias) is one
        product per bond, added to both directions of the bond by
        broadcasting, as are the bond weights."""
        w = self.mlp.weight_in  # [3, 2H, F]: v_i, e_ij, v_j
        n_bonds, width = bond_feas.shape[0], w.shape[1]
        p_i, p_j = F.linear(atom_feas, torch.cat([w[0], w[2]])).split(width, dim=1)
        p_ij = F.linear(bond_feas, w[1], self.mlp.bias_in)
        pre = p_i.index_select(0, g.conv_center).add_(p_j.index_select(0, g.conv_neighbor))
        pre = (pre.view(2, n_bonds, width) + p_ij).view(2 * n_bonds, width)
        dim = bond_weights.shape[1]
        messages = (self.mlp(pre).view(2, n_bonds, dim) * bond_weights).view(2 * n_bonds, dim)
        summed = torch.zeros_like(atom_feas).index_add_(0, g.conv_center, messages)
        return torch.addmm(atom_feas, summed, self.out.weight.t())


def _vertex_block(mlp: GatedMLP, atom_feas: Tensor, g: Graph) -> Tensor:
    """The ``v_i`` block (with the bias) of an angle MLP, one product per atom
    gathered onto the short directed edges: atom_feas [N, F] -> [2S, 2H]."""
    return F.linear(atom_feas, mlp.weight_in[3], mlp.bias_in).index_select(0, g.short_edge_atom)


def _angle_mlp(
    mlp: GatedMLP, p_atom: Tensor, short_feas: Tensor, angle_feas: Tensor, g: Graph, p_ik: Tensor
) -> Tensor:
    """An angle MLP on ``[e_ij, e_ik, a_jik, v_i]`` -> [A, F].

    Args:
        mlp: the gated MLP (``weight_in`` blocks e_ij, e_ik, a_jik, v_i).
        p_atom: [2S, 2H], the ``v_i`` block (with the bias) at the atom each
            short directed edge leaves.
        short_feas: [S, F], features of the short bonds.
        angle_feas: [A, F].
        g: the graph (``angle_edge``: short directed edge of each angle).
        p_ik: [A, 2H], the ``e_ik`` block gathered onto the angles.

    The ``e_ij`` and ``v_i`` blocks are summed per short directed edge
    ([2S, 2H], much fewer rows than angles) and gathered once; the angle's own
    block is a product onto the gathered sum (:meth:`GatedMLP.forward_onto`).
    """
    n_short = short_feas.shape[0]
    p_ij = F.linear(short_feas, mlp.weight_in[0])
    per_edge = (p_atom.view(2, n_short, p_ij.shape[1]) + p_ij).view(2 * n_short, p_ij.shape[1])
    gathered = per_edge.index_select(0, g.angle_edge).add_(p_ik)
    return mlp.forward_onto(gathered, 2, angle_feas)


class BondConv(nn.Module):
    """Bond update on the short-bond graph (CHGNet Eq. 4): for a short bond
    ``e_ij``, ``e_ij += L(Σ_k φ([e_ij, e_ik, a_jik, v_i]) * W e~_ij * W e~_ik)``.
    The factor ``W e~_ij`` is common to the sum and applied after it."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.mlp = GatedMLP(dim, 4, hidden_dim, dim)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(
        self, atom_feas: Tensor, bond_feas: Tensor, short_weights: Tensor, angle_feas: Tensor, g: Graph
    ) -> Tensor:
        """atom_feas [N, F], bond_feas [B, F], short_weights [S, F], angle_feas
        [A, F] -> updated bond_feas [B, F] (only short bonds change)."""
        return self.update(_vertex_block(self.mlp, atom_feas, g), bond_feas, short_weights, angle_feas, g)

    @torch.jit.export
    def update(self, p_atom: Tensor, bond_feas: Tensor, short_weights: Tensor, angle_feas: Tensor, g: Graph) -> Tensor:
        """``forward`` from the ``v_i`` block p_atom [2S, 2H] (see
        :func:`_angle_mlp`)."""
        short_feas = bond_feas.index_select(0, g.short_bonds)
        p_ik = F.linear(short_feas, self.mlp.weight_in[1]).index_select(0, g.angle_bond_j)
        update = _angle_mlp(self.mlp, p_atom, short_feas, angle_feas, g, p_ik)
        update = update * short_weights.index_select(0, g.angle_bond_j)
        summed = torch.zeros_like(short_feas).index_add_(0, g.angle_bond_i, update) * short_weights
        return bond_feas.index_add(0, g.short_bonds, self.out(summed))


class AngleUpdate(nn.Module):
    """Angle update (CHGNet Eq. 5): ``a_jik += φ([e_ij, e_ik, a_jik, v_i])``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.mlp = GatedMLP(dim, 4, hidden_dim, dim)

    def forward(self, atom_feas: Tensor, bond_feas: Tensor, angle_feas: Tensor, g: Graph) -> Tensor:
        """atom_feas [N, F], bond_feas [B, F], angle_feas [A, F] -> [A, F]."""
        return self.update(_vertex_block(self.mlp, atom_feas, g), bond_feas, angle_feas, g)

    @torch.jit.export
    def update(self, p_atom: Tensor, bond_feas: Tensor, angle_feas: Tensor, g: Graph) -> Tensor:
        """``forward`` from the ``v_i`` block p_atom [2S, 2H] (see :func:`_angle_mlp`)."""
        short_feas = bond_feas.index_select(0, g.short_bonds)
        p_ik = F.linear(short_feas, self.mlp.weight_in[1]).index_select(0, g.angle_bond_j)
        return angle_feas + _angle_mlp(self.mlp, p_atom, short_feas, angle_feas, g, p_ik)


class InteractionBlock(nn.Module):
    """One CHGNet interaction block: atom convolution, then bond convolution and
    angle update on the short-bond graph. The state (atom, bond, angle
    features) goes in and out explicitly, so that an engine can exchange ghost
    atom features between blocks (``docs/design.md``, section 2).

    With ``update_angles=False`` (CHGNet's last block, whose angle features
    nothing reads) the angle update is skipped and the angle features come out
    as they went in; the module and its weights are still there
    (``block.angle_update``)."""

    def __init__(
        self, dim: int, atom_hidden: int, bond_hidden: int, angle_hidden: int, update_angles: bool = True
    ) -> None:
        super().__init__()
        self.update_angles = update_angles
        self.atom_conv = AtomConv(dim, atom_hidden)
        self.bond_conv = BondConv(dim, bond_hidden)
        self.angle_update = AngleUpdate(dim, angle_hidden)

    def forward(
        self,
        atom_feas: Tensor,
        bond_feas: Tensor,
        angle_feas: Tensor,
        bond_weights_ag: Tensor,
        short_weights_bg: Tensor,
        g: Graph,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Returns the updated (atom_feas [N, F], bond_feas [B, F], angle_feas [A, F])."""
        atom_feas = self.atom_conv(atom_feas, bond_feas, bond_weights_ag, g)
        bond_feas, angle_feas = self.update_bonds_and_angles(atom_feas, bond_feas, angle_feas, short_weights_bg, g)
        return atom_feas, bond_feas, angle_feas

    def update_bonds_and_angles(
        self, atom_feas: Tensor, bond_feas: Tensor, angle_feas: Tensor, short_weights_bg: Tensor, g: Graph
    ) -> Tuple[Tensor, Tensor]:
        """Second half of the block, after the atom convolution: bond
        convolution, then angle update (unless ``update_angles`` is false),
        from the already updated atom features (atom_feas [N, F], bond_feas
        [B, F], angle_feas [A, F], short_weights_bg [S, F]). Returns (bond_feas
        [B, F], angle_feas [A, F]). An engine that exchanges ghost atom
        features does so between ``atom_conv`` and this call."""
        bond_mlp = self.bond_conv.mlp
        angle_mlp = self.angle_update.mlp
        if not self.update_angles:
            p_atom = _vertex_block(bond_mlp, atom_feas, g)
            return self.bond_conv.update(p_atom, bond_feas, short_weights_bg, angle_feas, g), angle_feas
        # the v_i blocks of both MLPs as one product, gathered onto the short directed edges once
        weight = torch.cat([bond_mlp.weight_in[3], angle_mlp.weight_in[3]])
        bias = torch.cat([bond_mlp.bias_in, angle_mlp.bias_in])
        p_atom = F.linear(atom_feas, weight, bias).index_select(0, g.short_edge_atom)
        p_bond_atom, p_angle_atom = p_atom.split(bond_mlp.weight_in.shape[1], dim=1)
        bond_feas = self.bond_conv.update(p_bond_atom, bond_feas, short_weights_bg, angle_feas, g)
        return bond_feas, self.angle_update.update(p_angle_atom, bond_feas, angle_feas, g)


class CHGNet(nn.Module):
    """CHGNet as a TorchScript-compatible module on the design's edge contract.

    Args:
        dim: feature width of atoms, bonds and angles (64 in all released weights).
        num_radial: number of Bessel radial basis functions (31).
        num_angular: number of Fourier angular basis functions, odd (31).
        n_conv: number of atom convolutions (4); there is one bond and angle
            update fewer.
        atom_hidden, bond_hidden, angle_hidden: hidden widths of the gated
            MLPs (64, 64, 0; 0 means a single linear layer).
        mlp_hidden: hidden widths of the readout MLP ((64, 64, 64)).
        atom_graph_cutoff: cutoff of the atom graph, Å (6).
        bond_graph_cutoff: cutoff of the short-bond graph for angles, Å (3).
        cutoff_coeff: exponent p of the polynomial envelope (8).

    The AtomRef vector ``atomref`` ([94], eV/atom, element Z at index Z - 1) is
    a buffer: re-referencing to another functional (Huang et al. 2025, Eq. 3)
    replaces it and nothing else.
    """

    def __init__(
        self,
        dim: int = 64,
        num_radial: int = 31,
        num_angular: int = 31,
        n_conv: int = 4,
        atom_hidden: int = 64,
        bond_hidden: int = 64,
        angle_hidden: int = 0,
        mlp_hidden: List[int] = (64, 64, 64),
        atom_graph_cutoff: float = 6.0,
        bond_graph_cutoff: float = 3.0,
        cutoff_coeff: int = 8,
    ) -> None:
        super().__init__()
        if num_angular % 2 != 1:
            raise ValueError(f"num_angular={num_angular} must be odd")
        self.dim = dim
        self.n_conv = n_conv
        self.atom_graph_cutoff = float(atom_graph_cutoff)
        self.bond_graph_cutoff = float(bond_graph_cutoff)
        self.cutoff_coeff = int(cutoff_coeff)
        self.metadata_json: str = "{}"  # filled by the loader; read by engines
        self.recompute_threshold: int = 100_000  # edges + angles above which the gradient is taken block by block
        self.atom_embedding = nn.Embedding(MAX_Z, dim)
        self.rbf_frequencies_ag = nn.Parameter(math.pi * torch.arange(1, num_radial + 1, dtype=torch.float32))
        self.rbf_frequencies_bg = nn.Parameter(math.pi * torch.arange(1, num_radial + 1, dtype=torch.float32))
        self.angle_frequencies = nn.Parameter(torch.arange(1, (num_angular - 1) // 2 + 1, dtype=torch.float32))
        self.bond_embedding = nn.Linear(num_radial, dim, bias=False)
        self.bond_weights_ag = nn.Linear(num_radial, dim, bias=False)
        self.bond_weights_bg = nn.Linear(num_radial, dim, bias=False)
        self.angle_embedding = nn.Linear(num_angular, dim, bias=False)
        self.blocks = nn.ModuleList(
            [
                InteractionBlock(dim, atom_hidden, bond_hidden, angle_hidden, update_angles=k < n_conv - 2)
                for k in range(n_conv - 1)
            ]
        )
        self.last_atom_conv = AtomConv(dim, atom_hidden)
        self.site_wise = nn.Linear(dim, 1)
        self.readout_norm = nn.LayerNorm(dim)
        widths = [dim] + list(mlp_hidden) + [1]
        self.readout = nn.ModuleList([nn.Linear(widths[k], widths[k + 1]) for k in range(len(widths) - 1)])
        self.register_buffer("atomref", torch.zeros(MAX_Z))

    # ----------------------------------------------------------------- geometry
    def build_graph(self, edge_index: Tensor, edge_shifts: Tensor, edge_vectors: Tensor, num_nodes: int) -> Graph:
        """Undirected bonds, short bonds and angles from the directed edges.

        Args:
            edge_index: [2, E] int64 directed edges i -> j (both directions present).
            edge_shifts: [E, 3] int64 image shifts; only used to pair each edge
                with its reverse.
            edge_vectors: [E, 3] float, ``r_j + S . cell - r_i`` in Å.
            num_nodes: N.

        An undirected bond is short when its length is below the bond-graph
        cutoff; an angle is an ordered pair of distinct short directed edges
        that leave the same atom (as in ``chgnet``'s line graph).
        """
        device = edge_index.device
        n_edges = edge_index.shape[1]
        center = edge_index[0]
        rev = reverse_edges(edge_index, edge_shifts, num_nodes)
        is_rep = torch.arange(n_edges, device=device) < rev
        bond_id = torch.cumsum(is_rep.to(torch.long), 0) - 1
        edge_bond = torch.where(is_rep, bond_id, bond_id[rev])
        bond_edge = torch.nonzero(is_rep).squeeze(1)
        bond_length = torch.linalg.norm(edge_vectors[bond_edge], dim=1)

        is_short = bond_length < self.bond_graph_cutoff
        short_bonds = torch.nonzero(is_short).squeeze(1)
        bond_to_short = torch.full_like(bond_edge, -1)
        bond_to_short[short_bonds] = torch.arange(short_bonds.shape[0], device=device)
        short_edges = torch.nonzero(is_short[edge_bond]).squeeze(1)
        centers, perm = torch.sort(center[short_edges], stable=True)
        short_edges = short_edges[perm]
        counts = torch.bincount(centers, minlength=num_nodes)
        starts = torch.cumsum(counts, 0) - counts
        k = counts[centers]
        first = torch.repeat_interleave(torch.arange(short_edges.shape[0], device=device), k)
        offset_in_group = torch.arange(first.shape[0], device=device) - (torch.cumsum(k, 0) - k)[first]
        second = starts[centers[first]] + offset_in_group
        keep = first != second
        e1 = short_edges[first[keep]]
        e2 = short_edges[second[keep]]
        src = center[bond_edge]
        dst = edge_index[1][bond_edge]
        angle_bond_i = bond_to_short[edge_bond[e1]]
        short_rep = bond_edge[short_bonds]
        return Graph(
            center=center,
            neighbor=edge_index[1],
            edge_bond=edge_bond,
            bond_edge=bond_edge,
            short_bonds=short_bonds,
            angle_center=center[e1],
            angle_edge_i=e1,
            angle_edge_j=e2,
            angle_bond_i=angle_bond_i,
            angle_bond_j=bond_to_short[edge_bond[e2]],
            bond_length=bond_length,
            angle=self.angles(edge_vectors, e1, e2),
            conv_center=torch.cat([src, dst]),
            conv_neighbor=torch.cat([dst, src]),
            short_edge_atom=torch.cat([src[short_bonds], dst[short_bonds]]),
            angle_edge=torch.where(e1 != short_rep[angle_bond_i], angle_bond_i + short_bonds.shape[0], angle_bond_i),
        )

    def angles(self, edge_vectors: Tensor, edge_i: Tensor, edge_j: Tensor) -> Tensor:
        """Angle (radians) between edges ``edge_i`` and ``edge_j`` [A] leaving the
        same atom; the cosine is scaled by 1 - 1e-6 before acos, as upstream."""
        u_i = edge_vectors[edge_i]
        u_j = edge_vectors[edge_j]
        u_i = u_i / torch.linalg.norm(u_i, dim=1, keepdim=True)
        u_j = u_j / torch.linalg.norm(u_j, dim=1, keepdim=True)
        return torch.acos((u_i * u_j).sum(dim=1) * (1.0 - 1e-6))

    def with_geometry(self, g: Graph, edge_vectors: Tensor) -> Graph:
        """``g`` with its bond lengths and angles recomputed from ``edge_vectors``
        (so that they carry gradients); the topology is reused."""
        return Graph(
            center=g.center,
            neighbor=g.neighbor,
            edge_bond=g.edge_bond,
            bond_edge=g.bond_edge,
            short_bonds=g.short_bonds,
            angle_center=g.angle_center,
            angle_edge_i=g.angle_edge_i,
            angle_edge_j=g.angle_edge_j,
            angle_bond_i=g.angle_bond_i,
            angle_bond_j=g.angle_bond_j,
            bond_length=torch.linalg.norm(edge_vectors[g.bond_edge], dim=1),
            angle=self.angles(edge_vectors, g.angle_edge_i, g.angle_edge_j),
            conv_center=g.conv_center,
            conv_neighbor=g.conv_neighbor,
            short_edge_atom=g.short_edge_atom,
            angle_edge=g.angle_edge,
        )

    def radial_basis(self, r: Tensor, frequencies: Tensor, cutoff: float) -> Tensor:
        """Smoothed Bessel basis (CHGNet Eq. 1, after GemNet): ``sqrt(2/rc) sin(f r/rc)/r
        * u(r/rc)`` with the polynomial envelope u of exponent p. r [B] -> [B, num_radial]."""
        p = float(self.cutoff_coeff)
        x = (r / cutoff).unsqueeze(1)
        envelope = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * x**p
            + p * (p + 2.0) * x ** (p + 1.0)
            - p * (p + 1.0) / 2.0 * x ** (p + 2.0)
        )
        envelope = torch.where(x < 1.0, envelope, torch.zeros_like(x))
        return envelope * math.sqrt(2.0 / cutoff) * torch.sin(frequencies * x) / r.unsqueeze(1)

    def angular_basis(self, theta: Tensor) -> Tensor:
        """Fourier basis ``[1/sqrt 2, sin(n θ), cos(n θ)] / sqrt(pi)``. θ [A] -> [A, num_angular]."""
        t = torch.outer(theta, self.angle_frequencies)
        const = torch.full_like(theta, 1.0 / math.sqrt(2.0)).unsqueeze(1)
        return torch.cat([const, torch.sin(t), torch.cos(t)], dim=1) / math.sqrt(math.pi)

    # ------------------------------------------------------------- forward pass
    def embed(self, atomic_numbers: Tensor, g: Graph) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Initial state: (atom_feas [N, F], bond_feas [B, F], angle_feas [A, F],
        bond_weights_ag [B, F], short_weights_bg [S, F])."""
        basis_ag = self.radial_basis(g.bond_length, self.rbf_frequencies_ag, self.atom_graph_cutoff)
        basis_bg = self.radial_basis(g.bond_length[g.short_bonds], self.rbf_frequencies_bg, self.bond_graph_cutoff)
        atom_feas = self.atom_embedding(atomic_numbers - 1)
        bond_feas = self.bond_embedding(basis_ag)
        angle_feas = self.angle_embedding(self.angular_basis(g.angle))
        return atom_feas, bond_feas, angle_feas, self.bond_weights_ag(basis_ag), self.bond_weights_bg(basis_bg)

    def magmoms(self, atom_feas: Tensor) -> Tensor:
        """Magnetic moments |w . v_i + b| in μB from the atom features after the
        third block: [N, F] -> [N]."""
        return torch.abs(self.site_wise(atom_feas)).squeeze(1)

    def site_energies(self, atomic_numbers: Tensor, atom_feas: Tensor) -> Tensor:
        """Readout: LayerNorm, MLP, plus the AtomRef energy of each element.
        [N], [N, F] -> [N] eV."""
        x = self.readout_norm(atom_feas)
        n_layers = len(self.readout)
        for k, layer in enumerate(self.readout):
            x = layer(x)
            if k < n_layers - 1:
                x = F.silu(x)
        return x.squeeze(1) + self.atomref[atomic_numbers - 1]

    def energy_and_magmoms(
        self, atomic_numbers: Tensor, edge_index: Tensor, edge_shifts: Tensor, edge_vectors: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Site energies [N] (eV, AtomRef included) and magmoms [N] (μB)."""
        g = self.build_graph(edge_index, edge_shifts, edge_vectors, atomic_numbers.shape[0])
        return self.network(atomic_numbers, g)

    def network(self, atomic_numbers: Tensor, g: Graph) -> Tuple[Tensor, Tensor]:
        """The network on a built graph: embedding, interaction blocks, last atom
        convolution and readout, run as the segments ``seg_first``, ``seg_mid``
        and ``seg_last`` with an identity exchange between them. Returns site
        energies [N] eV and magmoms [N] μB."""
        atom_feas, bond_feas, angle_feas, w_ag, w_bg = self.seg_first(atomic_numbers, g)
        for k in range(1, self.num_segments() - 1):
            atom_feas, bond_feas, angle_feas = self.seg_mid(k, atom_feas, bond_feas, angle_feas, w_ag, w_bg, g)
        return self.seg_last(atomic_numbers, atom_feas, bond_feas, angle_feas, w_ag, w_bg, g)

    # ----------------------------------------------------------------- segments
    # The forward pass, cut where a domain-decomposed engine exchanges ghost
    # atom features (docs/design.md, section 2): after the atom convolution of
    # every interaction block, before the bond and angle update that reads the
    # atom features of both bond ends. The state (atom_feas [N, F], bond_feas
    # [B, F], angle_feas [A, F]) and the bond weights (w_ag [B, F], w_bg [S, F])
    # go in and out explicitly; the atom features a segment returns are
    # A^{k+1}, the ones to exchange before the next segment. ``network``,
    # ``blockwise_gradient`` (and so the ASE calculator and the serial LAMMPS
    # path) call the segments back to back, i.e. with an identity exchange; the
    # multi-rank LAMMPS pair style calls them with a ghost exchange between.

    @torch.jit.export
    def num_segments(self) -> int:
        """Number of forward segments: one per atom convolution (n_conv)."""
        return len(self.blocks) + 1

    @torch.jit.export
    def seg_first(self, atomic_numbers: Tensor, g: Graph) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Segment 0: embedding and the atom convolution of the first block.
        Returns (A^1 [N, F], bond_feas [B, F], angle_feas [A, F], w_ag [B, F],
        w_bg [S, F]); all but the atom embedding depend on ``g``'s geometry."""
        atom_feas, bond_feas, angle_feas, w_ag, w_bg = self.embed(atomic_numbers, g)
        for i, block in enumerate(self.blocks):  # TorchScript reaches modules by iteration only
            if i == 0:
                atom_feas = block.atom_conv(atom_feas, bond_feas, w_ag, g)
        return atom_feas, bond_feas, angle_feas, w_ag, w_bg

    @torch.jit.export
    def seg_mid(
        self, k: int, atom_feas: Tensor, bond_feas: Tensor, angle_feas: Tensor, w_ag: Tensor, w_bg: Tensor, g: Graph
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Segment k (1 <= k < num_segments() - 1): bond and angle update of
        block k-1 from A^k, then the atom convolution of block k. Returns
        (A^{k+1}, bond_feas, angle_feas)."""
        if k < 1 or k >= len(self.blocks):
            raise RuntimeError("seg_mid: segment index out of range")
        for i, block in enumerate(self.blocks):
            if i == k - 1:
                bond_feas, angle_feas = block.update_bonds_and_angles(atom_feas, bond_feas, angle_feas, w_bg, g)
        for i, block in enumerate(self.blocks):
            if i == k:
                atom_feas = block.atom_conv(atom_feas, bond_feas, w_ag, g)
        return atom_feas, bond_feas, angle_feas

    @torch.jit.export
    def seg_last(
        self,
        atomic_numbers: Tensor,
        atom_feas: Tensor,
        bond_feas: Tensor,
        angle_feas: Tensor,
        w_ag: Tensor,
        w_bg: Tensor,
        g: Graph,
    ) -> Tuple[Tensor, Tensor]:
        """Last segment: bond and angle update of the last block from
        A^{n_conv-1}, magmoms from those atom features (where CHGNet reads
        them), last atom convolution and readout. Returns site energies [N] eV
        and magmoms [N] μB. The last angle update is read by nothing."""
        n_blocks = len(self.blocks)
        for i, block in enumerate(self.blocks):
            if i == n_blocks - 1:
                bond_feas, angle_feas = block.update_bonds_and_angles(atom_feas, bond_feas, angle_feas, w_bg, g)
        magmoms = self.magmoms(atom_feas)
        atom_feas = self.last_atom_conv(atom_feas, bond_feas, w_ag, g)
        return self.site_energies(atomic_numbers, atom_feas), magmoms

    def forward(
        self,
        atomic_numbers: Tensor,
        edge_index: Tensor,
        edge_shifts: Tensor,
        edge_vectors: Tensor,
        compute_gradient: bool = True,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Evaluate CHGNet on a (batched) graph.

        Args:
            atomic_numbers: [N] int64, 1 <= Z <= 94.
            edge_index: [2, E] int64, directed edges i -> j within the atom-graph
                cutoff, both directions present.
            edge_shifts: [E, 3] int64, integer image shift S of each edge
                (zero where the engine keeps images as separate nodes).
            edge_vectors: [E, 3] float, r_j + S . cell - r_i in Å.
            compute_gradient: also return g = dE/d(edge_vectors).

        Returns:
            site_energies [N] eV (summing to the total energy), magmoms [N] μB,
            and g [E, 3] eV/Å (empty [0, 3] when ``compute_gradient`` is false).
            Forces are F_i = Σ_j g_ij - Σ_j g_ji; the virial is -Σ r_ij ⊗ g_ij.

        The gradient is taken with respect to the edge vectors only (not the
        parameters). Graphs with more than ``recompute_threshold`` edges plus
        angles are differentiated block by block, recomputing each block's
        forward pass, so that only one block's intermediates live at a time.
        """
        if not compute_gradient:
            site_energies, magmoms = self.energy_and_magmoms(atomic_numbers, edge_index, edge_shifts, edge_vectors)
            return site_energies, magmoms, torch.zeros(0, 3, dtype=edge_vectors.dtype, device=edge_vectors.device)
        if not torch.is_grad_enabled():
            raise RuntimeError("compute_gradient=True needs autograd: call the model outside torch.no_grad()")
        vectors = edge_vectors.detach()
        g = self.build_graph(edge_index, edge_shifts, vectors, atomic_numbers.shape[0])
        vectors.requires_grad_(True)
        if g.center.shape[0] + g.angle_center.shape[0] > self.recompute_threshold:
            return self.blockwise_gradient(atomic_numbers, g, vectors)
        site_energies, magmoms = self.network(atomic_numbers, self.with_geometry(g, vectors))
        grad = _grad_or_zeros([site_energies.sum()], [vectors], None)[0]
        return site_energies.detach(), magmoms.detach(), grad

    def segment_states(
        self, atomic_numbers: Tensor, g: Graph
    ) -> Tuple[List[Tuple[Tensor, Tensor, Tensor]], Tensor, Tensor]:
        """(atom, bond, angle) features entering each segment after the first,
        and the bond weights (w_ag [B, F], w_bg [S, F]) that every segment reads."""
        atom_feas, bond_feas, angle_feas, w_ag, w_bg = self.seg_first(atomic_numbers, g)
        states: List[Tuple[Tensor, Tensor, Tensor]] = [(atom_feas, bond_feas, angle_feas)]
        for k in range(1, self.num_segments() - 1):
            atom_feas, bond_feas, angle_feas = self.seg_mid(k, atom_feas, bond_feas, angle_feas, w_ag, w_bg, g)
            states.append((atom_feas, bond_feas, angle_feas))
        return states, w_ag, w_bg

    def blockwise_gradient(self, atomic_numbers: Tensor, g: Graph, vectors: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Memory-lean dE/d(vectors): a forward pass on detached inputs that keeps
        only the state between segments, then a backward pass from the readout
        to the embedding that recomputes one segment at a time and carries the
        adjoints of the atom, bond and angle features (and of the bond weights,
        which every segment reads) from segment to segment. The multi-rank
        LAMMPS pair style runs the same segment-by-segment backward pass, with
        a reverse exchange of the atom-feature adjoints between segments.

        The forward pass records no autograd graph only when the parameters do
        not require gradients, as in modules from ``load_model``
        (``torch.no_grad`` blocks whose results are used later do not compile
        in TorchScript)."""
        states, w_ag, w_bg = self.segment_states(atomic_numbers, g)
        last = [x.detach().requires_grad_(True) for x in [states[-1][0], states[-1][1], states[-1][2], w_ag, w_bg]]
        site_energies, magmoms = self.seg_last(atomic_numbers, last[0], last[1], last[2], last[3], last[4], g)
        adj = _grad_or_zeros([site_energies.sum()], last, None)
        adj_atom, adj_bond, adj_angle, adj_w_ag, adj_w_bg = adj[0], adj[1], adj[2], adj[3], adj[4]
        for k in range(len(states) - 1, 0, -1):
            state = states[k - 1]
            inputs = [x.detach().requires_grad_(True) for x in [state[0], state[1], state[2], w_ag, w_bg]]
            out = self.seg_mid(k, inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], g)
            adj = _grad_or_zeros([out[0], out[1], out[2]], inputs, [adj_atom, adj_bond, adj_angle])
            adj_atom, adj_bond, adj_angle = adj[0], adj[1], adj[2]
            adj_w_ag = adj_w_ag + adj[3]
            adj_w_bg = adj_w_bg + adj[4]
        first = self.seg_first(atomic_numbers, self.with_geometry(g, vectors))
        grad = _grad_or_zeros(
            [first[0], first[1], first[2], first[3], first[4]],
            [vectors],
            [adj_atom, adj_bond, adj_angle, adj_w_ag, adj_w_bg],
        )[0]
        return site_energies.detach(), magmoms.detach(), grad


def _grad_or_zeros(outputs: List[Tensor], inputs: List[Tensor], grad_outputs: Optional[List[Tensor]]) -> List[Tensor]:
    """torch.autograd.grad with zeros for inputs the outputs do not depend on."""
    outs: List[Tensor] = []
    adjoints: List[Optional[Tensor]] = []
    for k in range(len(outputs)):
        if outputs[k].requires_grad:
            outs.append(outputs[k])
            if grad_outputs is not None:
                adjoints.append(grad_outputs[k])
    result = [torch.zeros_like(x) for x in inputs]
    if len(outs) == 0:
        return result
    if grad_outputs is None:
        grads = torch.autograd.grad(outs, inputs, allow_unused=True)
    else:
        grads = torch.autograd.grad(outs, inputs, grad_outputs=adjoints, allow_unused=True)
    for k in range(len(inputs)):
        found = grads[k]
        if found is not None:
            result[k] = found
    return result
