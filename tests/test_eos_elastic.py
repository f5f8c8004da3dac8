"""Equation of state and elastic constants (float64): cubic symmetry of the
elastic tensor of Si and MgO, bulk modulus from the tensor against B0 from
the equation of state, the fixed-volume shape relaxation of non-cubic cells,
the BM32 and layered-solid benchmarks on a subset, and input errors.

On the bulk-modulus comparison: the CHGNet energy-volume curves are not
smooth on the scale of a few per cent in volume. The local bulk modulus
-V dP/dV of the r2SCAN model for Si varies between about 30 and 110 GPa
over ±8 % volume (for MgO between about 30 and 370 GPa), so that a
Birch-Murnaghan fit over ±6 % (B0 = 85 GPa for Si) and the tensor from
±1 % strains (K = 79 GPa) measure different averages of a rough curvature.
The 3 % agreement between the two routes is therefore asserted where the
curve is smooth enough over the fit range (MgO with the r2SCAN model; Cu and
Al with ASE's EMT potential as a smooth reference), and for Si the tensor's
bulk modulus is checked against -V dP/dV from hydrostatic strains, which is
the same local quantity.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list
from ase.units import GPa

from crossfunctional.calculators import CrossFunctionalCalculator
from crossfunctional.errors import WorkflowError
from crossfunctional.io import InputFileError
from crossfunctional.workflows import eos, elastic
from crossfunctional.workflows.bulk_moduli import BulkModuliBenchmark, bulk_moduli_benchmark, load_bm32
from crossfunctional.workflows.layered import build_layered_solid, layered_benchmark, load_layered_solids

CUBIC = {"Si": bulk("Si", "diamond", a=5.43), "MgO": bulk("MgO", "rocksalt", a=4.21)}


@pytest.fixture(scope="module")
def calc64(our_models):
    return {name: CrossFunctionalCalculator(our_models[(name, "float64")]) for name in ("chgnet-r2scan", "chgnet-0.3.0")}


@pytest.fixture(scope="module")
def elastic_results(calc64):
    return {(m, s): elastic(CUBIC[s], calc64[m]) for m in calc64 for s in CUBIC}


@pytest.mark.parametrize("model", ["chgnet-r2scan", "chgnet-0.3.0"])
@pytest.mark.parametrize("solid", ["Si", "MgO"])
def test_elastic_tensor_has_cubic_symmetry(model, solid, elastic_results):
    """Primitive (non-orthogonal) cells with Cartesian axes along the cubic
    axes: C11 = C22 = C33, C12 = C13 = C23, C44 = C55 = C66, the rest zero."""
    res = elastic_results[(model, solid)]
    c = res.voigt
    assert all(res.converged)
    c11, c12, c44 = c[0, 0], c[0, 1], c[3, 3]
    assert c11 > c12 > 0 and c44 > 10  # GPa, a stiff cubic crystal
    tol = 0.2  # GPa
    np.testing.assert_allclose(np.diag(c)[:3], c11, atol=tol)
    np.testing.assert_allclose(np.diag(c)[3:], c44, atol=tol)
    np.testing.assert_allclose([c[0, 1], c[0, 2], c[1, 2], c[1, 0], c[2, 0], c[2, 1]], c12, atol=tol)
    off = c.copy()
    off[:3, :3] = 0
    off[[3, 4, 5], [3, 4, 5]] = 0
    np.testing.assert_allclose(off, 0.0, atol=tol)
    assert res.asymmetry < 0.2  # the fit itself is symmetric in the cubic frame
    assert res.born_stable and res.eigenvalues.min() > 0
    # Voigt and Reuss bulk moduli coincide for cubic crystals: (C11 + 2 C12) / 3
    assert res.k_voigt == pytest.approx((c11 + 2 * c12) / 3, rel=1e-3)
    assert res.k_reuss == pytest.approx(res.k_voigt, rel=1e-3)


def test_elastic_tensor_is_frame_independent():
    """The same crystal in a rotated Cartesian frame (a along x, as a CIF file
    reads back): its tensor, rotated back, equals the cubic-frame tensor (EMT Cu)."""
    from ase.geometry import cellpar_to_cell

    aligned = bulk("Cu", "fcc", a=3.6)
    rotated = Atoms("Cu", cell=cellpar_to_cell(aligned.cell.cellpar()), pbc=True)
    rotation = rotated.cell.array.T @ np.linalg.inv(aligned.cell.array.T)
    assert np.abs(rotation - np.eye(3)).max() > 0.1  # really another frame
    ref, other = elastic(aligned, EMT()), elastic(rotated, EMT())
    assert np.abs(other.voigt[0, 3]) > 10  # not of cubic form in the rotated frame
    np.testing.assert_allclose(other.elastic_tensor.rotate(rotation.T).voigt, ref.voigt, atol=0.5)  # GPa
    assert other.k_vrh == pytest.approx(ref.k_vrh, rel=2e-3) and other.g_vrh == pytest.approx(ref.g_vrh, rel=5e-3)


def test_tensor_bulk_modulus_equals_eos_b0(calc64, elastic_results):
    res = elastic_results[("chgnet-r2scan", "MgO")]
    fit = eos(CUBIC["MgO"], calc64["chgnet-r2scan"])
    assert not fit.relaxed_at_volume  # cubic: fixed shape
    assert fit.b0 > 100 and res.k_vrh > 100
    assert abs(res.k_vrh / fit.b0 - 1) < 0.03


@pytest.mark.parametrize("atoms", [bulk("Cu", "fcc", a=3.6), bulk("Al", "fcc", a=4.05)], ids=["Cu", "Al"])
def test_tensor_bulk_modulus_equals_eos_b0_smooth_potential(atoms):
    """The two routes with ASE's EMT potential (smooth), through ``calculator=``."""
    res = elastic(atoms, EMT())
    fit = eos(atoms, EMT())
    assert abs(res.k_vrh / fit.b0 - 1) < 0.03
    assert fit.rms_residual < 1e-4  # eV/atom
    assert abs(fit.v0 / fit.atoms.get_volume() - 1) < 0.005  # the relaxed volume is the fitted V0


