"""Dispersion corrections D3(BJ) and D4 for the crossfunctional models.

Neither shipped model describes long-range dispersion: the r2SCAN meta-GGA
has none, and the GGA model was trained on PBE(+U) data. Practitioners add
Grimme's D3 with Becke-Johnson damping or D4 for the functional the model
reproduces: r2SCAN-D3(BJ) and r2SCAN-D4 (both fitted by S. Ehlert et al.,
J. Chem. Phys. 154, 061101 (2021)),
PBE-D3(BJ) (S. Grimme, S. Ehrlich, L. Goerigk, J. Comput. Chem. 32, 1456
(2011)) and PBE-D4 (E. Caldeweyher et al., J. Chem. Phys. 150, 154122 (2019)).

The corrections come from the ``dftd3`` (simple-dftd3) and ``dftd4`` Python
packages (``pip install "crossfunctional[dispersion]"``), evaluated through
their library interfaces in double precision: energy, analytical gradient,
virial, and the library's pairwise decomposition for per-atom energies.
They are chosen over ``tad-dftd3`` (a torch re-implementation) because they
are the reference implementations by the method's authors, carry the
published parameter tables (r2SCAN included), need no torch graph and are
fast on CPU: on Si 216 (one core) r2SCAN-D3(BJ) adds about 0.12 s and
r2SCAN-D4 about 1.0 s to the model's 0.19 s for energy, forces and stress.

Three-body term. The Axilrod-Teller-Muto (ATM) term is off by default for
both methods (``"d3bj"``, ``"d4"``) and on with ``"d3bj-atm"``,
``"d4-atm"``. D3(BJ) is conventionally used without it (``dftd3``'s own
default); D4's published parameters were fitted with it, but in periodic
cells it costs about 20 to 40 s per evaluation of Si 216 or MgO 64 on one
core (its 40 Bohr triple cutoff) against 0.1 to 1 s without it, too slow
for relaxations and MD. For Si it changes the r2SCAN-D4 energy by
+0.011 eV/atom (repulsive).

Units: ASE's (eV, Å, eV/Å³ for stress, positive tensile).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

from crossfunctional.errors import CrossFunctionalError

__all__ = [
    "DISPERSION_METHODS",
    "MODEL_FUNCTIONALS",
    "Dispersion",
    "DispersionError",
    "dispersion_for_model",
    "model_functional",
]

log = logging.getLogger(__name__)

#: Accepted ``dispersion=`` values -> (library, three-body ATM term included).
DISPERSION_METHODS: dict[str, tuple[str, bool]] = {
    "d3bj": ("dftd3", False),
    "d3bj-atm": ("dftd3", True),
    "d4": ("dftd4", False),
    "d4-atm": ("dftd4", True),
}

#: Registered model name -> the functional whose dispersion parameters apply
#: (names as ``dftd3``/``dftd4`` know them). Exported TorchScript files keep
#: the registered name in their metadata, so they resolve too.
MODEL_FUNCTIONALS: dict[str, str] = {"chgnet-r2scan": "r2scan", "chgnet-0.3.0": "pbe"}

_INSTALL_HINT = 'pip install "crossfunctional[dispersion]" (or pip install dftd3 dftd4)'


class DispersionError(CrossFunctionalError, ValueError):
    """An unknown dispersion method, a functional the library has no
    parameters for, a model whose functional is unknown, or a missing library."""


def model_functional(metadata: dict[str, Any]) -> str | None:
    """The dispersion functional of a model from its metadata
    (:func:`crossfunctional.models.model_metadata`): the ``dispersion_functional``
    entry if present, else the one of the registered ``model_name``
    (:data:`MODEL_FUNCTIONALS`), else None."""
    explicit = metadata.get("dispersion_functional")
    if explicit:
        return str(explicit)
    return MODEL_FUNCTIONALS.get(str(metadata.get("model_name", "")))


def _import(library: str):
    try:
        if library == "dftd3":
            import dftd3.interface as interface
        else:
            import dftd4.interface as interface
    except ImportError as exc:
        raise DispersionError(f"this dispersion correction needs the {library} package ({exc}): {_INSTALL_HINT}") from None
    return interface


@dataclass
class _Cache:
    numbers: tuple[int, ...]
    pbc: tuple[bool, ...]
    charge: float
    model: Any


class Dispersion:
    """D3(BJ) or D4 dispersion correction for one functional.

    Args:
        method: one of :data:`DISPERSION_METHODS`: ``"d3bj"`` (D3, rational
            Becke-Johnson damping, two-body), ``"d3bj-atm"`` (with the ATM
            three-body term), ``"d4"`` (D4, rational damping, two-body) or
            ``"d4-atm"`` (with ATM, as the D4 parameters were fitted).
        functional: functional name as the library knows it (case-insensitive),
            e.g. ``"r2scan"`` or ``"pbe"``.

    Raises:
        DispersionError: unknown ``method``; the library is not installed; it
            has no parameters of that damping for ``functional``.

    :meth:`compute` returns energy (eV), per-atom energies [N] (eV), forces
    [N, 3] (eV/Å) and, for fully periodic cells, stress [6] (eV/Å³, Voigt
    xx yy zz yz xz xy, positive tensile), with the libraries' default real-space
    cutoffs (pairs 60 Bohr, triples 40 Bohr, coordination numbers 40 Bohr for
    D3 and 30 Bohr for D4). The total charge for D4 is the sum of the atoms'
    initial charges (0 unless set).
    """

    def __init__(self, method: str, functional: str) -> None:
        if method not in DISPERSION_METHODS:
            raise DispersionError(f"unknown dispersion {method!r}: expected one of {', '.join(DISPERSION_METHODS)} or None")
        if not isinstance(functional, str) or not functional.strip():
            raise DispersionError(f"dispersion functional must be a functional name such as 'r2scan' or 'pbe', got {functional!r}")
        self.method = method
        self.functional = functional.strip().lower()
        self.library, self.three_body = DISPERSION_METHODS[method]
        self._interface = _import(self.library)
        try:
            if self.library == "dftd3":
                self._param = self._interface.RationalDampingParam(method=self.functional, atm=self.three_body)
            else:
                self._param = self._interface.DampingParam(method=self.functional, atm=self.three_body)
        except RuntimeError as exc:
            raise DispersionError(
                f"{self.library} has no {self.label.split('-', 1)[1]} parameters for functional {functional!r} ({exc})"
            ) from None
        self._cache: _Cache | None = None

    @property
    def label(self) -> str:
        """E.g. ``"r2scan-D3(BJ)"``, ``"pbe-D4+ATM"``."""
        name = "D3(BJ)" if self.library == "dftd3" else "D4"
        return f"{self.functional}-{name}{'+ATM' if self.three_body else ''}"

    def __repr__(self) -> str:
        return f"Dispersion(method={self.method!r}, functional={self.functional!r})"

    def __getstate__(self) -> dict[str, Any]:  # the library objects are C handles: rebuilt on demand
        return {"method": self.method, "functional": self.functional}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["method"], state["functional"])

    def ase_calculator(self):
        """The library's own ASE calculator with the same settings
        (``dftd3.ase.DFTD3`` or ``dftd4.ase.DFTD4``), e.g. for
        ``ase.calculators.mixing.SumCalculator`` with another potential."""
        if self.library == "dftd3":
            from dftd3.ase import DFTD3

            return DFTD3(damping="d3bj", params_tweaks={"method": self.functional, "atm": self.three_body})
        from dftd4.ase import DFTD4

        return DFTD4(method=self.functional, params_tweaks={"atm": self.three_body})

    def _model(self, atoms: Atoms):
        numbers = tuple(int(z) for z in atoms.numbers)
        pbc = tuple(bool(p) for p in atoms.pbc)
        charge = float(atoms.get_initial_charges().sum())
        positions = atoms.positions / Bohr
        cell = np.asarray(atoms.cell[:]) / Bohr
        c = self._cache
        if c is not None and (c.numbers, c.pbc, c.charge) == (numbers, pbc, charge):
            try:
                c.model.update(positions, cell)
                return c.model
            except RuntimeError:
                self._cache = None
        try:
            if self.library == "dftd3":
                model = self._interface.DispersionModel(atoms.numbers, positions, cell, atoms.pbc)
            else:
                model = self._interface.DispersionModel(atoms.numbers, positions, charge, cell, atoms.pbc)
        except RuntimeError as exc:
            raise DispersionError(f"{self.library} cannot set up {atoms.get_chemical_formula()}: {exc}") from None
        self._cache = _Cache(numbers, pbc, charge, model)
        return model

    def compute(self, atoms: Atoms) -> dict[str, Any]:
        """Dispersion energy, per-atom energies, forces and (fully periodic
        cells) stress of ``atoms``, in ASE units (see the class docstring).

        Raises:
            DispersionError: the library cannot evaluate the structure.
        """
        model = self._model(atoms)
        try:
            res = model.get_dispersion(self._param, grad=True)
            pair = model.get_pairwise_dispersion(self._param)
        except RuntimeError as exc:
            raise DispersionError(f"{self.library} could not evaluate {atoms.get_chemical_formula()}: {exc}") from None
        energies = (pair["additive pairwise energy"] + pair["non-additive pairwise energy"]).sum(axis=1) * Hartree
        out = {
            "energy": float(res["energy"]) * Hartree,
            "energies": energies,
            "forces": -np.asarray(res["gradient"]) * (Hartree / Bohr),
        }
        if atoms.pbc.all():
            virial = np.asarray(res["virial"]) * Hartree / abs(atoms.get_volume())
            out["stress"] = virial.flat[[0, 4, 8, 5, 2, 1]]
        return out

    def add_to(self, results: dict[str, Any], atoms: Atoms) -> None:
        """Add the correction of ``atoms`` to a calculator's ``results`` in place:
        ``energy``, ``free_energy``, ``energies``, ``forces`` and, where present,
        ``stress``; stores the correction's energy as ``dispersion_energy`` (eV)."""
        disp = self.compute(atoms)
        results["energy"] = results["energy"] + disp["energy"]
        results["free_energy"] = results["energy"]
        results["dispersion_energy"] = disp["energy"]
        results["energies"] = results["energies"] + disp["energies"]
        results["forces"] = results["forces"] + disp["forces"]
        if "stress" in results:
            results["stress"] = results["stress"] + disp["stress"]


def dispersion_for_model(
    dispersion: str | None, functional: str | None, metadata: dict[str, Any]
) -> Dispersion | None:
    """The :class:`Dispersion` a calculator of a model with ``metadata`` uses.

    Args:
        dispersion: None (no correction) or one of :data:`DISPERSION_METHODS`.
        functional: the functional's name, overriding the model's; None to take
            it from the metadata (:func:`model_functional`).
        metadata: the model's metadata.

    Raises:
        DispersionError: as :class:`Dispersion`; or no ``functional`` given
            for a model whose metadata names none (a user's checkpoint).
    """
    if dispersion is None:
        if functional is not None:
            raise DispersionError("dispersion_functional was given without dispersion= ('d3bj', 'd4', ...)")
        return None
    if functional is None:
        functional = model_functional(metadata)
        if functional is None:
            name = metadata.get("model_name", "this model")
            raise DispersionError(
                f"{name} does not name the functional its dispersion correction should use: "
                "pass dispersion_functional= (e.g. 'r2scan' or 'pbe')"
            )
    disp = Dispersion(dispersion, functional)
    log.info("dispersion correction %s (%s)", disp.label, disp.library)
    return disp
