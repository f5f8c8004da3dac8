"""Our TorchScript CHGNet against the upstream ``chgnet`` package, both weights.

Two levels of agreement are asserted:

- float32 (the shipped precision, ours through the ASE calculator) against
  upstream's own float32 ``predict_graph``: energy 2e-5 eV/atom, forces 2e-4
  eV/Å (largest component), stress 0.01 GPa, magmoms 1e-4 μB, site energies
  1e-4 eV. At this level both sides carry float32 rounding: over all 972 WBM
  structures x 2 (``benchmarks/equivalence.py``) about 0.5 % of the cases
  exceed 2e-4 eV/Å in forces (up to ~4.4e-4), and there each side's own
  float32 result is as far from its float64 result (up to ~5e-4, often near
  collinear bond pairs, whose angle sits at the acos cap). The 30 structures
  here are a fixed random draw, not picked to pass.
- float64 on both sides (upstream's modules cast to float64, see
  ``conftest.upstream_double``): energy 1e-7 eV/atom, forces 1e-6 eV/Å,
  magmoms and site energies 1e-7 (seen: ~1e-9), so that a difference in the
  algorithm far below float32 noise (a constant, a cutoff comparison, a
  missing angle) would still show.

Upstream divides the stress by the signed cell volume (a left-handed cell flips
its sign); ``conftest.upstream_predict`` undoes that, and
``test_left_handed_cell`` checks that our stress does not depend on the
handedness of the cell.

The CI subset is 30 random WBM structures, each also rattled (0.05 Å) and
strained (up to 3 %); ``benchmarks/equivalence.py`` runs all 972.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from conftest import MODEL_NAMES, QUANTITIES, TOLERANCES, boxed, failures, perturbed

N_WBM = 30
N_WBM_FLOAT64 = 8
#: float64 on both sides: limited by upstream's float32 volume (stress, ~1e-7
#: relative) and its float32 constant 1/sqrt(2) in the angle basis (~1e-8).
TOLERANCES_64 = {"energy": 1e-7, "forces": 1e-6, "stress": 1e-4, "magmoms": 1e-7, "site_energies": 1e-7}


def _cases(wbm, n: int, seed: int) -> list[tuple[str, Atoms]]:
    rng = np.random.default_rng(seed)
    out = []
    for mid, atoms in wbm(n, seed=seed):
        out.append((mid, atoms))
        out.append((f"{mid}+perturbed", perturbed(atoms, rng, rattle=0.05, strain=0.03)))
    return out


@pytest.fixture(scope="module")
def wbm_cases(wbm):
    return _cases(wbm, N_WBM, seed=2025)


def _assert_all_within(results: list[tuple[str, dict[str, float]]], tolerances: dict[str, float]) -> None:
    bad = [(label, failures(dev, tolerances)) for label, dev in results]
    bad = [(label, f) for label, f in bad if f]
    worst = {q: max(results, key=lambda r: np.nan_to_num(r[1][q]))[0] for q in QUANTITIES}
    assert not bad, f"{len(bad)} of {len(results)} structures disagree with upstream: {bad[:5]}; worst: {worst}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_wbm_float32(name, wbm_cases, compare):
    results = [(label, compare(atoms, name)) for label, atoms in wbm_cases]
    # every structure is periodic: the stress must have been compared
    assert all(np.isfinite(dev["stress"]) for _, dev in results)
    _assert_all_within(results, TOLERANCES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_wbm_float64(name, wbm, compare):
    results = [(label, compare(atoms, name, "float64")) for label, atoms in _cases(wbm, N_WBM_FLOAT64, seed=7)]
    _assert_all_within(results, TOLERANCES_64)


# ----------------------------------------------------------------- edge cases
def _check(compare, atoms, name, reference=None):
    for dtype, tol in (("float32", TOLERANCES), ("float64", TOLERANCES_64)):
        dev = compare(atoms, name, dtype, reference=reference)
        assert not failures(dev, tol), f"{dtype}: {failures(dev, tol)}"
    return dev


@pytest.fixture
def upstream_ignoring_isolated(upstream_models, upstream_models64):
    """Upstream converters set to accept isolated atoms, restored afterwards."""
    converters = [m.graph_converter for m in (*upstream_models.values(), *upstream_models64.values())]
    saved = [c.on_isolated_atoms for c in converters]
    for c in converters:
        c.set_isolated_atom_response("ignore")
    yield
    for c, s in zip(converters, saved):
        c.set_isolated_atom_response(s)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_isolated_atom(name, compare, our_calcs, upstream_ignoring_isolated, caplog):
    atoms = Atoms("Fe", positions=[[1.0, 2.0, 3.0]], cell=np.eye(3) * 14.0, pbc=True)
    with caplog.at_level(logging.WARNING):
        dev = _check(compare, atoms, name)
    assert any("no neighbour" in r.getMessage() for r in caplog.records)
    assert np.isfinite(dev["stress"])  # the stress was compared
    # an isolated atom is its AtomRef energy plus the network's constant, with no force
    atoms.calc = our_calcs[(name, "float64")]
    assert np.all(atoms.get_forces() == 0.0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_isolated_atoms_pair(name, compare, upstream_ignoring_isolated):
    """Two atoms further apart than the cutoff in a large box: every atom isolated."""
    atoms = Atoms("FeO", positions=[[0, 0, 0], [7.0, 7.0, 7.0]], cell=np.eye(3) * 20.0, pbc=True)
    _check(compare, atoms, name)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_molecule_in_box(name, compare):
    atoms = boxed(molecule("CH3CH2OH"), vacuum=8.0)
    atoms.rattle(0.05, seed=3)
    _check(compare, atoms, name)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_molecule_without_pbc(name, compare, our_calcs):
    """pbc=False (and no cell at all) against upstream in a large box; no stress."""
    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=4)
    assert not mol.pbc.any() and mol.cell.volume == 0
    reference = boxed(mol, vacuum=10.0)
    _check(compare, mol, name, reference=reference)
    mol.calc = our_calcs[(name, "float32")]
    with pytest.raises(PropertyNotImplementedError):
        mol.get_stress()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_no_short_bonds(name, compare, our_models):
    """fcc Ar at 5.26 Å: nearest neighbours 3.72 Å, so no bond under 3 Å and no angles."""
    from crossfunctional.neighbors import neighbor_list

    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    atoms.rattle(0.03, seed=5)
    model = our_models[(name, "float64")]
    z, ei, sh, vec = neighbor_list(atoms, 6.0).to_torch("cpu", model.atomref.dtype)
    graph = model.build_graph(ei, sh, vec, len(atoms))
    assert graph.short_bonds.numel() == 0 and graph.angle.numel() == 0 and graph.bond_length.numel() > 0
    _check(compare, atoms, name)


@pytest.mark.parametrize(
    "label, atoms",
    [
        ("sc Po 2.5 A", Atoms("Po", cell=np.eye(3) * 2.5, pbc=True)),
        ("fcc Cu primitive", bulk("Cu", "fcc", a=3.6)),
        ("bcc Fe primitive", bulk("Fe", "bcc", a=2.87)),
        ("NaCl primitive, strained", bulk("NaCl", "rocksalt", a=5.64)),
    ],
)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cell_smaller_than_cutoff(name, label, atoms, compare):
    """Cells shorter than the 6 Å cutoff: atoms see their own periodic images,
    and several bonds join the same pair of atoms through different images."""
    from crossfunctional.neighbors import neighbor_list

    atoms = atoms.copy()
    if len(atoms) > 1:
        atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.01, 0], [0.01, 0.99, 0.0], [0, 0, 1.01]]), scale_atoms=True)
        atoms.positions[1] += [0.04, -0.03, 0.02]
    edges = neighbor_list(atoms, 6.0)
    assert np.any(edges.edge_index[0] == edges.edge_index[1])  # self-image edges exist
    _check(compare, atoms, name)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_strongly_triclinic(name, compare, our_calcs):
    """A strained, rattled rocksalt crystal in a strongly skewed (non-reduced)
    cell: the same crystal as in its reduced cell, so the energy per atom and
    the stress must not change either."""
    reduced = bulk("NaCl", "rocksalt", a=5.64) * (1, 1, 2)
    reduced.set_cell(reduced.cell.array @ np.array([[1.01, 0.02, 0], [0.02, 0.98, 0.01], [0, 0.01, 1.0]]), scale_atoms=True)
    reduced.rattle(0.05, seed=6)
    skew = np.array([[1, 0, 0], [2, 1, 0], [-1, 2, 1]])  # unimodular, det 1
    atoms = reduced.copy()
    atoms.set_cell(skew @ reduced.cell.array, scale_atoms=False)
    atoms.wrap()
    angles = atoms.cell.angles()
    assert np.linalg.det(atoms.cell.array) > 0 and (min(angles) < 30 or max(angles) > 150), angles
    _check(compare, atoms, name)
    calc = our_calcs[(name, "float64")]
    reduced.calc = calc
    atoms.calc = calc
    assert abs(atoms.get_potential_energy() - reduced.get_potential_energy()) < 1e-8
    np.testing.assert_allclose(atoms.get_stress(), reduced.get_stress(), atol=1e-10)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_left_handed_cell(name, wbm, compare, our_calcs):
    """The same crystal with two cell vectors swapped (a left-handed cell) has
    the same stress here; upstream's sign flip is undone in the comparison."""
    _, atoms = wbm(1, seed=11)[0]
    atoms = perturbed(atoms, np.random.default_rng(1))
    left = atoms.copy()
    left.set_cell(atoms.cell.array[[1, 0, 2]], scale_atoms=False)
    assert np.linalg.det(left.cell.array) < 0
    _check(compare, left, name)
    calc = our_calcs[(name, "float64")]
    atoms.calc = calc
    right_stress = atoms.get_stress()
    left.calc = calc
    np.testing.assert_allclose(left.get_stress(), right_stress, atol=1e-10)
    assert np.abs(right_stress).max() > 1e-4  # a stress that could have flipped


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_site_energies(name, wbm, upstream_models, our_calcs):
    """Site energies sum to the total energy and equal upstream's site energies."""
    from conftest import upstream_predict

    rng = np.random.default_rng(12)
    for _, atoms in wbm(4, seed=12):
        atoms = perturbed(atoms, rng)
        atoms.calc = our_calcs[(name, "float32")]
        energies = atoms.get_potential_energies()
        assert energies.shape == (len(atoms),)
        assert abs(energies.sum() - atoms.get_potential_energy()) < 1e-9 * len(atoms) + 1e-12
        ref = upstream_predict(upstream_models[name], atoms)
        np.testing.assert_allclose(energies, ref["site_energies"], atol=TOLERANCES["site_energies"], rtol=0)
        # the AtomRef is part of every site energy: they differ between elements
        # by far more than the network part does (checked against upstream above)
        assert abs(energies.sum() / len(atoms) - ref["energy"]) < TOLERANCES["energy"]


