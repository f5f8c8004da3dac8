"""Harmonic phonons with phonopy: band structure, DOS, thermal properties and
an imaginary-mode check, for any ASE calculator (by default the r2SCAN CHGNet).

The finite-displacement (frozen-phonon) method: a tight, symmetry-keeping
pre-relaxation in float64; a supercell whose perpendicular widths all reach a
minimum length; phonopy's symmetry-reduced set of displaced supercells, each
evaluated with the calculator; force constants; then the dynamical matrix along
the seekpath band path, on a Γ-centred mesh (DOS, thermal properties) and a
search for imaginary frequencies.

Python::

    from crossfunctional.workflows.phonons import phonons
    result = phonons(atoms, model="chgnet-r2scan")
    print(result.summary.text())
    result.phonopy.run_qpoints([[0.5, 0, 0.5]])      # phonopy as usual, THz
    result.write("si_phonons/")

Command line::

    crossfunctional phonons Si.cif --supercell-min-length 15 -o si_phonons/

Units: Å, eV, eV/Å (ASE); frequencies in THz (phonopy's ν, not ω; imaginary
frequencies are reported as negative numbers, phonopy's convention); thermal
properties per mole of formula units and per mole of atoms (kJ/mol, J/K/mol).

Polar materials: the model has no Born effective charges or dielectric tensor,
so the LO–TO splitting near Γ is absent unless a phonopy ``BORN`` file is passed
(``born=``), which is then applied as the non-analytical correction (phonopy's
default Gonze–Lee dipole–dipole scheme). That scheme assumes the supercell
force constants contain the dipole–dipole interaction and subtracts it before
adding its Ewald sum; a short-ranged model's force constants never contained
it, so away from Γ the corrected LO branch can dip and wiggle (visible along
Γ–X in ``examples/phonons/mgo/mgo_band_structure.png``). The splitting at Γ
itself is right for the given charges.

The finite displacement matters more for these models than for DFT: CHGNet's
energy surface for Si is strongly anharmonic on the 0.001–0.03 Å scale (see
``benchmarks/results/phonons/README.md``), so compare runs at the same
``displacement``.

Size and memory: a supercell over ``max_atoms`` is refused; so is one whose
evaluation would not fit in memory (``max_memory_gb``, by default the memory
available), by :func:`memory_estimate` (force constants plus the model
evaluation). A calculator with a ``predict_batch(frames)`` method gets up to
``batch_size`` displaced supercells per call, fewer when the estimate for the
batch exceeds the limit; other calculators get one at a time.

phonopy and seekpath are an optional extra: ``pip install "crossfunctional[phonons]"``.
They are imported only when a phonon calculation runs, so this package (and the
command line) loads without them.

Modules: :mod:`~crossfunctional.workflows.phonons.cells` (perpendicular widths,
supercell search, q meshes, seekpath band path, ASE/phonopy structures, the
error type), :mod:`~crossfunctional.workflows.phonons.workflow` (:func:`phonons`,
pre-relaxation, force evaluation, size and memory guard) and
:mod:`~crossfunctional.workflows.phonons.results` (:class:`PhononResult`,
:class:`PhononSummary`, files, plots).

Sources:
    A. Togo, L. Chaput, T. Tadano, I. Tanaka, J. Phys.: Condens. Matter 35,
    353001 (2023); A. Togo, J. Phys. Soc. Jpn. 92, 012001 (2023) (phonopy).
    Y. Hinuma, G. Pizzi, Y. Kumagai, F. Oba, I. Tanaka, Comput. Mater. Sci. 128,
    140 (2017) (seekpath band paths).
    X. Gonze, C. Lee, Phys. Rev. B 55, 10355 (1997) (non-analytical correction).
"""

from crossfunctional.workflows.phonons.cells import (
    DEFAULT_MIN_LENGTH,
    PhononError,
    mesh_for_length,
    perpendicular_widths,
    seekpath_band_path,
    supercell_matrix_for_length,
)
from crossfunctional.workflows.phonons.results import (
    ImaginaryMode,
    PhononResult,
    PhononSummary,
    plot_band_structure,
    plot_dos,
)
from crossfunctional.workflows.phonons.workflow import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_IMAGINARY_THRESHOLD,
    DEFAULT_MAX_ATOMS,
    evaluate_forces,
    memory_estimate,
    phonons,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_IMAGINARY_THRESHOLD",
    "DEFAULT_MAX_ATOMS",
    "DEFAULT_MIN_LENGTH",
    "ImaginaryMode",
    "PhononError",
    "PhononResult",
    "PhononSummary",
    "evaluate_forces",
    "memory_estimate",
    "mesh_for_length",
    "perpendicular_widths",
    "phonons",
    "plot_band_structure",
    "plot_dos",
    "seekpath_band_path",
    "supercell_matrix_for_length",
]
