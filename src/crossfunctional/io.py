"""File input and output: structure reading with clear errors, atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ase import Atoms

from crossfunctional.errors import CrossFunctionalError


def _umask_mode() -> int:
    """File mode a plain ``open(path, "w")`` would give (0o666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class InputFileError(CrossFunctionalError, ValueError):
    """A structure file that is missing, unreadable or empty."""


class OutputError(CrossFunctionalError, OSError):
    """An output location that cannot be written (checked before any work)."""


def check_writable(path: str | os.PathLike, directory: bool = False) -> Path:
    """Refuse an output that cannot be written, before any work: a folder
    that cannot be created or written to, or an existing file the user made
    read-only (never replaced).

    Raises:
        OutputError: naming the path and the reason.
    """
    path = Path(path)
    probe = path if directory else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot write {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK) or not probe.stat().st_mode & 0o222:
        raise OutputError(f"cannot write {path}: no write permission in {probe}")
    if path.exists():
        if directory and not path.is_dir():
            raise OutputError(f"cannot write into {path}: it is a file, not a folder")
        if not directory and path.is_dir():
            raise OutputError(f"cannot write {path}: it is a folder")
        if not directory and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
            raise OutputError(f"{path} is read-only; not replacing it (remove it or choose another name)")
    return path


def read_structures(path: str | os.PathLike, index: str | int = ":") -> list[Atoms]:
    """Read all frames (default) of any file ``ase.io.read`` understands.

    Raises:
        InputFileError: the file is missing, unreadable, or holds no structure.
    """
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"structure file not found: {path}")
    try:
        frames = read(path, index=index)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputFileError(f"cannot read {path} as a structure ({reason})") from None
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise InputFileError(f"{path} contains no structure")
    for k, atoms in enumerate(frames):
        _refuse_partial_occupancy(atoms, path if len(frames) == 1 else f"{path} frame {k}")
    if _is_poscar(path):
        _check_poscar_counts(path)
    return frames


def _refuse_partial_occupancy(atoms: Atoms, where: str | os.PathLike) -> None:
    """ASE's CIF reader keeps one species of a disordered site (and records the
    occupancies in ``atoms.info["occupancy"]``); a model of ordered crystals
    must not silently evaluate that guess."""
    for site, species in (atoms.info.get("occupancy") or {}).items():
        occupancy = {str(el): float(x) for el, x in species.items()}
        if len(occupancy) > 1 or any(abs(x - 1.0) > 1e-6 for x in occupancy.values()):
            shown = ", ".join(f"{el} {x:g}" for el, x in occupancy.items())
            raise InputFileError(
                f"{where}: site {site} is partially occupied ({shown}); the model needs an ordered structure: "
                "order it first (pymatgen's OrderDisorderedStructureTransformation or a special quasirandom structure)"
            )


def _is_poscar(path: Path) -> bool:
    name = path.name.upper()
    return name.startswith(("POSCAR", "CONTCAR")) or path.suffix.lower() in (".vasp", ".poscar")