def _compiled_path_cases(wbm, n: int, seed: int) -> list[tuple[str, Atoms]]:
    """Cases for the compiled runners: ``n`` perturbed WBM structures, a
    rattled Si 64 (second to last) and a one-atom Cu cell (last, too small
    for the compiled network)."""
    rng = np.random.default_rng(seed)
    cases = [(mid, perturbed(atoms, rng)) for mid, atoms in wbm(n, seed=seed)]
    si = bulk("Si", "diamond", a=5.43, cubic=True) * 2
    si.rattle(0.02, seed=3)
    return cases + [("Si64", si), ("Cu, one atom", perturbed(bulk("Cu"), rng))]


@pytest.fixture(scope="module")
def aot_cache(tmp_path_factory, our_models):
    """(cache folder holding the ahead-of-time package of chgnet-r2scan in
    float32, the log messages of its compilation), compiled once per module."""
    from crossfunctional.calculators import CrossFunctionalCalculator

    folder = tmp_path_factory.mktemp("aot_cache")
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("crossfunctional.calculators.aot")
    logger.addHandler(handler)
    old = os.environ.get("CROSSFUNCTIONAL_CACHE_DIR")
    os.environ["CROSSFUNCTIONAL_CACHE_DIR"] = str(folder)
    try:
        CrossFunctionalCalculator(our_models[("chgnet-r2scan", "float32")], compile="aot")
    finally:
        logger.removeHandler(handler)
        if old is None:
            del os.environ["CROSSFUNCTIONAL_CACHE_DIR"]
        else:
            os.environ["CROSSFUNCTIONAL_CACHE_DIR"] = old
    return folder, messages


