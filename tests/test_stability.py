"""The stability benchmark: formation energies against upstream chgnet's
StructOptimizer under the same protocol, decomposition energies against
pymatgen's phase diagram, any ASE calculator, the output files."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pymatgen.core import Composition, Structure

from crossfunctional.errors import WorkflowError
from crossfunctional.workflows.stability import (
    _decomposition_energies,
    _element_structures,
    load_stability_data,
    parse_calculator_spec,
    stability_benchmark,
)

torch.set_num_threads(1)
SMALL = ["MoC", "CsI"]  # compounds whose elemental references are small cells


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    records = [r for r in load_stability_data() if r["formula"] in SMALL]
    path = tmp_path_factory.mktemp("data") / "small.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def ours(data_file):
    return stability_benchmark(models=["chgnet-r2scan"], data=data_file)


def _upstream_formation(formula: str, structure: Structure) -> float:
    """Upstream chgnet: StructOptimizer (FIRE, FrechetCellFilter), fmax 0.02, 500 steps,
    the same elemental references (lowest energy per atom of the relaxed MatPES structures)."""
    from chgnet.model import CHGNet, StructOptimizer

    with contextlib.redirect_stdout(io.StringIO()):
        opt = StructOptimizer(model=CHGNet.load(model_name="r2scan", verbose=False), optimizer_class="FIRE")

        def energy_per_atom(s):
            res = opt.relax(s, fmax=0.02, steps=500, relax_cell=True, verbose=False)
            return float(res["trajectory"].energies[-1]) / len(s)

        refs = _element_structures()
        mu = {el.symbol: min(energy_per_atom(s) for s in refs[el.symbol]) for el in Composition(formula).elements}
        comp = Composition(formula).fractional_composition
        return energy_per_atom(structure) - sum(x * mu[el.symbol] for el, x in comp.items())


def test_formation_energies_equal_upstream_structoptimizer(ours):
    for compound in ours.compounds:
        record = next(r for r in load_stability_data() if r["material_id"] == compound["material_id"])
        upstream = _upstream_formation(compound["formula"], Structure.from_dict(record["structure"]))
        assert compound["models"]["chgnet-r2scan"]["formation_energy"] == pytest.approx(upstream, abs=2e-3)  # eV/atom
        assert compound["models"]["chgnet-r2scan"]["converged"] and not compound["models"]["chgnet-r2scan"]["failed"]


def test_summary_and_files(ours, tmp_path):
    s = ours.summary["chgnet-r2scan"]
    hf = np.array([c["models"]["chgnet-r2scan"]["formation_energy"] for c in ours.compounds])
    dft = np.array([c["hf_r2scan"] for c in ours.compounds])
    exp = np.array([c["hf_exp_nbs"] for c in ours.compounds])
    assert s["reference_dft"] == "hf_r2scan"
    assert s["formation_mae_vs_dft_ev"] == pytest.approx(np.abs(hf - dft).mean())
    assert s["formation_mae_vs_exp_ev"] == pytest.approx(np.abs(hf - exp).mean())
    assert s["formation_vs_dft"]["hf_r2scan"]["mse"] == pytest.approx((hf - dft).mean())
    assert s["failed_relaxations"] == 0
    paths = ours.write(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert set(data["summary"]["chgnet-r2scan"]) >= {"formation_mae_vs_dft_ev", "formation_mae_vs_exp_ev",
                                                     "decomposition_mae_ev", "failed_relaxations"}
    assert data["compounds"][0]["models"]["chgnet-r2scan"]["formation_energy"] == pytest.approx(hf[0])
    assert paths["plot_dft"].stat().st_size > 0 and paths["plot_exp"].stat().st_size > 0
    assert "ΔHf MAE" in ours.table()


def test_decomposition_energies_against_pymatgen():
    """Two Li-O compounds and a made-up unstable one: hull of the others."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

    formulas = ["Li2O", "Li2O2", "LiO2", "NaF"]
    hf = [-2.0, -1.6, -0.5, -3.0]
    ed = _decomposition_energies(formulas, hf)
    assert np.isnan(ed[3])  # alone in its system
    entries = [PDEntry(Composition("Li"), 0), PDEntry(Composition("O"), 0)]
    compounds = [PDEntry(Composition(f), h * Composition(f).num_atoms) for f, h in zip(formulas[:3], hf[:3])]
    pd = PhaseDiagram(entries + compounds)
    for got, entry in zip(ed[:3], compounds):
        assert got == pytest.approx(pd.get_phase_separation_energy(entry))
    assert ed[0] < 0 and ed[2] > 0


def test_any_ase_calculator_and_specs(data_file):
    name, factory = parse_calculator_spec('emt=ase.calculators.emt:EMT:{"asap_cutoff": false}')
    assert name == "emt" and type(factory()).__name__ == "EMT"
    with pytest.raises(WorkflowError, match="NAME=module:factory"):
        parse_calculator_spec("emt")
    with pytest.raises(WorkflowError, match="not JSON"):
        parse_calculator_spec("emt=ase.calculators.emt:EMT:{bad")
    # EMT knows Cu, Ag, Au, Ni, Pd, Pt, Al: a Cu-Au compound from the shipped set
    records = [r for r in load_stability_data() if r["formula"] == "AuCu3"][:1]
    path = data_file.parent / "aucu3.json"
    path.write_text(json.dumps(records))
    from ase.calculators.emt import EMT

    result = stability_benchmark(models={"EMT": EMT}, data=path, steps=200)
    hf = result.compounds[0]["models"]["EMT"]["formation_energy"]
    assert np.isfinite(hf) and result.summary["EMT"]["reference_dft"] == "hf_r2scan"
    assert set(result.summary["EMT"]["formation_vs_dft"]) == {"hf_r2scan", "hf_gga_gga_u"}


def test_density_benchmark_takes_any_ase_calculator():
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.eos import EquationOfState

    from crossfunctional.workflows import density_benchmark

    result = density_benchmark(models={"EMT": EMT}, solids=["Cu_fcc", "Al_fcc"], progress=False)
    for solid in result.solids:
        element, a_exp = solid.solid.formula, solid.solid.a_exp
        volumes, energies = [], []
        for scale in np.linspace(0.97, 1.03, 13):  # EMT's own equilibrium by ASE's equation of state
            atoms = bulk(element, "fcc", a=a_exp * scale)
            atoms.calc = EMT()
            volumes.append(atoms.get_volume())
            energies.append(atoms.get_potential_energy())
        v0, _, _ = EquationOfState(volumes, energies).fit()
        assert solid.models["EMT"].a == pytest.approx((4 * v0) ** (1 / 3), abs=3e-3)  # Å


def test_saved_results_are_taken_on_a_rerun(data_file, tmp_path, monkeypatch):
    import importlib

    partial = tmp_path / "partial.json"
    first = stability_benchmark(models=["chgnet-r2scan"], data=data_file, partial=partial)
    saved = json.loads(partial.read_text())["done"]
    assert len(saved["chgnet-r2scan:compounds"]) == len(first.compounds)
    batch_relax = importlib.import_module("crossfunctional.workflows.batch_relax")

    def must_not_run(*args, **kwargs):
        raise AssertionError("relaxed again although the results were saved")

    monkeypatch.setattr(batch_relax, "relax_many", must_not_run)
    again = stability_benchmark(models=["chgnet-r2scan"], data=data_file, partial=partial)
    assert [c["models"] for c in again.compounds] == [c["models"] for c in first.compounds]
    from crossfunctional.io import PartialResults

    assert PartialResults(partial, {"other": "settings"}).done == {}  # results of other settings are not reused