def test_tensor_bulk_modulus_equals_local_hydrostatic_modulus(calc64, elastic_results):
    """Si: K from the tensor equals -V dP/dV from ±0.3 % hydrostatic strain."""
    res = elastic_results[("chgnet-r2scan", "Si")]
    relaxed, volume = res.atoms, res.atoms.get_volume()
    pressure = []
    for x in (-0.003, 0.003):
        strained = relaxed.copy()
        strained.set_cell(relaxed.cell.array * (1 + x) ** (1 / 3), scale_atoms=True)
        strained.calc = calc64["chgnet-r2scan"]
        pressure.append(-strained.get_stress()[:3].mean())
    local = -volume * (pressure[1] - pressure[0]) / (0.006 * volume) / GPa
    assert abs(res.k_vrh / local - 1) < 0.01


def test_eos_of_hexagonal_cell_relaxes_shape_at_fixed_volume(calc64):
    mg = bulk("Mg", "hcp", a=3.21, c=5.21)
    fit = eos(mg, calc64["chgnet-r2scan"], n_volumes=7)
    assert fit.relaxed_at_volume
    assert all(fit.converged)
    v_ref = fit.atoms.get_volume()
    np.testing.assert_allclose(fit.volumes, v_ref * (1 + np.linspace(-0.06, 0.06, 7)), rtol=1e-10)
    assert fit.volumes.min() < fit.v0 < fit.volumes.max()
    assert 10 < fit.b0 < 100  # GPa (experiment: 35)


