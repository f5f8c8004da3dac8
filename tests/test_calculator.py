"""The ASE calculator: gradients against finite differences, caching,
precision, devices, periodicity, input errors, TorchScript export."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from conftest import MODEL_NAMES, perturbed

from crossfunctional.calculators import CrossFunctionalCalculator
from crossfunctional.models import ModelError, export, load_model, model_metadata
from crossfunctional.neighbors import StructureError

PROPERTIES = ("energy", "forces", "stress", "magmoms", "energies")
#: Central differences in float64: the error falls as eps^2 down to ~1e-9 eV/Å
#: (forces, eps = 3e-6 Å) and ~1e-10 eV/Å³ (stress, strain 1e-6), far below
#: the asserted 1e-7 eV/Å and 1e-9 eV/Å³.
FD_EPS_FORCES = 3e-6
FD_EPS_STRAIN = 1e-6


def _wbm_perturbed(wbm, n_max: int = 8, seed: int = 31) -> Atoms:
    """A small multi-element WBM crystal, rattled and strained."""
    for _, atoms in wbm(60, seed=seed):
        if 4 <= len(atoms) <= n_max and len(set(atoms.numbers)) >= 2:
            return perturbed(atoms, np.random.default_rng(seed))
    raise AssertionError("no small WBM structure found")


def _slab() -> Atoms:
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=9.0)
    slab.pbc = (True, True, False)
    slab.rattle(0.05, seed=2)
    return slab


def _molecule() -> Atoms:
    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=3)
    return mol


# -------------------------------------------------------- finite differences
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forces_and_stress_match_finite_differences(name, wbm, our_calcs):
    atoms = _wbm_perturbed(wbm)
    atoms.calc = our_calcs[(name, "float64")]
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    assert np.abs(forces).max() > 0.05 and np.abs(stress).max() > 1e-4  # non-trivial
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=FD_EPS_FORCES), rtol=0, atol=1e-7)
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=FD_EPS_STRAIN), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "label, atoms",
    [
        ("bcc Fe primitive (own images within the cutoff)", bulk("Fe", "bcc", a=2.87)),
        ("NaCl primitive, strained", bulk("NaCl", "rocksalt", a=5.5)),
        ("strongly skewed cell", bulk("Si", "diamond", a=5.43)),
    ],
)
def test_stress_small_and_skewed_cells(label, atoms, our_calcs):
    """The virial over edges to periodic images, against strain finite differences."""
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.03, 0.0], [0.01, 0.97, 0.02], [0.0, 0.01, 1.01]]), scale_atoms=True)
    if label.startswith("strongly"):
        atoms.set_cell(np.array([[1, 0, 0], [1, 1, 0], [2, -1, 1]]) @ atoms.cell.array, scale_atoms=False)
    if len(atoms) > 1:
        atoms.positions[1] += [0.05, -0.04, 0.03]
    atoms.calc = our_calcs[("chgnet-r2scan", "float64")]
    stress = atoms.get_stress()
    assert np.abs(stress).max() > 1e-3
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=FD_EPS_STRAIN), rtol=0, atol=1e-9)
    if len(atoms) > 1:
        numerical = calculate_numerical_forces(atoms, eps=FD_EPS_FORCES)
        np.testing.assert_allclose(atoms.get_forces(), numerical, rtol=0, atol=1e-7)


@pytest.mark.parametrize("label", ["molecule", "slab"])
def test_forces_finite_differences_nonperiodic(label, our_calcs):
    atoms = _molecule() if label == "molecule" else _slab()
    atoms.calc = our_calcs[("chgnet-0.3.0", "float64")]
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 0.05
    some = [0, 3, len(atoms) - 1]  # a few atoms keep the test fast
    numerical = calculate_numerical_forces(atoms, eps=FD_EPS_FORCES, iatoms=some)
    np.testing.assert_allclose(forces[some], numerical, rtol=0, atol=1e-7)
    # no net force on a free molecule or slab (translation invariance)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10)


# ------------------------------------------------------------------- caching
class CountingModel(torch.nn.Module):
    """Wraps a model and counts its forward calls."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.atom_graph_cutoff = inner.atom_graph_cutoff
        self.metadata_json = inner.metadata_json
        self.calls = 0

    def forward(self, *args):
        self.calls += 1
        return self.inner(*args)