def test_aot_runner_matches_upstream_and_is_cached(aot_cache, wbm, upstream_models64, our_models, tmp_path, monkeypatch, caplog):
    """``compile="aot"`` (the network and its gradient compiled ahead of time,
    dynamic sizes, float32) against upstream in float64 at the float32
    tolerances on WBM structures of several sizes and Si 64. The package is
    cached: later calculators load it without compiling and give the same
    numbers; a package whose key does not match (another machine's, say) is
    never loaded but compiled again; a TorchScript file is refused."""
    import crossfunctional.calculators.aot as aot
    from crossfunctional.calculators import CrossFunctionalCalculator
    from crossfunctional.models import Graph, ModelError, export
    from crossfunctional.neighbors import neighbor_list
    from conftest import ours_predict, upstream_predict, deviations

    folder, messages = aot_cache
    assert any("compiling the network ahead of time" in m for m in messages)
    assert any(m.startswith("compiled in") for m in messages)
    packages = sorted((folder / "aot").glob("*.pt2"))
    assert len(packages) == 1 and packages[0].with_suffix(".json").is_file()

    def no_compiler(*args):
        raise AssertionError("compiled again")

    monkeypatch.setattr(aot, "_compile", no_compiler)
    monkeypatch.setenv("CROSSFUNCTIONAL_CACHE_DIR", str(folder))
    name = "chgnet-r2scan"
    calc = CrossFunctionalCalculator(our_models[(name, "float32")], compile="aot")
    calls = []
    package = calc.runner._package
    calc.runner._package = lambda *args: calls.append(1) or package(*args)
    cases = _compiled_path_cases(wbm, 4, seed=13)
    si = cases[-2][1]
    results = [(label, deviations(upstream_predict(upstream_models64[name], atoms), ours_predict(calc, atoms)))
               for label, atoms in cases]
    _assert_all_within(results, TOLERANCES)

    # every graph with at least two atoms, bonds, short bonds and angles ran the package (the others: TorchScript)
    def compiled_sizes(atoms):
        z, ei, sh, vec = neighbor_list(atoms, calc.cutoff).to_torch(calc.device, calc.dtype)
        g = Graph(*calc.runner.script.build_graph(ei, sh, vec, z.shape[0]))
        return min(z.shape[0], g.bond_length.shape[0], g.short_bonds.shape[0], g.angle.shape[0]) >= 2

    expected = [compiled_sizes(atoms) for _, atoms in cases]
    assert len(calls) == sum(expected) and sum(expected) >= 4 and not expected[-1]
    # and it agrees with the TorchScript runner to float32 rounding
    a, b = ours_predict(calc, si), ours_predict(CrossFunctionalCalculator(our_models[(name, "float32")], compile=False), si)
    assert abs(a["energy"] - b["energy"]) < 1e-4
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-4, rtol=0)

    # a key that does not match this model and machine (in a copy of the cache): compiled again, never loaded
    import shutil

    shutil.copytree(folder, tmp_path / "copy")
    monkeypatch.setenv("CROSSFUNCTIONAL_CACHE_DIR", str(tmp_path / "copy"))
    meta = tmp_path / "copy" / "aot" / packages[0].with_suffix(".json").name
    key = json.loads(meta.read_text())
    meta.write_text(json.dumps({**key, "instruction_set": "cpu AVX512 of another machine"}))
    with caplog.at_level("WARNING", logger="crossfunctional.calculators.aot"), pytest.raises(ModelError, match="compiled again"):
        CrossFunctionalCalculator(our_models[(name, "float32")], compile="aot")
    assert "instruction_set cpu AVX512 of another machine" in caplog.text
    assert not list((tmp_path / "copy" / "aot").glob("*.pt2"))  # the foreign package is gone
    with pytest.raises(ModelError, match="TorchScript"):
        CrossFunctionalCalculator(str(export(our_models[(name, "float32")], tmp_path / "m.pt")), compile="aot")
    with pytest.raises(ValueError, match="compile must be"):
        CrossFunctionalCalculator(name, compile="fast")