def test_eos_accepts_pymatgen_and_writes(tmp_path, calc64):
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = AseAtomsAdaptor.get_structure(CUBIC["Si"])
    fit = eos(structure, calc64["chgnet-0.3.0"], n_volumes=7)
    paths = fit.write(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["b0"] == pytest.approx(fit.b0) and len(data["points"]) == 7
    assert paths["png"].stat().st_size > 1000 and paths["csv"].read_text().count("\n") == 8
    assert "B0 =" in fit.text()


def test_dispersion_contracts_the_eos_volume(our_models):
    model = our_models[("chgnet-r2scan", "float64")]
    plain = eos(CUBIC["Si"], CrossFunctionalCalculator(model), n_volumes=7)
    with_d3 = eos(CUBIC["Si"], CrossFunctionalCalculator(model, dispersion="d3bj"), n_volumes=7)
    assert with_d3.v0 < plain.v0
    assert with_d3.model == "chgnet-r2scan+r2scan-D3(BJ)"


def test_bad_input_is_named(calc64):
    with pytest.raises(WorkflowError, match="periodic only along"):
        eos(molecule("H2O"), calc64["chgnet-r2scan"])
    with pytest.raises(WorkflowError, match="n_volumes must be"):
        eos(CUBIC["Si"], calc64["chgnet-r2scan"], n_volumes=3)
    with pytest.raises(WorkflowError, match="unknown eos_name"):
        eos(CUBIC["Si"], calc64["chgnet-r2scan"], eos_name="polynomial")
    with pytest.raises(WorkflowError, match="dispersion= applies to a calculator made here"):
        elastic(CUBIC["Si"], calc64["chgnet-r2scan"], dispersion="d3bj")
    with pytest.raises(WorkflowError, match="norm_strains must hold"):
        elastic(CUBIC["Si"], calc64["chgnet-r2scan"], norm_strains=(0.01,))
    with pytest.raises(InputFileError):
        eos("Si", calc64["chgnet-r2scan"])
    with pytest.raises(WorkflowError, match="empty"):
        eos(Atoms(cell=[3, 3, 3], pbc=True), calc64["chgnet-r2scan"])


def test_bm32_table_and_benchmark_subset(tmp_path):
    solids = load_bm32()
    assert len(solids) == 32
    mgo = next(s for s in solids if s.name == "MgO_b1")
    assert (mgo.a_exp, mgo.b_exp) == (4.188, 169.8)
    bench = bulk_moduli_benchmark(models=["chgnet-r2scan"], solids=["MgO_b1", "Cu_fcc"], n_volumes=7, progress=False)
    paths = bench.write(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert set(data["summary"]["chgnet-r2scan"]) >= {"mae_gpa", "mare_percent", "mre_percent"}
    rows = {r["name"]: r for r in data["solids"]}
    assert rows["MgO_b1"]["b_exp"] == 169.8
    b_mgo = rows["MgO_b1"]["models"]["chgnet-r2scan"]["b0"]
    assert 100 < b_mgo < 200
    errors = [abs(rows[n]["models"]["chgnet-r2scan"]["b0"] - rows[n]["b_exp"]) for n in ("MgO_b1", "Cu_fcc")]
    assert data["summary"]["chgnet-r2scan"]["mae_gpa"] == pytest.approx(np.mean(errors))
    again = BulkModuliBenchmark.read(paths["json"])
    assert again.summary == bench.summary
    assert "MAE (GPa)" in bench.table()


def test_layered_solids_build_and_relax():
    solids = {s.name: s for s in load_layered_solids()}
    assert set(solids) == {"graphite", "h-BN", "2H-MoS2", "black-P"}
    assert solids["graphite"].interlayer_distance == pytest.approx(6.711 / 2)
    assert all(s.citations.get("a") and s.citations.get("c") for s in solids.values())
    bp = build_layered_solid(solids["black-P"])
    assert len(bp) == 8
    i, d = neighbor_list("id", bp, 2.5)
    bonds = np.sort(d[i == 0])
    np.testing.assert_allclose(bonds, [2.224, 2.224, 2.244], atol=0.002)  # the experimental P-P bonds
    mos2 = build_layered_solid(solids["2H-MoS2"])
    assert mos2.get_chemical_formula() == "Mo2S4"
    bench = layered_benchmark(models=["chgnet-r2scan"], dispersions=[None, "d3bj"], solids=["graphite"], progress=False)
    plain, d3 = (bench.results["graphite"][k] for k in ("chgnet-r2scan", "chgnet-r2scan+d3bj"))
    assert plain["converged"] and d3["converged"]
    assert d3["interlayer"] < plain["interlayer"]  # dispersion binds the layers more tightly
    assert abs(d3["a_error"]) < 2  # in-plane bonds barely change


def test_cli_eos_elastic_and_bulk_moduli(tmp_path, capsys):
    from ase.io import write

    from crossfunctional.cli import main

    write(tmp_path / "mgo.cif", CUBIC["MgO"])
    assert main(["eos", str(tmp_path / "mgo.cif"), "-o", str(tmp_path / "eos"), "--dtype", "float64", "--n-volumes", "7"]) == 0
    eos_data = json.loads((tmp_path / "eos" / "eos.json").read_text())
    assert 100 < eos_data["b0"] < 200 and "B0 =" in capsys.readouterr().out
    assert main(["elastic", str(tmp_path / "mgo.cif"), "-o", str(tmp_path / "el"), "--dtype", "float64", "--dispersion", "d3bj"]) == 0
    el = json.loads((tmp_path / "el" / "elastic.json").read_text())
    assert el["model"] == "chgnet-r2scan+r2scan-D3(BJ)" and el["born_stable"]
    assert "Born stability: stable" in capsys.readouterr().out
    out = tmp_path / "bm"
    assert main(["benchmark", "bulk-moduli", "--models", "chgnet-r2scan", "--solids", "NaCl_b1", "--n-volumes", "7",
                 "--output", str(out)]) == 0  # fmt: skip
    data = json.loads((out / "bulk_moduli_benchmark.json").read_text())
    assert data["solids"][0]["name"] == "NaCl_b1" and data["solids"][0]["models"]["chgnet-r2scan"]["b0"] > 10
    assert (out / "bulk_moduli_parity.png").is_file() and (out / "bulk_moduli_benchmark.csv").is_file()
    assert main(["eos", str(tmp_path / "missing.cif"), "-o", str(tmp_path / "x")]) == 2  # one-line error