def test_results_cached_until_atoms_change(wbm, our_models):
    model = CountingModel(our_models[("chgnet-r2scan", "float32")])
    calc = CrossFunctionalCalculator(model)
    atoms = _wbm_perturbed(wbm)
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    atoms.get_stress()
    atoms.get_magnetic_moments()
    atoms.get_potential_energies()
    atoms.get_potential_energy()
    assert model.calls == 1

    same = atoms.copy()  # equal positions, cell, numbers, pbc: served from the cache
    same.calc = calc
    assert same.get_potential_energy() == energy
    assert model.calls == 1

    atoms.positions[0, 0] += 0.01
    moved = atoms.get_potential_energy()
    assert model.calls == 2 and moved != energy
    assert not np.array_equal(atoms.get_forces(), forces)
    assert model.calls == 2

    atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)
    atoms.get_stress()
    assert model.calls == 3

    numbers = atoms.numbers.copy()
    numbers[0] = 3 if numbers[0] != 3 else 4
    atoms.numbers = numbers
    atoms.get_forces()
    assert model.calls == 4

    calc.reset()
    atoms.get_magnetic_moments()
    assert model.calls == 5


# ----------------------------------------------------------------- precision
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_float32_matches_float64(name, wbm, our_calcs):
    for _, atoms in wbm(5, seed=41):
        atoms = perturbed(atoms, np.random.default_rng(41))
        res = {}
        for dtype in ("float32", "float64"):
            atoms.calc = our_calcs[(name, dtype)]
            res[dtype] = (atoms.get_potential_energy() / len(atoms), atoms.get_forces(), atoms.get_stress())
        assert abs(res["float32"][0] - res["float64"][0]) < 1e-5
        np.testing.assert_allclose(res["float32"][1], res["float64"][1], rtol=0, atol=2e-4)
        np.testing.assert_allclose(res["float32"][2], res["float64"][2], rtol=0, atol=1e-5)  # eV/Å³


def test_dtype_is_used():
    calc = CrossFunctionalCalculator("chgnet-0.3.0", dtype="float64")
    assert calc.dtype == torch.float64
    with pytest.raises(ValueError, match="float16"):
        CrossFunctionalCalculator("chgnet-0.3.0", dtype="float16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_matches_cpu(dtype, wbm, our_calcs):
    atoms = _wbm_perturbed(wbm)
    atoms.calc = our_calcs[("chgnet-r2scan", "float64")]
    ref = (atoms.get_potential_energy() / len(atoms), atoms.get_forces(), atoms.get_stress())
    calc = CrossFunctionalCalculator("chgnet-r2scan", device="cuda", dtype=dtype)
    assert calc.device.type == "cuda"
    atoms.calc = calc
    assert abs(atoms.get_potential_energy() / len(atoms) - ref[0]) < 1e-5
    np.testing.assert_allclose(atoms.get_forces(), ref[1], rtol=0, atol=2e-4)
    np.testing.assert_allclose(atoms.get_stress(), ref[2], rtol=0, atol=1e-5)


def test_cuda_unavailable_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ModelError, match="CUDA is not available"):
        CrossFunctionalCalculator("chgnet-r2scan", device="cuda")


# --------------------------------------------------------------- periodicity
@pytest.mark.parametrize(
    "label, atoms",
    [
        ("molecule, no cell", _molecule()),
        ("molecule in a cell, pbc=False", Atoms(_molecule(), cell=np.eye(3) * 12.0, pbc=False)),
        ("slab, pbc=(1, 1, 0)", _slab()),
    ],
)
def test_no_stress_without_full_periodicity(label, atoms, our_calcs):
    atoms = atoms.copy()
    atoms.calc = our_calcs[("chgnet-r2scan", "float32")]
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (len(atoms), 3)
    assert atoms.get_magnetic_moments().shape == (len(atoms),)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_slab_equals_periodic_cell_with_vacuum(our_calcs):
    """With more vacuum than the cutoff, the slab (pbc z off) and the same cell
    fully periodic have the same energy and forces."""
    slab = _slab()
    assert slab.cell.lengths()[2] - np.ptp(slab.positions[:, 2]) > 12.0
    periodic = slab.copy()
    periodic.pbc = True
    calc = our_calcs[("chgnet-r2scan", "float64")]
    slab.calc = calc
    periodic.calc = calc
    assert abs(slab.get_potential_energy() - periodic.get_potential_energy()) < 1e-10
    np.testing.assert_allclose(slab.get_forces(), periodic.get_forces(), atol=1e-10)
    # and a molecule does not care about its (non-periodic) cell or position
    mol = _molecule()
    mol.calc = calc
    shifted = Atoms(mol, cell=np.eye(3) * 3.0, pbc=False)  # cell smaller than the molecule
    shifted.positions += [10.0, -4.0, 2.5]
    shifted.calc = calc
    assert abs(mol.get_potential_energy() - shifted.get_potential_energy()) < 1e-10
    np.testing.assert_allclose(mol.get_forces(), shifted.get_forces(), atol=1e-10)