def test_default_calculator_runs_the_cached_package(aot_cache, monkeypatch, tmp_path, caplog):
    """``compile="auto"`` (the default): a registered model on CPU runs the
    ahead-of-time package from the cache (same numbers as ``compile="aot"``);
    ``CROSSFUNCTIONAL_COMPILE=off`` and TorchScript files run TorchScript;
    a compilation that fails falls back to TorchScript with a warning."""
    import torch

    import crossfunctional.calculators.aot as aot
    from crossfunctional.calculators import CrossFunctionalCalculator
    from crossfunctional.calculators.calculator import CompiledRunner
    from conftest import ours_predict

    from crossfunctional.models import export

    folder, _ = aot_cache
    monkeypatch.setenv("CROSSFUNCTIONAL_CACHE_DIR", str(folder))
    monkeypatch.delenv("CROSSFUNCTIONAL_COMPILE")

    def no_compiler(*args):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(aot, "_compile", no_compiler)
    calc = CrossFunctionalCalculator("chgnet-r2scan")
    assert isinstance(calc.runner, CompiledRunner) and calc.runner.mode == "aot"
    assert calc.todict()["compile"] == "auto"
    si = bulk("Si", "diamond", a=5.43, cubic=True) * 2
    si.rattle(0.02, seed=4)
    a = ours_predict(calc, si)
    b = ours_predict(CrossFunctionalCalculator("chgnet-r2scan", compile="aot"), si)
    assert a["energy"] == b["energy"] and np.array_equal(a["forces"], b["forces"])
    monkeypatch.setenv("CROSSFUNCTIONAL_COMPILE", "off")
    assert isinstance(CrossFunctionalCalculator("chgnet-r2scan").runner, torch.jit.ScriptModule)
    monkeypatch.delenv("CROSSFUNCTIONAL_COMPILE")
    # float64 has no package in the cache: its compilation fails here, so TorchScript runs
    with caplog.at_level("WARNING", logger="crossfunctional.calculators.calculator"):
        calc64 = CrossFunctionalCalculator("chgnet-r2scan", dtype="float64")
    assert isinstance(calc64.runner, torch.jit.ScriptModule)
    assert "no C++ compiler here" in caplog.text and "running the TorchScript model instead" in caplog.text
    assert not list((folder / "aot").glob("*.tmp*"))  # nothing half-written
    # the failure is remembered: the next default calculator does not try again
    calls = []
    monkeypatch.setattr(aot, "_compile", lambda *args: calls.append(1))
    caplog.clear()
    with caplog.at_level("WARNING", logger="crossfunctional.calculators.calculator"):
        assert isinstance(CrossFunctionalCalculator("chgnet-r2scan", dtype="float64").runner, torch.jit.ScriptModule)
    assert not calls and "compiling failed before on this machine" in caplog.text
    pt = export("chgnet-r2scan", tmp_path / "m.pt")
    assert isinstance(CrossFunctionalCalculator(str(pt)).runner, torch.jit.ScriptModule)


