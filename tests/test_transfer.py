"""Tests of crossfunctional.transfer: data readers and unit conversion, AtomRef
refit (Eq. 2) and re-referencing (Eq. 3), correlation, fine-tuning with
chgnet's Trainer, scaling-law fits, and errors on bad input.

Real data only (shipped in ``crossfunctional.data``: MatPES element references, WBM crystals;
ASE's bundled VASP outputs). Expected numbers are derived inside the tests
(independent formulas, symmetry, another reader), never pasted in.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import units

from crossfunctional.data import data_path
from crossfunctional.models.loading import ELEMENTS
from crossfunctional.transfer import (
    KBAR_TO_EV_PER_A3,
    METHODS,
    LabelledStructure,
    RankDeficientError,
    TransferDataError,
    ase_to_vasp_kbar,
    check_records,
    composition_matrix,
    correlate,
    crossover,
    finetune,
    fit_atomref,
    fit_power_law,
    get_atomref,
    label_with_model,
    perturb,
    read_atomref,
    read_extxyz,
    read_json,
    read_labelled,
    read_vasp,
    rereference,
    split_records,
    stress_to_3x3,
    vasp_kbar_to_ase,
    write_extxyz,
)

MATPES = {f: data_path(f"matpes_{f}_element_refs.json.gz") for f in ("pbe", "r2scan")}
WBM = data_path("wbm_random_pbe_equilibrium.json.gz")
ASE_VASP = Path(__import__("ase").__file__).parent / "test" / "testdata" / "vasp"

#: a 12-element chemistry with 25 small WBM crystals, so that a tiny training set determines its AtomRef fully
SMALL_CHEMISTRY = {"Ca", "Co", "Cu", "Mg", "Pb", "Pt", "Ru", "Si", "Sn", "Sr", "Tm", "Zn"}


@pytest.fixture(scope="module")
def wbm_records():
    return read_json(WBM)


@pytest.fixture(scope="module")
def matpes():
    return {f: read_json(path) for f, path in MATPES.items()}


@pytest.fixture(scope="module")
def small_labelled(wbm_records):
    """The WBM crystals of SMALL_CHEMISTRY with <= 10 atoms, two perturbed
    copies each, labelled by the shipped r2SCAN model."""
    sub = [r for r in wbm_records if r.n_atoms <= 10 and set(r.structure.composition.chemical_system.split("-")) <= SMALL_CHEMISTRY]
    structs = perturb(sub, seed=0) + perturb(sub, seed=1)
    return label_with_model(structs, "chgnet-r2scan", material_ids=[r.material_id for r in sub] * 2)


def _raw(path):
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


# ----------------------------------------------------------------- units and readers
def test_matpes_reader_energies_forces_and_stress_units(matpes):
    raw = _raw(MATPES["r2scan"])
    recs = {r.material_id: r for r in matpes["r2scan"]}
    assert len(recs) == len(raw) == 89
    for el, rec in raw.items():
        ours = recs[el]
        assert ours.energy == pytest.approx(rec["energy"], abs=1e-9)
        assert ours.energy_per_atom == pytest.approx(rec["energy_per_atom"], abs=1e-8)
        assert ours.forces.shape == (ours.n_atoms, 3)
        kbar = np.asarray(rec["stress"])
        # diagonal: 1 kBar = 0.1 GPa, and VASP's positive (compressive) is ASE's negative
        np.testing.assert_allclose(np.diag(ours.stress), -kbar[:3] * 0.1 / 160.21766208, rtol=1e-6, atol=1e-12)
        assert np.trace(ours.stress) / 3 == pytest.approx(-kbar[:3].mean() * 0.1 * units.GPa, rel=1e-9, abs=1e-12)
    x = np.array([12.0, -3.0, 5.0, 1.5, -0.25, 0.75])
    np.testing.assert_allclose(ase_to_vasp_kbar(vasp_kbar_to_ase(x)), stress_to_3x3(x), atol=1e-12)
    assert KBAR_TO_EV_PER_A3 == pytest.approx(0.1 / 160.21766208, rel=1e-6)


def test_matpes_shear_order_is_voigt_by_symmetry(matpes):
    """The six MatPES components are (xx, yy, zz, yz, xz, xy): read that way, the
    stress of every crystal with a sizeable shear part is invariant under the
    crystal's own symmetry operations; read in VASP's OUTCAR order it is not."""
    import spglib

    raw = {f: _raw(p) for f, p in MATPES.items()}
    fits = []  # (voigt order invariant, vasp order invariant) per crystal
    for f, recs in matpes.items():
        for rec in recs:
            kbar = np.asarray(raw[f][rec.material_id]["stress"])
            if np.abs(kbar[3:]).max() < 0.3:
                continue
            s = rec.structure
            sym = spglib.get_symmetry((s.lattice.matrix, s.frac_coords, rec.atomic_numbers), symprec=1e-3)
            L = s.lattice.matrix.T
            rots = [L @ R @ np.linalg.inv(L) for R in sym["rotations"]]
            if len(rots) <= 2:  # identity and inversion leave any symmetric tensor invariant
                continue
            ok = []
            for order in ("voigt", "vasp"):
                t = stress_to_3x3(kbar, order=order)
                ok.append(max(np.abs(R @ t @ R.T - t).max() for R in rots) < 1e-3 * max(1.0, np.abs(t).max()))
            fits.append(tuple(ok))
    assert len(fits) >= 20
    voigt_ok = sum(v for v, _ in fits)
    assert voigt_ok >= 0.9 * len(fits)  # (one magnetic crystal, Er, fits neither order)
    assert sum(w for _, w in fits) <= len(fits) // 4
    assert not any(w and not v for v, w in fits)  # no crystal prefers VASP's order


def test_stress_sign_agrees_with_model_on_strained_matpes(matpes):
    """Where MatPES-PBE has a large pressure (> 2 GPa), the converted label and the
    GGA model's stress (ASE convention) mostly share their sign; the opposite
    sign convention would make them mostly disagree."""
    from ase.stress import voigt_6_to_full_3x3_stress

    from crossfunctional.calculators import predict_batch

    big = [r for r in matpes["pbe"] if abs(np.trace(r.stress) / 3) / units.GPa > 2.0]
    assert len(big) >= 10
    preds = predict_batch([r.atoms() for r in big], "chgnet-0.3.0")
    label_p = np.array([np.trace(r.stress) for r in big])
    model_p = np.array([np.trace(voigt_6_to_full_3x3_stress(p["stress"])) for p in preds])
    agree = np.mean(np.sign(label_p) == np.sign(model_p))
    assert agree >= 0.8
    assert np.mean(np.sign(-label_p) == np.sign(model_p)) <= 0.2


@pytest.mark.skipif(not (ASE_VASP / "vasprun_pstress.xml").exists(), reason="ASE's VASP test files not installed")
def test_vasprun_reader_matches_ase_conversion():
    from ase.io import read

    for name in ("vasprun_pstress.xml", "vasprun_dfpt.xml"):
        ours = read_vasp(ASE_VASP / name)[-1]
        ref = read(ASE_VASP / name, index=-1)
        np.testing.assert_allclose(ours.stress, ref.get_stress(voigt=False), rtol=1e-6, atol=1e-10)
        np.testing.assert_allclose(ours.forces, ref.get_forces(), atol=1e-8)
        assert np.trace(ours.stress) != 0
    frames = read_labelled(ASE_VASP / "OUTCAR_example_1")
    assert frames[-1].energy is not None and frames[-1].stress.shape == (3, 3)


def test_extxyz_round_trip_and_structure_split(small_labelled, tmp_path):
    path = write_extxyz(small_labelled, tmp_path / "data.extxyz")
    back = read_extxyz(path)
    assert len(back) == len(small_labelled)
    for a, b in zip(small_labelled, back):
        assert b.energy == pytest.approx(a.energy, abs=1e-6)
        np.testing.assert_allclose(b.forces, a.forces, atol=1e-6)
        np.testing.assert_allclose(b.stress, a.stress, atol=1e-9)
        np.testing.assert_allclose(b.magmoms, a.magmoms, atol=1e-6)
        assert b.material_id == a.material_id
    train, val, test = split_records(back, (0.6, 0.2, 0.2), by="material", seed=3)
    ids = [{r.material_id for r in part} for part in (train, val, test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, (train, val, test))) == len(back)
    again = split_records(back, (0.6, 0.2, 0.2), by="material", seed=3)
    assert [r.source for r in again[1]] == [r.source for r in val]
    by_structure = split_records(back, (0.5, 0.5), by="structure", seed=0)
    assert abs(len(by_structure[0]) - len(by_structure[1])) <= 1


# ----------------------------------------------------------------- AtomRef fit
def test_fit_recovers_known_element_energies(wbm_records):
    """Synthetic energies E/N = c . ref on 200 real WBM compositions: the fit
    returns ref for every present element and equals Eq. 2's normal equations."""
    recs = wbm_records[:200]
    rng = np.random.default_rng(7)
    ref = rng.uniform(-12.0, -1.0, size=94)
    A = composition_matrix(recs)
    e = A @ ref
    source = get_atomref("chgnet-0.3.0")
    fit = fit_atomref(recs, source="chgnet-0.3.0", energies_per_atom=e)
    present = A.any(axis=0)
    assert not fit.rank_deficient and fit.rank == present.sum()
    np.testing.assert_allclose(fit.atomref[present], ref[present], atol=1e-8)
    Ap = A[:, present]
    normal = np.linalg.solve(Ap.T @ Ap, Ap.T @ e)  # Eq. 2 as printed
    np.testing.assert_allclose(fit.atomref[present], normal, atol=1e-7)
    # absent elements keep the source's value and are reported
    np.testing.assert_array_equal(fit.atomref[~present], source[~present])
    assert set(fit.kept_from_source) == {el for el, p in zip(fit.as_dict()["atomref"], present) if not p}
    assert fit.residual_mae < 1e-9
    # with noise the fit is the least-squares one: residual orthogonal to the columns
    noisy = e + rng.normal(scale=0.05, size=e.size)
    fit2 = fit_atomref(recs, energies_per_atom=noisy)
    resid = noisy - A @ fit2.atomref
    assert np.abs(Ap.T @ resid).max() < 1e-9


def test_rank_deficient_data_is_reported(wbm_records, tmp_path):
    recs = wbm_records[:100]  # 79 elements but rank 78 on real WBM compositions
    e = np.arange(len(recs), dtype=float) * 0.01 - 5.0
    with pytest.raises(RankDeficientError) as err:
        fit_atomref(recs, energies_per_atom=e)
    with pytest.warns(UserWarning, match="rank-deficient"):
        fit = fit_atomref(recs, source="chgnet-0.3.0", energies_per_atom=e, allow_rank_deficient=True)
    assert fit.rank_deficient and fit.rank == len(fit.fitted_elements) - 1
    assert fit.undetermined_elements and all(el in str(err.value) for el in fit.undetermined_elements)
    # the undetermined elements span a null direction of the data: they always occur in fixed proportions
    A = composition_matrix(recs)
    idx = [ELEMENTS.index(el) for el in fit.undetermined_elements]
    rows = A[:, idx][A[:, idx].any(axis=1)]
    assert np.linalg.matrix_rank(rows) == 1
    # one structure, three elements: fewer structures than elements
    one = [wbm_records[k] for k in range(len(wbm_records)) if len(set(wbm_records[k].atomic_numbers)) == 3][:1]
    with pytest.raises(RankDeficientError, match="fewer structures than elements"):
        fit_atomref(one)
    # the JSON format other tools read
    out = fit.write(tmp_path / "atomref.json")
    data = json.loads(out.read_text())
    assert set(data) >= {"atomref", "fitted_elements", "kept_from_source"}
    assert len(data["atomref"]) == 94 and data["rank_deficient"] is True
    np.testing.assert_allclose(read_atomref(out), fit.atomref)


