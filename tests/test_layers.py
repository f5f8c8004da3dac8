"""Layer-by-layer comparison with upstream ``chgnet``.

Upstream's intermediate tensors are caught with forward hooks on its modules
(``atom_embedding``, ``bond_basis_expansion``, ``angle_basis_expansion``,
``bond_embedding``, ``bond_weights_ag/bg``, ``angle_embedding``,
``atom_conv_layers[k]``, ``bond_conv_layers[k]``, ``angle_layers[k]``,
``site_wise``, ``readout_norm``, ``mlp``); ours come from calling
``CHGNet.build_graph``, ``embed``, each block, ``last_atom_conv`` and
``site_energies`` step by step.

Atoms are in the same order on both sides. Bonds and angles are not:

- an undirected bond is keyed by its canonical (i, j, image) triple, the
  smaller of (i, j, S) and (j, i, -S). Upstream: ``graph.atom_graph`` and
  ``graph.neighbor_image`` of the directed edge ``graph.undirected2directed[u]``;
  ours: the representative (lower-index) edge of each bond.
- an angle is keyed by (centre atom, key of its first bond, key of its second
  bond). When a short bond joins an atom to its own image, the same key occurs
  for several angles (the bond leaves the centre in two directions); within a
  key the angles are paired in order of the angle value. Angles of equal key
  and equal value have equal features, so the pairing is immaterial there.

The comparison runs in float64 on both sides (tight tolerances: the algorithm)
and in float32 (upstream's own precision).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from conftest import MODEL_NAMES, perturbed, upstream_graph

#: (rtol, atol) per dtype; features are O(1) to O(10). In float64 upstream's
#: angle basis still carries its float32 constant 1/sqrt(2) (~1e-8 relative).
TOL = {"float64": (1e-6, 1e-7), "float32": (2e-4, 2e-4)}


def _structures(wbm) -> dict[str, Atoms]:
    rng = np.random.default_rng(21)
    out = {}
    # a multi-element WBM crystal with many short bonds and angles, rattled and strained
    for mid, atoms in wbm(40, seed=21):
        if len(set(atoms.numbers)) >= 3 and 8 <= len(atoms) <= 14:
            out[f"{mid} perturbed"] = perturbed(atoms, rng)
            break
    # bcc Fe primitive: every short bond joins the atom to its own image
    fe = bulk("Fe", "bcc", a=2.87)
    fe.set_cell(fe.cell.array @ np.array([[1.01, 0.02, 0.0], [0.0, 0.99, 0.01], [0.0, 0.0, 1.02]]), scale_atoms=True)
    out["bcc Fe primitive, strained"] = fe
    # two atoms in a cell smaller than the cutoff, several bonds per pair of atoms
    nacl = bulk("NaCl", "rocksalt", a=5.0)
    nacl.positions[1] += [0.05, -0.04, 0.03]
    out["NaCl primitive, distorted"] = nacl
    return out


@pytest.fixture(scope="module")
def structures(wbm):
    return _structures(wbm)


def _canonical(i: int, j: int, shift) -> tuple:
    s = tuple(int(v) for v in shift)
    a = (int(i), int(j), *s)
    b = (int(j), int(i), *(-v for v in s))
    return min(a, b)


def _detach(x):
    if isinstance(x, (tuple, list)):
        return tuple(_detach(v) for v in x)
    return x.detach().clone()


def upstream_intermediates(model, atoms: Atoms, dtype: torch.dtype) -> dict:
    """Upstream's graph and the outputs of its modules on ``atoms``."""
    graph = upstream_graph(model, atoms, dtype)
    store: dict = {}
    handles = []

    def keep(name):
        def hook(module, args, output):
            store[name] = _detach(output)

        return hook

    def keep_kwargs(module, args, kwargs, output):
        store["bond_basis_inputs"] = {k: _detach(v) for k, v in kwargs.items()}

    modules = {
        "atom_embedding": model.atom_embedding,
        "bond_basis": model.bond_basis_expansion,
        "angle_basis": model.angle_basis_expansion,
        "bond_embedding": model.bond_embedding,
        "bond_weights_ag": model.bond_weights_ag,
        "bond_weights_bg": model.bond_weights_bg,
        "angle_embedding": model.angle_embedding,
        "site_wise": model.site_wise,
        "readout_norm": model.readout_norm,
        "mlp": model.mlp,
    }
    for k, layer in enumerate(model.atom_conv_layers):
        modules[f"atom_conv.{k}"] = layer
    for k, layer in enumerate(model.bond_conv_layers):
        modules[f"bond_conv.{k}"] = layer
    for k, layer in enumerate(model.angle_layers):
        modules[f"angle_update.{k}"] = layer
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(keep(name)))
        handles.append(model.bond_basis_expansion.register_forward_hook(keep_kwargs, with_kwargs=True))
        with torch.no_grad():
            model([graph], task="em", return_site_energies=True)
    finally:
        for h in handles:
            h.remove()
    store["graph"] = graph
    store["model_atomref"] = model.composition_model.fc.weight.detach().reshape(-1).clone()
    return store


