"""Readers of real DFT labels (MP binaries, r2SCAN TMO frames) and the
grouped k-fold split by calculation."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from crossfunctional.data import data_path
from crossfunctional.transfer.data import TransferDataError, group_kfold, read_json


def _raw(name):
    with gzip.open(data_path(name), "rt") as fh:
        return json.load(fh)


def test_per_atom_energies_only_when_told():
    path = data_path("mp_binaries_r2scan_formation.json.gz")
    with pytest.raises(TransferDataError, match=r"cannot tell whether the energy under 'e_r2scan' is a total or per atom"):
        read_json(path, energy_key="e_r2scan")
    records = read_json(path, energy_key="e_r2scan", energy_per_atom=True)
    raw = _raw("mp_binaries_r2scan_formation.json.gz")
    assert len(records) == len(raw) == 348
    for rec, src in zip(records[:20], raw[:20]):
        assert rec.energy == pytest.approx(src["e_r2scan"] * rec.n_atoms, rel=1e-12)
        assert rec.material_id == src["material_id"]
        assert rec.forces is None and rec.stress is None
    totals = read_json(path, energy_key="e_r2scan", energy_per_atom=False)
    assert totals[0].energy == pytest.approx(raw[0]["e_r2scan"])


def test_tmo_frames_ase_layout():
    records = read_json(data_path("r2scan_tmo_frames.json.gz"), energy_key="energy_sigma0_eV", energy_per_atom=False)
    raw = _raw("r2scan_tmo_frames.json.gz")
    assert len(records) == 87
    for rec, src in zip(records, raw):
        assert rec.energy == pytest.approx(src["energy_sigma0_eV"])
        assert [str(sp) for sp in rec.structure.species] == src["symbols"]
        np.testing.assert_allclose(rec.structure.cart_coords, src["positions"], atol=1e-8)
        np.testing.assert_allclose(rec.forces, src["forces_eV_per_A"], atol=1e-12)
        np.testing.assert_allclose(rec.stress, src["stress_eV_per_A3"], atol=1e-12)  # already ASE's sign and units
        assert rec.material_id == src["source"]
    assert len({r.material_id for r in records}) == 30  # 28 relaxations, the O2 molecule, the isolated O atom


def test_group_kfold_keeps_runs_together():
    records = read_json(data_path("r2scan_tmo_frames.json.gz"), energy_key="energy_sigma0_eV", energy_per_atom=False)
    folds = group_kfold(records, k=5, seed=0)
    assert len(folds) == 5
    tested = sorted(i for _, test in folds for i in test)
    assert tested == list(range(len(records)))  # every frame held out exactly once
    for train, test in folds:
        assert not {records[i].material_id for i in train} & {records[i].material_id for i in test}
        assert sorted(train + test) == list(range(len(records)))
    sizes = sorted(len(test) for _, test in folds)
    assert sizes[-1] == 31 and sizes[0] >= 10  # the 31-frame K3MnO4 run alone; the rest balanced
    assert group_kfold(records, k=5, seed=0) == folds
    assert group_kfold(records, k=5, seed=1) != folds
    four_runs = [r for r in records if r.material_id in sorted({r.material_id for r in records})[:4]]
    with pytest.raises(TransferDataError, match="at least 5 groups"):
        group_kfold(four_runs, k=5)