# --------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "label, atoms, pattern",
    [
        ("americium", Atoms("Am", cell=np.eye(3) * 4.0, pbc=True), r"Am \(Z=95\).*94"),
        ("element 0", Atoms(numbers=[0, 1], positions=[[0, 0, 0], [1, 0, 0]]), r"Z=0"),
        ("empty", Atoms(cell=np.eye(3) * 4.0, pbc=True), r"empty structure"),
        ("too close", Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.3]]), r"0\.300 Å apart, closer than 0\.5 Å"),
        ("too close via images", Atoms("Cu", cell=np.eye(3) * 0.4, pbc=True), r"closer than 0\.5 Å"),
        ("NaN position", Atoms("H2", positions=[[0, 0, 0], [0, 0, np.nan]]), r"positions contain NaN"),
        ("NaN cell", Atoms("Cu", cell=[[np.nan, 0, 0], [0, 3, 0], [0, 0, 3]], pbc=True), r"cell contains NaN"),
        ("zero cell, pbc", Atoms("Cu", pbc=True), r"degenerate \(zero volume\)"),
        ("flat cell", Atoms("Cu2", positions=[[0, 0, 0], [1.2, 1.2, 0]], cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True), r"degenerate \(zero volume\).*xyz"),
        ("zero vector in slab plane", Atoms("Cu", cell=[[3, 0, 0], [0, 0, 0], [0, 0, 10]], pbc=(True, True, False)), r"degenerate"),
    ],
)
def test_bad_structure_is_named(label, atoms, pattern, our_calcs):
    atoms.calc = our_calcs[("chgnet-r2scan", "float32")]
    with pytest.raises(StructureError, match=pattern):
        atoms.get_potential_energy()


def test_unknown_model_name():
    with pytest.raises(ModelError, match=r"unknown model 'chgnet-9\.9'.*chgnet-r2scan"):
        CrossFunctionalCalculator("chgnet-9.9")


def test_missing_model_file(tmp_path):
    for missing in (tmp_path / "nowhere" / "model.pt", tmp_path / "model.pth.tar"):
        with pytest.raises(ModelError, match="not .*existing file") as err:
            CrossFunctionalCalculator(str(missing))
        assert str(missing) in str(err.value)
    from crossfunctional.models import from_checkpoint

    with pytest.raises(ModelError, match="model file not found"):
        from_checkpoint(tmp_path / "gone.pth.tar")


def test_unreadable_model_file(tmp_path):
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ModelError, match="junk.pth.tar"):
        CrossFunctionalCalculator(str(junk))


# ------------------------------------------------------------ TorchScript
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_round_trip(name, tmp_path, wbm, our_models, upstream_models):
    """export -> load reproduces the eager model.

    With TorchScript's graph optimisations off, the loaded file runs the same
    operations as the eager model: every output is bitwise equal. With them on
    (the default), the profiling executor switches to an optimised graph from
    the second call on, whose symbolic backward rounds differently from eager
    autograd in float32: energies, site energies and magmoms stay equal, forces
    and stress agree to float32 rounding (up to ~4e-5 eV/Å seen)."""
    model = our_models[(name, "float32")]
    path = export(model, tmp_path / f"{name}.pt")
    assert path.exists() and not list(tmp_path.glob(".*.tmp"))  # no temporary left behind
    loaded = load_model(str(path))
    assert isinstance(loaded, torch.jit.ScriptModule)
    eager_calc = CrossFunctionalCalculator(model)
    loaded_calc = CrossFunctionalCalculator(loaded)

    def run(calc, atoms):
        atoms = atoms.copy()
        atoms.calc = calc
        return {p: np.array(calc.get_property(p, atoms)) for p in PROPERTIES}

    structures = [perturbed(atoms, np.random.default_rng(51)) for _, atoms in wbm(3, seed=51)]
    with torch.jit.optimized_execution(False):
        for atoms in structures:
            ref, got = run(eager_calc, atoms), run(loaded_calc, atoms)
            for p in PROPERTIES:
                np.testing.assert_array_equal(got[p], ref[p], err_msg=p)
    for atoms in structures * 2:
        ref, got = run(eager_calc, atoms), run(loaded_calc, atoms)
        for p in ("energy", "energies", "magmoms"):
            np.testing.assert_allclose(got[p], ref[p], rtol=1e-7, atol=1e-6, err_msg=p)
        np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(got["stress"], ref["stress"], rtol=0, atol=1e-6)  # eV/Å³

    meta = model_metadata(loaded)
    assert meta == model_metadata(our_models[(name, "float32")])
    assert meta["model_name"] == name
    assert meta["cutoff"] == 6.0 == float(loaded.atom_graph_cutoff)
    assert meta["bond_graph_cutoff"] == 3.0
    assert len(meta["elements"]) == 94 and meta["elements"][0] == "H" and meta["elements"][-1] == "Pu"
    assert "BSD-3-Clause" in meta["licence"]
    assert "Deng" in meta["citation"]
    upstream_atomref = upstream_models[name].composition_model.fc.weight.detach().reshape(-1).double().numpy()
    np.testing.assert_allclose([meta["atomref"][el] for el in meta["elements"]], upstream_atomref, rtol=1e-6, atol=1e-7)
    # the same metadata travels as an extra file in the archive
    with zipfile.ZipFile(path) as zf:
        extra = [n for n in zf.namelist() if n.endswith("extra/metadata.json")]
        assert len(extra) == 1
        assert json.loads(zf.read(extra[0])) == meta


