"""Bad input files are refused before any work, with one line naming the problem
(exit 2 on the command line), never evaluated silently."""

from __future__ import annotations

import pytest
from ase.build import bulk
from ase.io import write

from crossfunctional.cli import main
from crossfunctional.io import InputFileError, read_structures

DISORDERED_CIF = """data_MgFeO
_cell_length_a 4.2
_cell_length_b 4.2
_cell_length_c 4.2
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Mg1 Mg 0 0 0 0.5
Fe1 Fe 0 0 0 0.5
O1 O 0.5 0.5 0.5 1
"""

POSCAR_TOO_FEW_COUNTS = """Si
1.0
5.43 0 0
0 5.43 0
0 0 5.43
Si
2
Direct
0 0 0
0.25 0.25 0.25
0.5 0.5 0
"""


def test_partial_occupancy_is_refused(tmp_path, capsys):
    path = tmp_path / "MgFeO.cif"
    path.write_text(DISORDERED_CIF)
    with pytest.raises(InputFileError, match=r"site 0 is partially occupied \(Mg 0.5, Fe 0.5\).*OrderDisordered"):
        read_structures(path)
    assert main(["predict", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "partially occupied" in err[0]


def test_poscar_counts_not_matching_coordinates_are_refused(tmp_path):
    path = tmp_path / "POSCAR"
    path.write_text(POSCAR_TOO_FEW_COUNTS)
    with pytest.raises(InputFileError, match=r"species counts \(2, 2 atoms\) do not match the 3 coordinate lines"):
        read_structures(path)
    assert main(["predict", str(path)]) == 2


@pytest.mark.parametrize("name", ["POSCAR", "Si.vasp"])
def test_well_formed_poscar_reads(tmp_path, name):
    atoms = bulk("Si", cubic=True)
    write(tmp_path / name, atoms, format="vasp", direct=True)
    (got,) = read_structures(tmp_path / name)
    assert got.get_chemical_formula() == atoms.get_chemical_formula()
    assert abs(got.positions - atoms.positions).max() < 1e-6