def our_intermediates(model, atoms: Atoms) -> dict:
    """Our graph and intermediate tensors, calling the model's pieces one by one."""
    from crossfunctional.neighbors import neighbor_list

    dtype = model.atomref.dtype
    z, ei, sh, vec = neighbor_list(atoms, model.atom_graph_cutoff).to_torch("cpu", dtype)
    out: dict = {"edge_index": ei, "edge_shifts": sh}
    with torch.no_grad():
        g = model.build_graph(ei, sh, vec, len(atoms))
        out["graph"] = g
        out["basis_ag"] = model.radial_basis(g.bond_length, model.rbf_frequencies_ag, model.atom_graph_cutoff)
        out["basis_bg"] = model.radial_basis(
            g.bond_length[g.short_bonds], model.rbf_frequencies_bg, model.bond_graph_cutoff
        )
        out["angle_basis"] = model.angular_basis(g.angle)
        atom, bond, angle, w_ag, w_bg = model.embed(z, g)
        out.update(atom_embedding=atom, bond_embedding=bond, angle_embedding=angle, bond_weights_ag=w_ag, bond_weights_bg=w_bg)
        for k, block in enumerate(model.blocks):
            atom, bond, new_angle = block(atom, bond, angle, w_ag, w_bg, g)
            if not block.update_angles:  # the model skips the last angle update (read by nothing); run it here
                new_angle = block.angle_update(atom, bond, angle, g)
            angle = new_angle
            out[f"atom_conv.{k}"], out[f"bond_conv.{k}"], out[f"angle_update.{k}"] = atom, bond, angle
        out["magmoms"] = model.magmoms(atom)
        atom = model.last_atom_conv(atom, bond, w_ag, g)
        out[f"atom_conv.{len(model.blocks)}"] = atom
        out["readout_norm"] = model.readout_norm(atom)
        site = model.site_energies(z, atom)
        out["site_energies"] = site
        out["mlp"] = site - model.atomref[z - 1]
    return out


def _bond_matching(up: dict, ours: dict):
    """Index of the upstream bond for each of our bonds, the upstream bond
    lengths, and the keys of both sides."""
    graph = up["graph"]
    atom_graph = graph.atom_graph.long().numpy()
    image = graph.neighbor_image.numpy()
    u2d = graph.undirected2directed.long().numpy()
    up_keys = [_canonical(atom_graph[d, 0], atom_graph[d, 1], np.rint(image[d])) for d in u2d]

    g = ours["graph"]
    n_edges = ours["edge_index"].shape[1]
    n_bonds = g.bond_length.shape[0]
    rep = torch.full((n_bonds,), n_edges, dtype=torch.long).scatter_reduce(
        0, g.edge_bond, torch.arange(n_edges), reduce="amin"
    )
    ei = ours["edge_index"].numpy()
    sh = ours["edge_shifts"].numpy()
    our_keys = [_canonical(ei[0, e], ei[1, e], sh[e]) for e in rep.numpy()]

    assert len(set(up_keys)) == len(up_keys), "upstream has duplicate bonds"
    assert len(set(our_keys)) == len(our_keys), "we have duplicate bonds"
    assert set(our_keys) == set(up_keys), "the bonds differ from upstream's"
    position = {k: u for u, k in enumerate(up_keys)}
    perm = np.array([position[k] for k in our_keys], dtype=np.int64)

    inputs = up["bond_basis_inputs"]
    vectors = inputs["center"] - (inputs["neighbor"] + inputs["image"] @ inputs["lattice"])
    up_lengths = torch.linalg.norm(vectors, dim=1)[inputs["undirected2directed"].long()].numpy()
    return perm, up_lengths, up_keys, our_keys