def test_export_float64(tmp_path, wbm, our_calcs):
    path = export("chgnet-0.3.0", tmp_path / "m64.pt", dtype="float64")
    stored = torch.jit.load(str(path), map_location="cpu")
    assert {p.dtype for p in stored.parameters()} == {torch.float64}
    calc = CrossFunctionalCalculator(str(path), dtype="float64")
    assert calc.dtype == torch.float64
    atoms = _wbm_perturbed(wbm)
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = our_calcs[("chgnet-0.3.0", "float64")]
    assert abs(energy - atoms.get_potential_energy()) < 1e-10
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-10)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_torch_jit_script(name, wbm, our_models):
    from crossfunctional.neighbors import neighbor_list

    model = our_models[(name, "float32")]
    scripted = torch.jit.script(model)
    assert scripted.metadata_json == model.metadata_json
    _, atoms = wbm(1, seed=61)[0]
    inputs = neighbor_list(atoms, 6.0).to_torch("cpu", torch.float32)
    energies, magmoms, grad = model(*inputs, True)
    for _ in range(3):  # profiling run, then optimised runs
        s_energies, s_magmoms, s_grad = scripted(*inputs, True)
        torch.testing.assert_close(s_energies, energies, rtol=1e-7, atol=1e-6)
        torch.testing.assert_close(s_magmoms, magmoms, rtol=1e-7, atol=1e-6)
        torch.testing.assert_close(s_grad, grad, rtol=0, atol=1e-4)
    energies, magmoms, grad = scripted(*inputs, False)
    assert grad.shape == (0, 3) and energies.shape == magmoms.shape == (len(atoms),)


def test_recompute_threshold_reaches_the_runner_and_keeps_the_numbers():
    """The calculator's recompute_threshold selects the block-by-block
    gradient on its own TorchScript runner; both paths give the same results."""
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=3)
    lean = CrossFunctionalCalculator(dtype="float64", recompute_threshold=0)
    assert lean.runner.recompute_threshold == 0
    default = CrossFunctionalCalculator(dtype="float64")
    assert default.runner.recompute_threshold == 500_000
    a, b = atoms.copy(), atoms.copy()
    a.calc, b.calc = lean, default
    assert abs(a.get_potential_energy() - b.get_potential_energy()) < 1e-9
    assert np.abs(a.get_forces() - b.get_forces()).max() < 1e-9
    assert np.abs(a.get_stress() - b.get_stress()).max() < 1e-11


def test_compile_needs_python_model(tmp_path, our_models):
    """``compile=True`` with a TorchScript file is a clear error, not a failure inside torch.compile."""
    path = export(our_models[("chgnet-r2scan", "float32")], tmp_path / "m.pt")
    with pytest.raises(ValueError, match="TorchScript"):
        CrossFunctionalCalculator(str(path), compile=True)


def test_predict_batch_takes_a_runner_and_warns_about_isolated_atoms(caplog):
    from crossfunctional.calculators import predict_batch

    calc = CrossFunctionalCalculator(model="chgnet-r2scan")
    lonely = Atoms("Si", positions=[[0, 0, 0]], cell=[15, 15, 15], pbc=True)
    si = bulk("Si", "diamond", a=5.43)
    with caplog.at_level("WARNING"):
        via_runner = predict_batch([si, lonely], calc.runner)
    assert "structure 1: 1 atom(s) have no neighbour within 6.0 Å" in caplog.text
    via_method = calc.predict_batch([si, lonely])
    si.calc = calc
    assert via_runner[0]["energy"] == pytest.approx(si.get_potential_energy(), abs=1e-5)
    assert via_method[0]["energy"] == pytest.approx(via_runner[0]["energy"], abs=1e-6)