def _check_poscar_counts(path: Path) -> None:
    """The species counts of a POSCAR must match its coordinate lines (ASE reads
    only as many lines as the counts say and ignores the rest)."""
    lines = path.read_text(errors="replace").splitlines()
    try:
        k = 5
        if not lines[k].split()[0].lstrip("+-").isdigit():  # VASP 5: a line of element symbols first
            k += 1
        counts = [int(x) for x in lines[k].split()]
        k += 1
        if lines[k].strip()[:1].lower() == "s":  # Selective dynamics
            k += 1
        k += 1  # Direct / Cartesian
    except (IndexError, ValueError):
        return  # ASE read it; a layout this check does not know is left to ASE
    coordinates = 0
    for line in lines[k:]:
        fields = line.split()
        if len(fields) < 3:
            break
        try:
            [float(x) for x in fields[:3]]
        except ValueError:
            break
        coordinates += 1
    if coordinates != sum(counts):
        raise InputFileError(
            f"{path}: the species counts ({' '.join(map(str, counts))}, {sum(counts)} atoms) do not match "
            f"the {coordinates} coordinate lines"
        )


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """Open a temporary file beside ``path`` and rename it onto ``path`` only if
    the block finishes; on error nothing is left behind. A read-only
    ``path`` is never replaced (:class:`OutputError`)."""
    path = check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; renamed files keep normal permissions
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_path(path: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """Like :func:`atomic_write` for writers that take a file name (matplotlib,
    ``ase.io.write``): yields a temporary path with the same suffix, renamed onto
    ``path`` when the block finishes."""

    @contextlib.contextmanager
    def _ctx() -> Iterator[Path]:
        target = check_writable(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}")
        os.close(fd)
        os.chmod(tmp, _umask_mode())
        try:
            yield Path(tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    return _ctx()


def save_figure(fig, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Save a matplotlib figure atomically (:func:`atomic_path`) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return path


def as_atoms(structure) -> Atoms:
    """ASE Atoms of an ASE ``Atoms`` (returned as is) or a pymatgen
    ``Structure`` / ``Molecule`` (converted with pymatgen's ``AseAtomsAdaptor``;
    a Molecule becomes a non-periodic Atoms).

    Raises:
        InputFileError: any other object.
    """
    if isinstance(structure, Atoms):
        return structure
    try:
        from pymatgen.core import IStructure, Molecule, Structure
    except ImportError:  # pragma: no cover - pymatgen is a dependency
        Structure = IStructure = Molecule = ()
    if isinstance(structure, (Structure, IStructure, Molecule)):
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_atoms(structure)
    raise InputFileError(f"expected ASE Atoms or a pymatgen Structure or Molecule, got {type(structure).__name__}")


def as_structure(atoms: Atoms):
    """The pymatgen ``Structure`` of periodic Atoms (``Molecule`` if not periodic)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    if atoms.pbc.any():
        return AseAtomsAdaptor.get_structure(atoms)
    return AseAtomsAdaptor.get_molecule(atoms)


def clean_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that a killed atomic write left in ``folder``
    (hidden ``.NAME.*.tmp*`` files of :func:`atomic_write` and :func:`atomic_path`);
    returns what was removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for path in folder.glob(".*.tmp*"):
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


class PartialResults:
    """Per-item results of a long benchmark saved as they come (atomically,
    JSON), so that an interrupted run resumes where it stopped.

    The file holds the run's ``settings``; results saved under other
    settings are not reused (the file is started again).

    Args:
        path: the JSON file, or None to keep nothing.
        settings: JSON-serialisable description of the run (models, data, protocol).
    """

    def __init__(self, path: str | os.PathLike | None, settings: dict) -> None:
        import json

        self.path = None if path is None else Path(path)
        self.settings = json.loads(json.dumps(settings))
        self.done: dict[str, dict] = {}
        if self.path is not None and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError):
                saved = {}
            if saved.get("settings") == self.settings:
                self.done = saved.get("done", {})

    def get(self, group: str, key: str):
        """The saved result of ``key`` in ``group``, or None."""
        return self.done.get(group, {}).get(key)

    def put(self, group: str, key: str, value) -> None:
        """Save one result (and the file, when there is one)."""
        import json

        self.done.setdefault(group, {})[key] = value
        if self.path is not None:
            with atomic_write(self.path) as fh:
                json.dump({"settings": self.settings, "done": self.done}, fh)

    def remove(self) -> None:
        """Delete the file (the run finished and wrote its results)."""
        if self.path is not None and self.path.is_file():
            self.path.unlink()


def write_result_files(result, output_dir: str | os.PathLike, stem: str, plot_name: str) -> dict[str, Path]:
    """Write a benchmark result's ``STEM.json`` (``result.to_dict()``),
    ``STEM.csv`` (``result.to_csv()``) and the plot ``plot_name``
    (``result.plot(path)``) into ``output_dir`` (created if needed), each
    atomically; temporaries of a killed earlier write are removed first.

    Returns:
        ``{"json": path, "csv": path, "png": path}``.
    """
    import json

    out = check_writable(output_dir, directory=True)
    out.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "png": out / plot_name}
    with atomic_write(paths["json"], encoding="utf-8") as handle:
        json.dump(result.to_dict(), handle, indent=2)
        handle.write("\n")
    with atomic_write(paths["csv"], encoding="utf-8", newline="") as handle:
        handle.write(result.to_csv())
    result.plot(paths["png"])
    return paths