# ----------------------------------------------------------------- re-referencing
def test_rereference_changes_only_atomref(wbm_records, tmp_path):
    from crossfunctional.calculators import CrossFunctionalCalculator, predict_batch
    from crossfunctional.models import export, load_model, model_metadata

    base = load_model("chgnet-0.3.0", dtype="float64")
    new = get_atomref("chgnet-r2scan")
    moved = rereference(base, new)
    sd0, sd1 = base.state_dict(), moved.state_dict()
    assert set(sd0) == set(sd1)
    changed = [k for k in sd0 if not torch.equal(sd0[k], sd1[k])]
    assert changed == ["atomref"]
    assert torch.equal(base.atomref, torch.as_tensor(get_atomref("chgnet-0.3.0")))  # original untouched
    structs = perturb(wbm_records[:6], seed=2)
    atoms = [LabelledStructure(s, None).atoms() for s in structs]
    p0 = predict_batch(atoms, base)
    p1 = predict_batch(atoms, moved)
    delta = new - get_atomref(base)
    for a, r0, r1 in zip(atoms, p0, p1):
        assert r1["energy"] - r0["energy"] == pytest.approx(delta[a.numbers - 1].sum(), abs=1e-9)
        np.testing.assert_array_equal(r1["forces"], r0["forces"])
        np.testing.assert_array_equal(r1["stress"], r0["stress"])
        np.testing.assert_array_equal(r1["magmoms"], r0["magmoms"])
    # the export carries the new AtomRef and the calculator loads it
    path = export(moved, tmp_path / "rereferenced.pt", dtype="float64")
    calc = CrossFunctionalCalculator(model=str(path), dtype="float64")
    assert model_metadata(calc.model)["atomref"]["Fe"] == pytest.approx(new[25])
    atoms[0].calc = calc
    assert atoms[0].get_potential_energy() == pytest.approx(p1[0]["energy"], abs=1e-8)
    # upstream chgnet models are re-referenced in their composition model
    from crossfunctional.transfer import load_upstream

    up, _ = load_upstream("chgnet-0.3.0")
    up2 = rereference(up, new)
    np.testing.assert_allclose(up2.composition_model.fc.weight.detach().numpy().ravel(), new, rtol=1e-6)
    np.testing.assert_allclose(up.composition_model.fc.weight.detach().numpy().ravel(), get_atomref("chgnet-0.3.0"))


# ----------------------------------------------------------------- correlation
def test_correlation_improves_after_referencing(small_labelled, tmp_path):
    from crossfunctional.calculators import CrossFunctionalCalculator

    recs = small_labelled
    res = correlate(recs, "chgnet-0.3.0")
    own = correlate(recs, "chgnet-0.3.0", target_atomref="chgnet-r2scan", source_energies=res.source)
    assert res.n == own.n == len(recs)
    assert res.pearson_after > res.pearson_before
    assert own.pearson_after > own.pearson_before
    # independent recomputation of the 'before' number with the calculator
    calc = CrossFunctionalCalculator(model="chgnet-0.3.0")
    src = []
    for r in recs:
        a = r.atoms()
        a.calc = calc
        src.append(a.get_potential_energy() / len(a))
    tgt = np.array([r.energy_per_atom for r in recs])
    assert res.pearson_before == pytest.approx(np.corrcoef(src, tgt)[0, 1], abs=1e-6)
    # 'after' with each model's own AtomRef, computed from the definition
    A = composition_matrix(recs)
    x = np.array(src) - A @ get_atomref("chgnet-0.3.0")
    y = tgt - A @ get_atomref("chgnet-r2scan")
    assert own.pearson_after == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-6)
    path = res.write(tmp_path / "corr")
    data = json.loads(path.read_text())
    assert {"n", "pearson_before", "pearson_after"} <= set(data)
    assert (tmp_path / "corr" / "correlation.png").stat().st_size > 1000


def test_elemental_correlation_is_degenerate_after_referencing(matpes):
    """MatPES PBE vs r2SCAN on the 63 elements computed on identical structures:
    with one structure per element, an Eq. 2 AtomRef absorbs everything and
    the after-referencing correlation is undefined (NaN)."""
    pbe = {r.material_id: r for r in matpes["pbe"]}
    raw_pbe, raw_r2 = _raw(MATPES["pbe"]), _raw(MATPES["r2scan"])
    paired = [r for r in matpes["r2scan"] if raw_pbe[r.material_id]["matpes_id"] == raw_r2[r.material_id]["matpes_id"]]
    assert len(paired) == 63
    src = [pbe[r.material_id].energy_per_atom for r in paired]
    fit_src = fit_atomref([pbe[r.material_id] for r in paired])
    res = correlate(paired, source=None, source_atomref=fit_src, source_energies=src)
    assert res.pearson_before == pytest.approx(np.corrcoef(src, [r.energy_per_atom for r in paired])[0, 1])
    assert math.isnan(res.pearson_after)
    assert np.abs(res.target_referenced).max() < 1e-9


# ----------------------------------------------------------------- fine-tuning
def test_finetune_end_to_end_lowers_validation_error(small_labelled, tmp_path):
    from crossfunctional.calculators import CrossFunctionalCalculator
    from crossfunctional.models import load_model, model_metadata

    train, val = split_records(small_labelled, (0.7, 0.3), seed=0)
    out = tmp_path / "run"
    res = finetune(train, val, None, base="chgnet-0.3.0", output_dir=out, epochs=2, batch_size=8, progress=False)
    assert res.method == "refit-atomref" and res.targets == "efsm"
    rows = {int(r["epoch"]): r for r in res.history}
    assert set(rows) == {0, 1, 2}
    assert rows[2]["val_e"] < rows[0]["val_e"]
    assert rows[2]["val_f"] < rows[0]["val_f"]
    assert rows[2]["learning_rate"] == pytest.approx(1e-5)  # cosine decayed to the end
    # the exported model reproduces the Trainer's validation MAE of the saved epoch
    assert res.metrics["energy_mae_meV_per_atom"] == pytest.approx(1000 * res.val_energy_mae_best, abs=0.5)
    # the refitted AtomRef stayed frozen through training, and travels with the model
    fit = json.loads((out / "atomref.json").read_text())
    meta = model_metadata(load_model(res.torchscript))
    for el in fit["fitted_elements"]:
        assert meta["atomref"][el] == pytest.approx(fit["atomref"][el], abs=1e-5)
    assert meta["atomref"]["O"] == pytest.approx(get_atomref("chgnet-0.3.0")[7], abs=1e-6)  # absent: source kept
    # both outputs load in the calculator and agree
    atoms = val[0].atoms()
    energies = []
    for path in (res.torchscript, res.checkpoint):
        atoms.calc = CrossFunctionalCalculator(model=str(path))
        energies.append(atoms.get_potential_energy())
    assert energies[0] == pytest.approx(energies[1], abs=1e-4)
    for name in ("history.csv", "training_curves.png", "metrics.json", "run.json", "train.log"):
        assert (out / name).is_file()
    # resume: an interrupted run continues from its last checkpoint (here: nothing left to train)
    run = json.loads((out / "run.json").read_text())
    run["status"] = "running"
    (out / "run.json").write_text(json.dumps(run))
    again = finetune(train, val, None, base="chgnet-0.3.0", output_dir=out, epochs=2, batch_size=8, progress=False)
    assert again.resumed_from_epoch == 2 and len(again.history) == 3
    # a finished run is returned as is; other settings are refused
    done = finetune(train, val, None, base="chgnet-0.3.0", output_dir=out, epochs=2, batch_size=8, progress=False)
    assert done.metrics == again.metrics
    with pytest.raises(TransferDataError, match="other settings"):
        finetune(train, val, None, base="chgnet-0.3.0", output_dir=out, epochs=3, batch_size=8, progress=False)


