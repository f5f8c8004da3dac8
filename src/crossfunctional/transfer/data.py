"""Labelled structures for transfer learning: readers, unit conversion, splits, checks.

Every reader returns a list of :class:`LabelledStructure` in ASE units:

- ``energy``: total energy, eV (not per atom);
- ``forces``: [N, 3] eV/Å;
- ``stress``: [3, 3] eV/Å³, ASE sign (positive = tensile);
- ``magmoms``: [N] μB.

Stress conventions differ between sources, so they are converted explicitly:
VASP (vasprun.xml, OUTCAR, MatPES and MPtrj JSON) reports kBar with positive =
compressive, ASE reports eV/Å³ with positive = tensile::

    sigma_ASE [eV/Å³] = -0.1 * sigma_VASP [kBar] * ase.units.GPa

(:func:`vasp_kbar_to_ase`). Six-component VASP-style stresses come in two
orders: the OUTCAR "in kB" line is (xx, yy, zz, xy, yz, zx); the MatPES JSON
files are in Voigt order (xx, yy, zz, yz, xz, xy) -- established from the
data, because only that order leaves the stress of the MatPES crystals
invariant under their own space-group operations (27 of the 28 records with a
non-zero shear part; see ``tests/test_transfer.py``).
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from pymatgen.core import Lattice, Structure

from crossfunctional.errors import CrossFunctionalError
from crossfunctional.io import InputFileError, atomic_path
from crossfunctional.models.chgnet import MAX_Z

__all__ = [
    "KBAR_TO_EV_PER_A3",
    "LabelledStructure",
    "TransferDataError",
    "ase_to_vasp_kbar",
    "check_records",
    "read_extxyz",
    "read_json",
    "read_labelled",
    "read_vasp",
    "split_records",
    "stress_to_3x3",
    "vasp_kbar_to_ase",
    "write_extxyz",
]

#: 1 kBar in eV/Å³ (0.1 GPa); multiply a VASP stress by -KBAR_TO_EV_PER_A3 for ASE's.
KBAR_TO_EV_PER_A3 = 0.1 * units.GPa

#: index pairs of 6-component stress orders
_ORDERS = {
    "voigt": ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)),  # ASE, MatPES
    "vasp": ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)),  # OUTCAR "in kB" line
}


class TransferDataError(CrossFunctionalError, ValueError):
    """Labelled data that cannot be used: missing or inconsistent labels,
    unknown elements, empty splits. The message names the structures."""


@dataclass
class LabelledStructure:
    """One structure with its DFT (or model) labels, in ASE units.

    Attributes:
        structure: pymatgen Structure (periodic).
        energy: total energy in eV, or None when unlabelled.
        forces: [N, 3] eV/Å or None.
        stress: [3, 3] eV/Å³, positive tensile (ASE sign), or None.
        magmoms: [N] μB or None.
        material_id: groups structures of one material (splits by material
            keep them together).
        source: where it came from, ``file:index``, for error messages.
    """

    structure: Structure
    energy: float | None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    magmoms: np.ndarray | None = None
    material_id: str = ""
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return len(self.structure)

    @property
    def energy_per_atom(self) -> float:
        """Energy per atom, eV/atom (NaN when unlabelled)."""
        return float("nan") if self.energy is None else self.energy / self.n_atoms

    @property
    def atomic_numbers(self) -> np.ndarray:
        """[N] int64."""
        return np.array([site.specie.Z for site in self.structure], dtype=np.int64)

    def atoms(self) -> Atoms:
        """The structure as ASE Atoms (fully periodic), without labels."""
        s = self.structure
        return Atoms(
            numbers=self.atomic_numbers, positions=s.cart_coords, cell=s.lattice.matrix, pbc=True
        )

    def stress_vasp_kbar(self) -> np.ndarray | None:
        """Stress [3, 3] in VASP's convention (kBar, positive compressive), the
        convention ``chgnet.data.dataset.StructureData`` expects."""
        return None if self.stress is None else ase_to_vasp_kbar(self.stress)


# ----------------------------------------------------------------- units
def stress_to_3x3(stress: Any, order: str = "voigt", where: str = "stress") -> np.ndarray:
    """A stress given as 6 components (``order`` "voigt": xx yy zz yz xz xy;
    "vasp": xx yy zz xy yz zx) or as 3x3 / 9 components -> symmetric [3, 3]
    array in the same units and sign.

    Raises:
        TransferDataError: any other shape, NaN, or an asymmetric 3x3 tensor.
    """
    arr = np.asarray(stress, dtype=float)
    if arr.size == 6 and arr.ndim == 1:
        out = np.zeros((3, 3))
        for value, (i, j) in zip(arr, _ORDERS[order]):
            out[i, j] = out[j, i] = value
    elif arr.size == 9 and arr.ndim in (1, 2):
        out = arr.reshape(3, 3)
        scale = max(1.0, float(np.abs(out).max()))
        if np.abs(out - out.T).max() > 1e-6 * scale:
            raise TransferDataError(f"{where}: 3x3 stress is not symmetric: {out.tolist()}")
    else:
        raise TransferDataError(
            f"{where}: inconsistent stress shape {arr.shape}; expected 6 components or a 3x3 tensor"
        )
    if not np.all(np.isfinite(out)):
        raise TransferDataError(f"{where}: stress contains NaN or infinite values")
    return out


def vasp_kbar_to_ase(stress_kbar: Any, order: str = "voigt", where: str = "stress") -> np.ndarray:
    """VASP stress (kBar, positive = compressive) -> ASE stress [3, 3] (eV/Å³,
    positive = tensile): ``-0.1 * kBar * ase.units.GPa``. Six components are
    read in ``order`` (see :func:`stress_to_3x3`)."""
    return -KBAR_TO_EV_PER_A3 * stress_to_3x3(stress_kbar, order=order, where=where)


def ase_to_vasp_kbar(stress_ase: Any) -> np.ndarray:
    """ASE stress (eV/Å³, positive tensile; 6 Voigt components or 3x3) ->
    VASP convention [3, 3] (kBar, positive compressive)."""
    return -stress_to_3x3(stress_ase, order="voigt") / KBAR_TO_EV_PER_A3


# ----------------------------------------------------------------- readers
def _structure_from_atoms(atoms: Atoms, where: str) -> Structure:
    if not atoms.pbc.all():
        raise TransferDataError(
            f"{where}: structure is not fully periodic (pbc={atoms.pbc.tolist()}); chgnet's trainer "
            "needs periodic cells (put molecules in a box)"
        )
    return Structure(
        Lattice(atoms.cell.array), atoms.get_chemical_symbols(), atoms.positions, coords_are_cartesian=True
    )


def _per_atom(value: Any, n: int, width: int, name: str, where: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=float)
    want = (n, width) if width > 1 else (n,)
    if width == 1 and arr.shape == (n, 1):
        arr = arr.reshape(n)
    if arr.shape != want:
        raise TransferDataError(f"{where}: {name} have shape {arr.shape}, expected {want} for {n} atoms")
    if not np.all(np.isfinite(arr)):
        raise TransferDataError(f"{where}: {name} contain NaN or infinite values")
    return arr


def read_extxyz(
    path: str | os.PathLike,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    magmoms_key: str | None = None,
    id_key: str = "material_id",
) -> list[LabelledStructure]:
    """Read labelled frames from an extended XYZ file (ASE's reader).

    Labels come from the frame's single-point calculator (``energy``,
    ``forces``, ``stress``, ``magmoms``: ASE units, stress positive tensile)
    or, when a ``*_key`` is given, from ``atoms.info`` / ``atoms.arrays`` under
    that name (same units). ``atoms.info[id_key]`` groups frames by material;
    without it each frame is its own material.

    Raises:
        InputFileError: missing or unreadable file.
        TransferDataError: non-periodic frame, labels of the wrong shape.
    """
    from crossfunctional.io import read_structures

    path = Path(path)
    frames = read_structures(path, index=":")
    _refuse_asymmetric_stress(path, stress_key or "stress")
    out = []
    for k, atoms in enumerate(frames):
        where = f"{path.name}:{k}"
        results = dict(atoms.calc.results) if atoms.calc is not None else {}
        n = len(atoms)

        def get(key: str | None, default: str, per_atom: bool):
            if key is None:
                return results.get(default)
            store = atoms.arrays if per_atom else atoms.info
            if key not in store and key not in results:
                return None
            return store.get(key, results.get(key))

        energy = get(energy_key, "energy", False)
        stress = get(stress_key, "stress", False)
        out.append(
            LabelledStructure(
                structure=_structure_from_atoms(atoms, where),
                energy=None if energy is None else float(energy),
                forces=_per_atom(get(forces_key, "forces", True), n, 3, "forces", where),
                stress=None if stress is None else stress_to_3x3(stress, "voigt", where),
                magmoms=_per_atom(get(magmoms_key, "magmoms", True), n, 1, "magmoms", where),
                material_id=str(atoms.info.get(id_key, where)),
                source=where,
            )
        )
    return out


def _refuse_asymmetric_stress(path: Path, key: str) -> None:
    """ASE's extxyz reader symmetrises a 3x3 stress; an asymmetric one beyond
    numerical noise is a broken label, so the comment lines are checked as written."""
    from ase.io.extxyz import key_val_str_to_dict

    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    k, frame = 0, 0
    while k < len(lines):
        try:
            n = int(lines[k].strip())
        except ValueError:
            return  # not the plain layout this check knows; ASE read it
        info = key_val_str_to_dict(lines[k + 1]) if k + 1 < len(lines) else {}
        stress = next((v for name, v in info.items() if name.lower() == key.lower()), None)
        if stress is not None:
            arr = np.asarray(stress, dtype=float).reshape(-1)
            if arr.size == 9:
                m = arr.reshape(3, 3)
                if np.abs(m - m.T).max() > 1e-6 * max(1.0, float(np.abs(m).max())):
                    raise TransferDataError(
                        f"{path.name}:{frame}: the 3x3 stress label is not symmetric "
                        f"(largest difference {np.abs(m - m.T).max():.3g}); a stress tensor is, so the label is broken"
                    )
        k += n + 2
        frame += 1


def write_extxyz(records: Sequence[LabelledStructure], path: str | os.PathLike) -> Path:
    """Write records as extended XYZ (energy eV, forces eV/Å, stress eV/Å³
    positive tensile, magmoms μB; ``material_id`` in the frame info), atomically.
    :func:`read_extxyz` reads it back."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for rec in records:
        atoms = rec.atoms()
        atoms.info["material_id"] = rec.material_id
        results: dict[str, Any] = {}
        if rec.energy is not None:
            results["energy"] = rec.energy
        if rec.forces is not None:
            results["forces"] = np.asarray(rec.forces)
        if rec.stress is not None:
            results["stress"] = np.asarray(rec.stress)[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        if rec.magmoms is not None:
            results["magmoms"] = np.asarray(rec.magmoms)
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    path = Path(path)
    with atomic_path(path) as tmp:
        write(tmp, frames, format="extxyz")
    return path


def read_vasp(path: str | os.PathLike, energy: str = "e_0_energy") -> list[LabelledStructure]:
    """Read every ionic step of a VASP run.

    ``vasprun.xml`` is read with pymatgen's ``Vasprun`` (energy ``energy``:
    "e_0_energy" = sigma -> 0, "e_fr_energy" = free energy, or "e_wo_entrp";
    forces eV/Å; stress kBar, positive compressive, converted to ASE). An
    ``OUTCAR`` in the same folder supplies the final magnetic moments
    (pymatgen's ``Outcar``, total per site) for the last step. An ``OUTCAR``
    given directly is read with ASE's ``vasp-out`` reader, which converts the
    stress to eV/Å³, positive tensile, itself.

    Raises:
        InputFileError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"VASP output not found: {path}")
    name = path.name.lower()
    if "outcar" in name:
        return _read_outcar(path)
    try:
        from pymatgen.io.vasp.outputs import Vasprun

        run = Vasprun(str(path), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
    except Exception as exc:
        raise InputFileError(f"cannot read {path} as vasprun.xml ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    material_id = path.parent.name or path.stem
    out = []
    for k, step in enumerate(run.ionic_steps):
        where = f"{path.name}:{k}"
        structure = step["structure"]
        n = len(structure)
        out.append(
            LabelledStructure(
                structure=structure,
                energy=float(step[energy]),
                forces=_per_atom(step.get("forces"), n, 3, "forces", where),
                stress=None if step.get("stress") is None else vasp_kbar_to_ase(step["stress"], where=where),
                material_id=material_id,
                source=where,
            )
        )
    outcar = path.parent / "OUTCAR"
    if out and outcar.is_file():
        try:
            from pymatgen.io.vasp.outputs import Outcar

            mags = Outcar(str(outcar)).magnetization
            if mags and len(mags) == out[-1].n_atoms:
                out[-1].magmoms = np.array([m["tot"] for m in mags], dtype=float)
        except Exception:  # magnetisation is optional
            pass
    return out


def _read_outcar(path: Path) -> list[LabelledStructure]:
    """OUTCAR frames through ASE's ``vasp-out`` reader (energy, forces, stress
    already in ASE units and sign, magmoms when present)."""
    from ase.io import read

    try:
        frames = read(path, index=":", format="vasp-out")
    except Exception as exc:
        raise InputFileError(f"cannot read {path} as OUTCAR ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    out = []
    for k, atoms in enumerate(frames):
        where = f"{path.name}:{k}"
        res = atoms.calc.results if atoms.calc is not None else {}
        n = len(atoms)
        out.append(
            LabelledStructure(
                structure=_structure_from_atoms(atoms, where),
                energy=None if res.get("energy") is None else float(res["energy"]),
                forces=_per_atom(res.get("forces"), n, 3, "forces", where),
                stress=None if res.get("stress") is None else stress_to_3x3(res["stress"], "voigt", where),
                magmoms=_per_atom(res.get("magmoms"), n, 1, "magmoms", where),
                material_id=path.parent.name or path.name,
                source=where,
            )
        )
    return out


_ENERGY_KEYS = ("energy", "corrected_total_energy", "uncorrected_total_energy")
_FORCE_KEYS = ("forces", "force", "forces_eV_per_A")
_MAGMOM_KEYS = ("magmoms", "magmom")
_ID_KEYS = ("material_id", "matpes_id", "mp_id")


def _json_records(data: Any) -> Iterable[tuple[str, dict]]:
    """(id, record) pairs of a list, a {id: record} dict or an MPtrj-style
    {material_id: {frame_id: record}} dict."""
    if isinstance(data, list):
        for k, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise TransferDataError(f"record {k} is a {type(rec).__name__}, not a JSON object")
            yield next((str(rec[key]) for key in _ID_KEYS if key in rec), str(k)), rec
    elif isinstance(data, dict) and "structure" in data:
        yield str(next((data[key] for key in _ID_KEYS if key in data), "0")), data
    elif isinstance(data, dict):
        for key, rec in data.items():
            if isinstance(rec, dict) and "structure" in rec:
                yield str(key), rec
            elif isinstance(rec, dict) and rec and all(isinstance(v, dict) and "structure" in v for v in rec.values()):
                for sub in rec.values():  # MPtrj: {mp_id: {frame_id: record}}
                    yield str(key), sub
            else:
                raise TransferDataError(f"entry {key!r} has no 'structure'; not a MatPES/MPtrj-style record")
    else:
        raise TransferDataError("JSON must hold a list of records or a dict of records keyed by id")


def _energy_is_per_atom(key: str, energy_per_atom: bool | None, where: str) -> bool:
    """Whether the energy under ``key`` is per atom (see :func:`read_json`)."""
    if energy_per_atom is not None:
        return bool(energy_per_atom)
    if key.endswith("per_atom"):
        return True
    if key in _ENERGY_KEYS:
        return False
    raise TransferDataError(
        f"{where}: cannot tell whether the energy under {key!r} is a total or per atom: "
        f"say so (energy_per_atom=True or False; on the command line --energy-per-atom or --energy-total); "
        f"keys read without that: {', '.join(_ENERGY_KEYS)} (totals) and keys ending in 'per_atom'"
    )


def _record_structure(rec: dict, where: str) -> Structure:
    """A record's pymatgen ``structure`` dict, or ASE-style symbols/positions/cell."""
    if "structure" in rec:
        try:
            return Structure.from_dict(rec["structure"])
        except Exception as exc:
            raise TransferDataError(f"{where}: 'structure' is not a pymatgen structure dict ({exc})") from None
    try:
        pbc = rec.get("pbc", True)
        if not (np.all(pbc) if isinstance(pbc, (list, tuple)) else pbc):
            raise TransferDataError(f"{where}: only periodic structures can be labelled training data (pbc {pbc})")
        return Structure(np.asarray(rec["cell"], dtype=float), list(rec["symbols"]), np.asarray(rec["positions"], dtype=float),
                         coords_are_cartesian=True)
    except TransferDataError:
        raise
    except Exception as exc:
        raise TransferDataError(f"{where}: no usable 'structure' or 'symbols'/'positions'/'cell' ({type(exc).__name__}: {exc})") from None