def _angle_matching(up: dict, ours: dict, up_keys, our_keys):
    """Index of the upstream angle for each of our angles, and upstream's angles."""
    bond_graph = up["graph"].bond_graph.long().numpy().reshape(-1, 5)
    unit = up["bond_basis"][2].numpy()  # normalised directed bond vectors
    cosine = np.sum(unit[bond_graph[:, 2]] * unit[bond_graph[:, 4]], axis=1) * (1 - 1e-6)
    up_theta = np.arccos(cosine)

    g = ours["graph"]
    short = g.short_bonds.numpy()
    our_theta = g.angle.numpy()
    ours_grouped: dict = defaultdict(list)
    up_grouped: dict = defaultdict(list)
    for a, (c, bi, bj) in enumerate(zip(g.angle_center.numpy(), g.angle_bond_i.numpy(), g.angle_bond_j.numpy())):
        ours_grouped[(int(c), our_keys[short[bi]], our_keys[short[bj]])].append(a)
    for a, (c, ui, _, uj, _) in enumerate(bond_graph):
        up_grouped[(int(c), up_keys[ui], up_keys[uj])].append(a)
    assert set(ours_grouped) == set(up_grouped), "the angle keys differ from upstream's"
    perm = np.full(our_theta.shape[0], -1, dtype=np.int64)
    for key, mine in ours_grouped.items():
        theirs = up_grouped[key]
        assert len(mine) == len(theirs), f"angle {key}: {len(mine)} here, {len(theirs)} upstream"
        perm[np.array(mine)[np.argsort(our_theta[mine], kind="stable")]] = np.array(theirs)[
            np.argsort(up_theta[theirs], kind="stable")
        ]
    assert (perm >= 0).all()
    return perm, up_theta


@pytest.fixture(scope="module")
def layer_data(structures, upstream_models, upstream_models64, our_models):
    """(upstream, ours, bond perm, upstream lengths, angle perm, upstream angles)
    per (structure, model name, dtype)."""
    cache = {}

    def get(label, name, dtype):
        key = (label, name, dtype)
        if key not in cache:
            up_model = (upstream_models64 if dtype == "float64" else upstream_models)[name]
            up = upstream_intermediates(up_model, structures[label], getattr(torch, dtype))
            ours = our_intermediates(our_models[(name, dtype)], structures[label])
            bond_perm, up_lengths, up_keys, our_keys = _bond_matching(up, ours)
            angle_perm, up_theta = _angle_matching(up, ours, up_keys, our_keys)
            cache[key] = (up, ours, bond_perm, up_lengths, angle_perm, up_theta)
        return cache[key]

    return get


LABELS = ["wbm", "bcc Fe primitive, strained", "NaCl primitive, distorted"]


def _label(structures, label):
    return next(k for k in structures if k.startswith(label))


@pytest.mark.parametrize("label", LABELS)
def test_graph_counts(label, structures, layer_data):
    """Same undirected bonds (by key), short bonds and angles as upstream."""
    label = _label(structures, label)
    up, ours, bond_perm, up_lengths, angle_perm, up_theta = layer_data(label, MODEL_NAMES[0], "float64")
    g = ours["graph"]
    graph = up["graph"]
    assert g.bond_length.shape[0] == graph.undirected2directed.shape[0] == len(bond_perm)
    assert ours["edge_index"].shape[1] == graph.atom_graph.shape[0]
    # no bond within rounding of the 3 Å boundary, where < and <= could differ
    assert np.abs(up_lengths - 3.0).min() > 1e-5
    up_short = set(np.nonzero(up_lengths < 3.0)[0].tolist())
    our_short = set(bond_perm[g.short_bonds.numpy()].tolist())
    assert our_short == up_short and len(our_short) > 0
    assert g.angle.shape[0] == graph.bond_graph.shape[0] == len(angle_perm) > 0
    np.testing.assert_allclose(g.bond_length.numpy(), up_lengths[bond_perm], rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.angle.numpy(), up_theta[angle_perm], rtol=0, atol=1e-9)