def test_atomref_records_enter_only_the_atomref_fit(small_labelled, tmp_path):
    """Method 4 with extra AtomRef-only records: the frozen AtomRef is the
    Eq. 2 fit of training + extra records, the training set is unchanged."""
    train, val, extra = small_labelled[:8], small_labelled[25:29], small_labelled[8:20]
    res = finetune(train, val, None, base="chgnet-0.3.0", output_dir=tmp_path / "run", method="refit-atomref",
                   epochs=1, batch_size=8, progress=False, allow_rank_deficient=True, atomref_records=extra)
    want = fit_atomref([*train, *extra], source=get_atomref("chgnet-0.3.0"), allow_rank_deficient=True).atomref
    np.testing.assert_allclose(res.atomref_fit.atomref, want, rtol=0, atol=1e-10)
    alone = fit_atomref(train, source=get_atomref("chgnet-0.3.0"), allow_rank_deficient=True).atomref
    assert np.abs(want - alone).max() > 1e-3  # the extra records changed the fit
    state = torch.load(res.checkpoint, weights_only=True)["model"]["state_dict"]
    np.testing.assert_allclose(state["composition_model.fc.weight"].numpy().ravel(), want, atol=1e-5)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["n_train"] == 8 and "atomref_data" in run


def test_method_4_with_an_elemental_prior_freezes_the_prior_fit(small_labelled, tmp_path):
    """Method 4 with ``atomref_prior``: the frozen AtomRef is base + prior +
    ridge residual of :func:`fit_atomref_with_prior` on the training set, and
    a finished run reloads with that fit."""
    from crossfunctional.transfer.atomref import PriorAtomRefFit, fit_atomref_with_prior

    train, val = small_labelled[:8], small_labelled[25:29]
    res = finetune(train, val, None, base="chgnet-0.3.0", output_dir=tmp_path / "run", method="refit-atomref",
                   epochs=1, batch_size=8, progress=False, atomref_prior="matpes")
    want = fit_atomref_with_prior(train, base="chgnet-0.3.0", prior="matpes", seed=0)
    assert isinstance(res.atomref_fit, PriorAtomRefFit)
    np.testing.assert_allclose(res.atomref_fit.atomref, want.atomref, rtol=0, atol=1e-10)
    eq2 = fit_atomref(train, source=get_atomref("chgnet-0.3.0"), allow_rank_deficient=True).atomref
    assert np.abs(want.atomref - eq2).max() > 1e-2  # not the Eq. 2 fit
    state = torch.load(res.checkpoint, weights_only=True)["model"]["state_dict"]
    np.testing.assert_allclose(state["composition_model.fc.weight"].numpy().ravel(), want.atomref, atol=1e-5)
    again = finetune(train, val, None, base="chgnet-0.3.0", output_dir=tmp_path / "run", method="refit-atomref",
                     epochs=1, batch_size=8, progress=False, atomref_prior="matpes")
    np.testing.assert_allclose(again.atomref_fit.atomref, want.atomref, atol=1e-12)
    assert again.atomref_fit.alpha == want.alpha
    with pytest.raises(TransferDataError, match="other settings"):  # the prior is part of a run's settings
        finetune(train, val, None, base="chgnet-0.3.0", output_dir=tmp_path / "run", method="refit-atomref",
                 epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="Method 4"):
        finetune(train, val, None, base="chgnet-0.3.0", output_dir=tmp_path / "m3", method="frozen-atomref",
                 progress=False, atomref_prior="matpes")
    with pytest.raises(ValueError, match="unknown AtomRef prior"):
        finetune(train, val, None, base="chgnet-0.3.0", output_dir=tmp_path / "m4", progress=False, atomref_prior="pbe")
    assert not (tmp_path / "m3").exists() and not (tmp_path / "m4").exists()


@pytest.mark.parametrize("method", ["scratch", "trainable-atomref", "frozen-atomref"])
def test_methods_treat_atomref_and_network_as_specified(method, small_labelled, tmp_path):
    from crossfunctional.transfer import load_upstream

    train, val = small_labelled[:8], small_labelled[25:29]
    res = finetune(train, val, None, base="chgnet-0.3.0", output_dir=tmp_path / method, method=method,
                   epochs=1, batch_size=8, progress=False, allow_rank_deficient=True)
    state = torch.load(res.checkpoint, weights_only=True)["model"]["state_dict"]
    pre, _ = load_upstream("chgnet-0.3.0")
    pre_sd = pre.state_dict()
    got = state["composition_model.fc.weight"].numpy().ravel()
    src = get_atomref("chgnet-0.3.0")
    present = composition_matrix(train).any(axis=0)
    if METHODS[method].atomref == "fit":
        np.testing.assert_allclose(got[present], res.atomref_fit.atomref[present], rtol=1e-6)
    elif METHODS[method].train_atomref:
        assert np.abs(got[present] - src[present]).max() > 1e-5  # trained
        np.testing.assert_allclose(got[~present], src[~present], rtol=1e-6)  # no gradient, no change
    else:
        np.testing.assert_allclose(got, src, rtol=1e-6)
    emb = state["atom_embedding.embedding.weight"]
    distance = (emb - pre_sd["atom_embedding.embedding.weight"]).abs().max().item()
    if METHODS[method].pretrained:
        assert distance < 0.05  # one epoch of fine-tuning moves pretrained weights a little
    else:
        assert distance > 0.1  # a fresh random initialisation