def _record_stress(rec: dict, stress_order: str, where: str) -> np.ndarray | None:
    """ASE stress [3, 3] (eV/Å³, positive tensile) from ``stress`` (VASP kBar)
    or ``stress_eV_per_A3`` (ASE's units and sign)."""
    if rec.get("stress") is not None:
        return vasp_kbar_to_ase(rec["stress"], stress_order, where)
    if rec.get("stress_eV_per_A3") is not None:
        return stress_to_3x3(rec["stress_eV_per_A3"], stress_order, where)
    return None


def read_json(
    path: str | os.PathLike,
    energy_key: str | None = None,
    stress_order: str = "voigt",
    magmoms_key: str | None = None,
    energy_per_atom: bool | None = None,
) -> list[LabelledStructure]:
    """Read MatPES / MPtrj / WBM-style JSON (``.json`` or ``.json.gz``).

    Each record holds ``structure`` (pymatgen dict), or ASE-style
    ``symbols``, ``positions`` (Å), ``cell`` (Å) and ``pbc``, and labels:
    energy (eV, total: the first of ``energy``, ``corrected_total_energy``,
    ``uncorrected_total_energy`` present, or ``energy_key``), ``forces``/
    ``force``/``forces_eV_per_A`` (eV/Å), ``stress`` (kBar, positive
    compressive, VASP's convention; 6 components in ``stress_order``,
    "voigt" for MatPES, or 3x3 as in MPtrj) or ``stress_eV_per_A3`` (3x3,
    eV/Å³, ASE's sign), and ``magmoms``/``magmom`` (μB; or ``magmoms_key``,
    e.g. MatPES' ``bader_magmoms``). Stresses are converted to ASE's eV/Å³,
    positive tensile. A record's ``source`` (e.g. the calculation a frame
    belongs to) becomes its ``material_id`` when it has no id, so that splits
    by material keep the frames of one run together.

    Energies per atom are read only when that is explicit: a key ending in
    ``per_atom`` (e.g. ``energy_per_atom``) or ``energy_per_atom=True``; an
    ``energy_key`` that is neither one of the total-energy keys above nor a
    ``per_atom`` key needs ``energy_per_atom`` (True or False), else it is an
    error, never silently a total.

    Raises:
        InputFileError: missing or unreadable file.
        TransferDataError: records without a structure, labels of the wrong
            shape, an energy key whose meaning (total or per atom) is not known.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"data file not found: {path}")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except Exception as exc:
        raise InputFileError(f"cannot read {path} as JSON ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    out = []
    for k, (mid, rec) in enumerate(_json_records(data)):
        where = f"{path.name}:{k} ({mid})"
        structure = _record_structure(rec, where)
        n = len(structure)
        keys = (energy_key,) if energy_key else _ENERGY_KEYS
        e_key = next((key for key in keys if rec.get(key) is not None), None)
        if energy_key and e_key is None and energy_key not in rec:
            raise TransferDataError(f"{where}: no energy under {energy_key!r}")
        per_atom = e_key is not None and _energy_is_per_atom(e_key, energy_per_atom, where)
        energy = None if e_key is None else float(rec[e_key]) * (n if per_atom else 1)
        forces = next((rec[key] for key in _FORCE_KEYS if rec.get(key) is not None), None)
        mkeys = (magmoms_key,) if magmoms_key else _MAGMOM_KEYS
        magmoms = next((rec[key] for key in mkeys if rec.get(key) is not None), None)
        out.append(
            LabelledStructure(
                structure=structure,
                energy=energy,
                forces=_per_atom(forces, n, 3, "forces", where),
                stress=_record_stress(rec, stress_order, where),
                magmoms=_per_atom(magmoms, n, 1, "magmoms", where),
                material_id=str(rec["source"]) if mid.isdigit() and rec.get("source") else mid,
                source=where,
            )
        )
    if not out:
        raise TransferDataError(f"{path} holds no records")
    return out


def read_labelled(path: str | os.PathLike, energy_key: str | None = None, **kwargs) -> list[LabelledStructure]:
    """Read labelled structures, choosing the reader by file name:
    ``*.json``/``*.json.gz`` -> :func:`read_json`; ``vasprun*.xml`` or
    ``*OUTCAR*`` -> :func:`read_vasp`; anything else -> :func:`read_extxyz`.

    Raises:
        InputFileError: missing or unreadable file, or a file with no structure.
        TransferDataError: labels of the wrong shape, non-periodic frames.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".json") or name.endswith(".json.gz"):
        return read_json(path, energy_key=energy_key, **kwargs)
    if (name.startswith("vasprun") and ".xml" in name) or "outcar" in name:
        return read_vasp(path, **kwargs)
    return read_extxyz(path, energy_key=energy_key, **kwargs)