#: float32 only: angles within this of pi (antiparallel bonds, e.g. a bond to
#: an atom's own image and its reverse) sit at the acos cap cos * (1 - 1e-6),
#: where acos amplifies float32 rounding: d(theta) ~ 6e-8 / sqrt(2e-6) ~ 4e-5
#: rad, ~6e-4 in sin(15 theta). Those rows get this absolute tolerance.
NEAR_PI = 0.01
ATOL_NEAR_PI_FLOAT32 = 3e-3


def _close(ours, theirs, dtype, what, loose_rows=None):
    rtol, atol = TOL[dtype]
    ours = np.asarray(ours.detach().numpy(), dtype=np.float64)
    theirs = np.asarray(theirs.detach().numpy(), dtype=np.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != upstream {theirs.shape}"
    if dtype == "float32" and loose_rows is not None and loose_rows.any():
        np.testing.assert_allclose(
            ours[loose_rows], theirs[loose_rows], rtol=rtol, atol=ATOL_NEAR_PI_FLOAT32, err_msg=f"{what} (near pi)"
        )
        ours, theirs = ours[~loose_rows], theirs[~loose_rows]
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("label", LABELS)
def test_layers(label, name, dtype, structures, layer_data):
    label = _label(structures, label)
    up, ours, bond_perm, _, angle_perm, up_theta = layer_data(label, name, dtype)
    near_pi = np.pi - up_theta[angle_perm] < NEAR_PI
    short = ours["graph"].short_bonds.numpy()
    short_up = bond_perm[short]

    # embeddings and bases
    _close(ours["atom_embedding"], up["atom_embedding"], dtype, "atom_embedding")
    _close(ours["basis_ag"], up["bond_basis"][0][bond_perm], dtype, "radial basis (atom graph)")
    _close(ours["basis_bg"], up["bond_basis"][1][short_up], dtype, "radial basis (bond graph)")
    _close(ours["angle_basis"], up["angle_basis"][angle_perm], dtype, "angular basis", near_pi)
    _close(ours["bond_embedding"], up["bond_embedding"][bond_perm], dtype, "bond_embedding")
    _close(ours["bond_weights_ag"], up["bond_weights_ag"][bond_perm], dtype, "bond_weights_ag")
    _close(ours["bond_weights_bg"], up["bond_weights_bg"][short_up], dtype, "bond_weights_bg")
    _close(ours["angle_embedding"], up["angle_embedding"][angle_perm], dtype, "angle_embedding", near_pi)

    # message passing: atoms row by row, bonds and angles through the matching
    n_blocks = sum(1 for k in ours if k.startswith("bond_conv."))
    assert n_blocks == 3
    for k in range(n_blocks):
        _close(ours[f"atom_conv.{k}"], up[f"atom_conv.{k}"], dtype, f"atom_conv_layers[{k}]")
        _close(ours[f"bond_conv.{k}"], up[f"bond_conv.{k}"][bond_perm], dtype, f"bond_conv_layers[{k}]")
        _close(ours[f"angle_update.{k}"], up[f"angle_update.{k}"][angle_perm], dtype, f"angle_layers[{k}]", near_pi)
    _close(ours[f"atom_conv.{n_blocks}"], up[f"atom_conv.{n_blocks}"], dtype, f"atom_conv_layers[{n_blocks}]")

    # readout
    _close(ours["magmoms"], up["site_wise"].abs().reshape(-1), dtype, "magmoms (|site_wise|)")
    _close(ours["readout_norm"], up["readout_norm"], dtype, "readout_norm")
    _close(ours["mlp"], up["mlp"].reshape(-1), dtype, "readout mlp (site energies without AtomRef)")
    z = up["graph"].atomic_number.long()
    atomref = up["mlp"].reshape(-1) + up["model_atomref"][z - 1]
    _close(ours["site_energies"], atomref, dtype, "site energies (readout + AtomRef)")
