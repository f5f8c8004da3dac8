"""AtomRef refit with an elemental prior (extension of Huang et al. 2025, Eq. 2)
on real data: MP r2SCAN energies of the shipped binaries, MatPES elements."""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest
import torch

from crossfunctional.data import data_path
from crossfunctional.transfer.atomref import (
    composition_matrix,
    elemental_prior,
    fit_atomref,
    fit_atomref_with_prior,
    get_atomref,
    matpes_prior,
)
from crossfunctional.transfer.data import LabelledStructure, TransferDataError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def binaries():
    """The 348 MP binaries with their r2SCAN total energies, and chgnet-0.3.0's energies per atom."""
    from pymatgen.core import Structure

    from crossfunctional.calculators import predict_batch
    from crossfunctional.models import load_model

    with gzip.open(data_path("mp_binaries_r2scan_formation.json.gz"), "rt") as fh:
        raw = json.load(fh)
    records = []
    for rec in raw:
        s = Structure.from_dict(rec["structure"])
        records.append(LabelledStructure(structure=s, energy=rec["e_r2scan"] * len(s), material_id=rec["material_id"]))
    preds = predict_batch([r.atoms() for r in records], load_model("chgnet-0.3.0"), max_edges=50_000)
    return records, np.array([p["energy"] / r.n_atoms for p, r in zip(preds, records)])


def test_matpes_prior_is_the_elemental_energy_difference():
    delta = matpes_prior()
    for symbol, z in (("Si", 14), ("O", 8), ("Fe", 26)):
        with gzip.open(data_path("matpes_r2scan_element_refs.json.gz"), "rt") as fh:
            r2 = json.load(fh)[symbol]["energy_per_atom"]
        with gzip.open(data_path("matpes_pbe_element_refs.json.gz"), "rt") as fh:
            pbe = json.load(fh)[symbol]["energy_per_atom"]
        assert delta[z - 1] == pytest.approx(r2 - pbe, abs=1e-9)
    assert np.isfinite(delta).sum() == 89


def test_prior_needs_single_element_references(binaries):
    records, _ = binaries
    with pytest.raises(TransferDataError, match="must hold one element"):
        elemental_prior(records[:3], records[3:6])


def test_limits_of_the_ridge_penalty(binaries):
    """alpha -> 0: Eq. 2 fitted to the labels (the prior cancels);
    alpha -> infinity: the base AtomRef plus the prior."""
    records, m = binaries
    base = np.nan_to_num(get_atomref("chgnet-0.3.0"))
    C = composition_matrix(records)
    present = C.any(axis=0)
    tiny = fit_atomref_with_prior(records, base="chgnet-0.3.0", alpha=1e-10, base_energies=m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Eq. 2 on the model's error per atom, i.e. the labels minus the network part
        eq2 = fit_atomref(records, source=base, energies_per_atom=[r.energy_per_atom for r in records] - (m - C @ base))
    assert np.abs(tiny.atomref[present] - eq2.atomref[present]).max() < 1e-4
    huge = fit_atomref_with_prior(records, base="chgnet-0.3.0", alpha=1e12, base_energies=m)
    assert np.abs(huge.atomref - (base + np.nan_to_num(matpes_prior()))).max() < 1e-6
    assert np.all(huge.residual[~present] == 0.0)


def test_held_out_correlation_beats_plain_eq2(binaries):
    """5-fold cross-validation over the 348 compounds: pooled held-out Pearson
    of the re-referenced energies (Fig. 2b) at least 0.95 with the prior and
    the ridge residual, above plain Eq. 2 and above the prior alone."""
    records, m = binaries
    y = np.array([r.energy_per_atom for r in records])
    C = composition_matrix(records)
    base = np.nan_to_num(get_atomref("chgnet-0.3.0"))
    g = m - C @ base
    parts = np.array_split(np.random.default_rng(0).permutation(len(records)), 5)
    refs = {k: np.empty((len(records), C.shape[1])) for k in ("eq2", "prior", "ridge")}
    for k, test in enumerate(parts):
        train = np.concatenate([p for j, p in enumerate(parts) if j != k])
        sub = [records[i] for i in train]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            refs["eq2"][test] = fit_atomref(sub, source=base, allow_rank_deficient=True).atomref
        refs["prior"][test] = fit_atomref_with_prior(sub, alpha=1e12, base_energies=m[train]).atomref
        refs["ridge"][test] = fit_atomref_with_prior(sub, base_energies=m[train]).atomref
    rho = {k: np.corrcoef(g, y - np.einsum("ij,ij->i", C, a))[0, 1] for k, a in refs.items()}
    assert rho["ridge"] >= 0.95
    assert rho["ridge"] > rho["prior"] > rho["eq2"]