def group_kfold(records: Sequence[LabelledStructure], k: int = 5, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Grouped k-fold cross-validation: ``k`` (train, test) pairs of record
    indices in which the frames of one ``material_id`` (one material, or one
    calculation such as a relaxation run) are never on both sides.

    Groups are shuffled with ``seed`` and dealt, largest first, to the fold
    that holds the fewest frames so far, so folds stay balanced when groups
    are of very unequal size; every record is tested exactly once.

    Raises:
        TransferDataError: fewer groups than folds, or k < 2.
    """
    if k < 2:
        raise TransferDataError(f"k-fold cross-validation needs k >= 2, got {k}")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.material_id, []).append(i)
    if len(groups) < k:
        raise TransferDataError(f"{k}-fold cross-validation needs at least {k} groups (material_id), got {len(groups)}")
    keys = list(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    order = sorted(order, key=lambda g: -len(groups[keys[g]]))  # stable: ties keep the shuffled order
    tests: list[list[int]] = [[] for _ in range(k)]
    for g in order:
        fold = min(range(k), key=lambda f: (len(tests[f]), f))
        tests[fold].extend(groups[keys[g]])
    return [(sorted(set(range(len(records))) - set(test)), sorted(test)) for test in tests]


# ----------------------------------------------------------------- splits and checks
def split_records(
    records: Sequence[LabelledStructure],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    by: str = "material",
    seed: int = 0,
) -> tuple[list[LabelledStructure], ...]:
    """Random split into len(fractions) parts (train, val, test by default).

    ``by="material"`` keeps all structures of one ``material_id`` in the same
    part (the paper's split); ``by="structure"`` splits frames independently.
    Group counts are rounded, the last part takes the remainder; the same
    ``seed`` gives the same split.

    Raises:
        TransferDataError: fractions that are negative or do not sum to 1,
            unknown ``by``, or a part with a non-zero fraction that ends up empty.
    """
    fractions = [float(f) for f in fractions]
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise TransferDataError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    if by == "material":
        keys = list(dict.fromkeys(r.material_id for r in records))
        groups: dict[str, list[int]] = {key: [] for key in keys}
        for k, r in enumerate(records):
            groups[r.material_id].append(k)
    elif by == "structure":
        keys = [str(k) for k in range(len(records))]
        groups = {key: [int(key)] for key in keys}
    else:
        raise TransferDataError(f"split by must be 'material' or 'structure', got {by!r}")
    order = np.random.default_rng(seed).permutation(len(keys))
    counts = [int(round(f * len(keys))) for f in fractions[:-1]]
    counts.append(len(keys) - sum(counts))
    if counts[-1] < 0:
        counts[-2] += counts[-1]
        counts[-1] = 0
    parts, start = [], 0
    names = ["train", "val", "test"] + [f"part {k}" for k in range(3, len(fractions))]
    for k, count in enumerate(counts):
        idx = [i for g in order[start : start + count] for i in groups[keys[g]]]
        if fractions[k] > 0 and not idx:
            raise TransferDataError(
                f"the {names[k]} split is empty: {len(keys)} {by}(s) split {fractions} gives {counts}; "
                "use more data or other fractions"
            )
        parts.append([records[i] for i in sorted(idx)])
        start += count
    return tuple(parts)


def check_records(
    records: Sequence[LabelledStructure],
    name: str = "data",
    max_z: int = MAX_Z,
    require: str = "e",
) -> str:
    """Check labelled data before any training and return the targets it
    supports, a chgnet target string ("e", "ef", "efs", "efsm", "efm", ...).

    Energies must be present and finite everywhere; forces and stress must be
    present in all structures or in none (a mix is an error: chgnet would
    silently train on part of them); magmoms may be missing on some structures
    (those then add no magmom loss, as in the paper). ``require`` lists targets
    that must be present.

    Raises:
        TransferDataError: empty data, missing or non-finite labels, label
            shapes that do not match the structure, elements beyond the model's
            ``max_z``, a label required by ``require`` that is absent.
    """
    if not records:
        raise TransferDataError(f"{name} is empty: no labelled structures")

    def listing(bad: list[LabelledStructure]) -> str:
        shown = ", ".join(r.source or r.material_id for r in bad[:5])
        return shown + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")

    missing = [r for r in records if r.energy is None or not np.isfinite(r.energy)]
    if missing:
        raise TransferDataError(f"{name}: {len(missing)} of {len(records)} structures have no (finite) energy label: {listing(missing)}")
    from pymatgen.core.periodic_table import Element

    beyond = sorted({int(z) for r in records for z in r.atomic_numbers if z > max_z or z < 1})
    if beyond:
        names = ", ".join(f"{Element.from_Z(z).symbol} (Z={z})" for z in beyond)
        bad = [r for r in records if any(z in beyond for z in r.atomic_numbers)]
        raise TransferDataError(f"{name}: element(s) {names} not covered by the model (Z = 1..{max_z}) in {listing(bad)}")
    targets = "e"
    for key, label in (("f", "forces"), ("s", "stress")):
        have = [getattr(r, label) is not None for r in records]
        if all(have):
            targets += key
        elif any(have):
            bad = [r for r, h in zip(records, have) if not h]
            raise TransferDataError(
                f"{name}: missing {label} labels in {len(bad)} of {len(records)} structures ({listing(bad)}); "
                f"label all structures or none"
            )
    for r in records:
        n = r.n_atoms
        if r.forces is not None and np.shape(r.forces) != (n, 3):
            raise TransferDataError(f"{name}: {r.source}: forces shape {np.shape(r.forces)} != ({n}, 3)")
        if r.stress is not None and np.shape(r.stress) != (3, 3):
            raise TransferDataError(f"{name}: {r.source}: inconsistent stress shape {np.shape(r.stress)}, expected (3, 3)")
        if r.magmoms is not None and np.shape(r.magmoms) != (n,):
            raise TransferDataError(f"{name}: {r.source}: magmoms shape {np.shape(r.magmoms)} != ({n},)")
    if any(r.magmoms is not None for r in records):
        targets += "m"
    absent = [key for key in require if key not in targets]
    if absent:
        labels = {"e": "energy", "f": "forces", "s": "stress", "m": "magmoms"}
        raise TransferDataError(f"{name}: required label(s) {', '.join(labels[a] for a in absent)} absent from every structure")
    return targets