def test_compiled_runner_matches_upstream(wbm, upstream_models64, our_models):
    """``compile=True`` (the network through ``torch.compile``, dynamic shapes,
    float32) against upstream in float64 at the float32 tolerances, on WBM
    structures of several sizes (rattled and strained) and Si 64: one
    compilation serves them all, and cells with fewer than two atoms go to the
    TorchScript runner. The reference is float64 because the draw holds one of
    the ill-conditioned structures of the module docstring (wbm-4-1778: the
    TorchScript runner and upstream's float32 differ by 2.6e-4 eV/Å there,
    each 1.6-2e-4 from float64)."""
    import torch
    from torch._dynamo.utils import counters

    from crossfunctional.calculators import CrossFunctionalCalculator
    from conftest import ours_predict, upstream_predict, deviations

    name = "chgnet-r2scan"
    calc = CrossFunctionalCalculator(our_models[(name, "float32")], compile=True)
    compiled_calls = []
    network = calc.runner._network
    calc.runner._network = lambda *args: compiled_calls.append(1) or network(*args)
    cases = _compiled_path_cases(wbm, 5, seed=12)
    si = cases[-2][1]
    results = []
    for label, atoms in cases:
        dev = deviations(upstream_predict(upstream_models64[name], atoms), ours_predict(calc, atoms))
        results.append((label, dev))
        if label == cases[0][0]:
            graphs_after_first = counters["stats"]["unique_graphs"]
    _assert_all_within(results, TOLERANCES)
    assert len(compiled_calls) == len(cases) - 1  # all but the one-atom cell ran compiled
    assert counters["stats"]["unique_graphs"] == graphs_after_first, "compiled again for another graph size"
    # and it agrees with the TorchScript runner to float32 rounding
    ts = CrossFunctionalCalculator(our_models[(name, "float32")])
    a, b = ours_predict(calc, si), ours_predict(ts, si)
    assert abs(a["energy"] - b["energy"]) < 1e-6
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-4, rtol=0)
    assert torch.is_grad_enabled()
    # the deterministic-algorithms switch of multi-threaded CPU calls is restored
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory
