"""Broken training labels are refused with the frame that carries them."""

from __future__ import annotations

import pytest

from crossfunctional.transfer.data import TransferDataError, read_extxyz

FRAME = """2
Lattice="0 2.7 2.7 2.7 0 2.7 2.7 2.7 0" Properties=species:S:1:pos:R:3:forces:R:3 energy=-10.8 stress="{stress}" pbc="T T T"
Si 0.0 0.0 0.0 0.01 0.0 0.0
Si 1.35 1.35 1.35 -0.01 0.0 0.0
"""
SYMMETRIC = "0.01 0.002 0.0 0.002 0.01 0.0 0.0 0.0 0.01"
ASYMMETRIC = "0.01 0.002 0.0 -0.004 0.01 0.0 0.0 0.0 0.01"


def test_asymmetric_stress_is_refused_with_its_frame(tmp_path):
    path = tmp_path / "train.extxyz"
    path.write_text(FRAME.format(stress=SYMMETRIC) + FRAME.format(stress=ASYMMETRIC))
    with pytest.raises(TransferDataError, match=r"train.extxyz:1: the 3x3 stress label is not symmetric"):
        read_extxyz(path)


def test_symmetric_stress_reads(tmp_path):
    path = tmp_path / "train.extxyz"
    path.write_text(FRAME.format(stress=SYMMETRIC) * 2)
    records = read_extxyz(path)
    assert len(records) == 2 and records[1].stress[0, 1] == pytest.approx(0.002)