def test_bad_input_fails_before_training(small_labelled, tmp_path, monkeypatch):
    import chgnet.trainer

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(chgnet.trainer.Trainer, "train", no_training)
    train, val = small_labelled[:30], small_labelled[30:]
    out = tmp_path / "run"

    def fails(match, tr=train, va=val, **kw):
        with pytest.raises((TransferDataError, ValueError), match=match):
            finetune(tr, va, None, base=kw.pop("base", "chgnet-0.3.0"), output_dir=out, progress=False, **kw)
        assert not (out / "checkpoints").exists()

    no_energy = [LabelledStructure(r.structure, None, r.forces, r.stress, r.magmoms, r.material_id, "no-energy")
                 for r in train[:2]] + train[2:]
    fails("no \\(finite\\) energy", tr=no_energy)
    no_forces = [LabelledStructure(r.structure, r.energy, None, r.stress, r.magmoms, r.material_id, "no-forces")
                 for r in train[:1]] + train[1:]
    fails("missing forces labels", tr=no_forces)
    no_stress_val = [LabelledStructure(r.structure, r.energy, r.forces, None, r.magmoms, r.material_id, "v") for r in val]
    fails("stress labels", va=no_stress_val)
    am = train[0].structure.copy()
    am.replace(0, "Am")
    fails("Am \\(Z=95\\)", tr=[LabelledStructure(am, -10.0, train[0].forces, train[0].stress, None, "x", "americium")] + train[1:])
    fails("validation set is empty", va=[])
    fails("unknown method", method="method-5")
    fails("rank-deficient", tr=train[:3])
    with pytest.raises(Exception, match="TorchScript"):
        from crossfunctional.models import export

        pt = export("chgnet-0.3.0", tmp_path / "gga.pt")
        finetune(train, val, None, base=str(pt), output_dir=out, progress=False)
    with pytest.raises(TransferDataError, match="split is empty"):
        split_records(train[:4], (0.9, 0.05, 0.05), seed=0)
    with pytest.raises(TransferDataError, match="inconsistent stress shape"):
        stress_to_3x3([1.0, 2.0, 3.0, 4.0])
    bad = tmp_path / "bad.json"
    rec = _raw(MATPES["pbe"])["Fe"]
    rec["stress"] = rec["stress"][:4]
    bad.write_text(json.dumps([rec]))
    with pytest.raises(TransferDataError, match="inconsistent stress shape"):
        read_json(bad)
    assert check_records(train) == "efsm"


