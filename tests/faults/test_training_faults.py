"""A fine-tune killed at any moment and rerun with the same command finishes
as the uninterrupted run would: checkpoints written atomically, unreadable
ones skipped, random states restored (the same weights and history)."""

from __future__ import annotations

import csv
import importlib

import pytest
import torch

from crossfunctional.data import data_path
from crossfunctional.transfer import finetune
from crossfunctional.transfer.data import read_json

torch.set_num_threads(1)
ft = importlib.import_module("crossfunctional.transfer.finetune")  # the module (the package exports a function of that name)


@pytest.fixture(scope="module")
def frames():
    records = read_json(data_path("r2scan_tmo_frames.json.gz"), energy_key="energy_sigma0_eV", energy_per_atom=False)
    small = [r for r in records if 2 <= r.n_atoms <= 8 and r.forces is not None]
    return small[:6], small[6:8]


SETTINGS = dict(base="chgnet-0.3.0", method="refit-atomref", epochs=3, batch_size=2, progress=False,
                allow_rank_deficient=True, targets="ef")


def _weights(run):
    state = torch.load(run / "model.pth.tar", weights_only=True)
    return state["model"]["state_dict"]


def _history(run):
    with open(run / "history.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


@pytest.fixture(scope="module")
def uninterrupted(frames, tmp_path_factory):
    train, val = frames
    out = tmp_path_factory.mktemp("run") / "whole"
    finetune(train, val, output_dir=out, **SETTINGS)
    return out


def test_history_integers_and_empty_cells(uninterrupted):
    rows = _history(uninterrupted)
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[0]["train_e"] == "" and rows[0]["val_e"] != ""  # epoch 0: validation only, empty training cells


def test_killed_between_epochs_resumes_to_the_same_run(frames, uninterrupted, tmp_path, monkeypatch):
    train, val = frames
    out = tmp_path / "run"
    real = ft.write_history

    def dies_after_epoch_1(path, rows, columns):
        real(path, rows, columns)
        if rows[-1]["epoch"] == 1:
            raise Killed

    monkeypatch.setattr(ft, "write_history", dies_after_epoch_1)
    with pytest.raises(Killed):
        finetune(train, val, output_dir=out, **SETTINGS)
    monkeypatch.setattr(ft, "write_history", real)
    result = finetune(train, val, output_dir=out, **SETTINGS)
    assert result.resumed_from_epoch == 1
    for key, value in _weights(uninterrupted).items():
        assert torch.equal(value, _weights(out)[key]), key
    assert _history(out) == _history(uninterrupted)


def test_killed_during_a_checkpoint_write(frames, uninterrupted, tmp_path, monkeypatch):
    """The write of epoch 2's checkpoint dies half-way: the temporary file is
    cleaned up on the rerun, which resumes from epoch 1's checkpoint."""
    train, val = frames
    out = tmp_path / "run"
    real = ft.save_checkpoint

    def dies_while_writing(state, path):
        if "epoch1" in path.name:  # chgnet numbers epochs from 0: this is the second
            partial = path.parent / f".{path.name}.partial.tmp"
            partial.write_bytes(b"PK\x03\x04 truncated")
            raise Killed
        return real(state, path)

    monkeypatch.setattr(ft, "save_checkpoint", dies_while_writing)
    with pytest.raises(Killed):
        finetune(train, val, output_dir=out, **SETTINGS)
    assert sorted(p.name for p in (out / "checkpoints").glob("epoch*.pth.tar")) == [
        p.name for p in (out / "checkpoints").glob("epoch0_*.pth.tar")]  # the previous good one is still there
    monkeypatch.setattr(ft, "save_checkpoint", real)
    result = finetune(train, val, output_dir=out, **SETTINGS)
    assert result.resumed_from_epoch == 1
    assert not list((out / "checkpoints").glob(".*.tmp"))
    assert _history(out) == _history(uninterrupted)


def test_unreadable_checkpoint_is_skipped(frames, uninterrupted, tmp_path, monkeypatch):
    train, val = frames
    out = tmp_path / "run"
    real = ft.write_history

    def dies_after_epoch_2(path, rows, columns):
        real(path, rows, columns)
        if rows[-1]["epoch"] == 2:
            raise Killed

    monkeypatch.setattr(ft, "write_history", dies_after_epoch_2)
    with pytest.raises(Killed):
        finetune(train, val, output_dir=out, **SETTINGS)
    monkeypatch.setattr(ft, "write_history", real)
    (latest,) = (out / "checkpoints").glob("epoch*.pth.tar")
    latest.write_bytes(latest.read_bytes()[:100])  # truncated at rest
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        result = finetune(train, val, output_dir=out, **SETTINGS)
    assert result.resumed_from_epoch == 0  # no older checkpoint: trained again from the start
    for key, value in _weights(uninterrupted).items():
        assert torch.equal(value, _weights(out)[key]), key