# ----------------------------------------------------------------- scaling law
def test_power_law_fit_and_crossover():
    sizes = np.array([100, 300, 1000, 3000])
    a = 10 ** (2.0 - 0.6 * np.log10(sizes))  # "scratch": MAE = 100 * n^-0.6
    b = 10 ** (1.2 - 0.3 * np.log10(sizes))  # "transfer": MAE = 15.8 * n^-0.3
    fa, fb = fit_power_law(sizes, a), fit_power_law(sizes, b)
    assert fa.slope == pytest.approx(-0.6) and fa.intercept == pytest.approx(2.0) and fa.r2 == pytest.approx(1.0)
    # the lines meet where 2.0 - 0.6 x = 1.2 - 0.3 x, x = log10(n) = 0.8 / 0.3
    assert crossover(fb, fa) == pytest.approx(10 ** (0.8 / 0.3), rel=1e-9)
    assert crossover(fa, fa) is None
    noisy = a * np.exp(np.random.default_rng(0).normal(scale=0.05, size=a.size))
    fn = fit_power_law(sizes, noisy)
    x, y = np.log10(sizes), np.log10(noisy)
    pred = fn.intercept + fn.slope * x
    assert fn.r2 == pytest.approx(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    with pytest.raises(ValueError):
        fit_power_law([10], [1.0])


def test_cli_fit_correlate_and_scaling(small_labelled, tmp_path, capsys):
    from crossfunctional.cli import main

    train, val = split_records(small_labelled, (0.7, 0.3), seed=0)
    tr = write_extxyz(train, tmp_path / "train.extxyz")
    va = write_extxyz(val, tmp_path / "val.extxyz")
    assert main(["transfer", "fit-atomref", str(tr), "--base", "chgnet-0.3.0", "-o", str(tmp_path / "atomref.json")]) == 0
    data = json.loads((tmp_path / "atomref.json").read_text())
    np.testing.assert_allclose(read_atomref(tmp_path / "atomref.json"), fit_atomref(train, source="chgnet-0.3.0").atomref)
    assert sorted(data["fitted_elements"]) == sorted({el for r in train for el in r.structure.composition.chemical_system.split("-")})
    assert main(["transfer", "correlate", str(tr), "--base", "chgnet-0.3.0", "-o", str(tmp_path / "corr")]) == 0
    corr = json.loads((tmp_path / "corr" / "correlation.json").read_text())
    assert corr["n"] == len(train) and corr["pearson_after"] > corr["pearson_before"]
    assert main(["transfer", "rereference", "chgnet-0.3.0", "--atomref", str(tmp_path / "atomref.json"),
                 "-o", str(tmp_path / "m4.pt")]) == 0
    assert (tmp_path / "m4.pt").is_file()
    assert main(["transfer", "scaling", str(tr), "--val", str(va), "--sizes", "4", "8", "--epochs", "1",
                 "--batch-size", "4", "--allow-rank-deficient", "--no-progress", "-o", str(tmp_path / "sc")]) == 0
    sc = json.loads((tmp_path / "sc" / "scaling.json").read_text())
    assert {(r["method"], r["size"]) for r in sc["rows"]} == {(m, n) for m in ("refit-atomref", "scratch") for n in (4, 8)}
    fits = sc["fits"]
    for method in ("refit-atomref", "scratch"):
        pts = sorted((r["size"], r["energy_mae_meV_per_atom"]) for r in sc["rows"] if r["method"] == method)
        slope = (math.log10(pts[1][1]) - math.log10(pts[0][1])) / (math.log10(pts[1][0]) - math.log10(pts[0][0]))
        assert fits[method]["energy"]["slope"] == pytest.approx(slope, rel=1e-6)
    assert (tmp_path / "sc" / "scaling.png").is_file()
    small = write_extxyz(train[:10], tmp_path / "small.extxyz")
    assert main(["transfer", "finetune", str(small), "--split", "0.8", "0.2", "--split-by", "structure", "--epochs", "1",
                 "--batch-size", "8", "--method", "frozen-atomref", "--no-progress", "-o", str(tmp_path / "ft")]) == 0
    assert "8 / 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["split"] == "val"
    assert (tmp_path / "ft" / "model.pt").is_file() and (tmp_path / "ft" / "model.pth.tar").is_file()
    assert main(["transfer", "fit-atomref", str(tmp_path / "missing.extxyz"), "-o", str(tmp_path / "x.json")]) == 2
    assert "not found" in capsys.readouterr().err
    # the elemental-prior AtomRef belongs to Method 4: refused for another method before any training
    assert main(["transfer", "finetune", str(small), "--split", "0.8", "0.2", "--split-by", "structure", "--method",
                 "frozen-atomref", "--atomref-prior", "matpes", "--no-progress", "-o", str(tmp_path / "ft3")]) == 2
    assert "Method 4" in capsys.readouterr().err and not (tmp_path / "ft3").exists()
