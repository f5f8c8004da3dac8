"""What a phonon run returns: :class:`PhononResult` (with the phonopy object,
band structure, DOS and thermal properties), :class:`PhononSummary` with its
text report, :class:`ImaginaryMode`, the files :meth:`PhononResult.write`
produces, the band-structure and DOS plots, and the search for imaginary modes.

Frequencies in THz (phonopy's ν, not ω; imaginary as negative numbers),
thermal properties per mole of formula units and per mole of atoms (kJ/mol,
J/K/mol).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from crossfunctional.errors import WorkflowError
from crossfunctional.io import atomic_path, atomic_write
from crossfunctional.workflows.phonons.cells import _phonopy_labels

if TYPE_CHECKING:  # pragma: no cover
    from phonopy import Phonopy

    from crossfunctional.workflows.relax import RelaxResult

__all__ = ["ImaginaryMode", "PhononResult", "PhononSummary", "plot_band_structure", "plot_dos"]

#: Molar gas constant R = k_B N_A, J/K/mol (CODATA 2018, exact: k_B = 1.380649e-23 J/K, N_A = 6.02214076e23 /mol).
_R = 1.380649e-23 * 6.02214076e23


@dataclass
class ImaginaryMode:
    """A q-point where the lowest frequency is below the threshold.

    Attributes:
        qpoint: [3] fractional, reciprocal basis of phonopy's primitive cell.
        frequency: lowest frequency there, THz (negative: imaginary).
        n_modes: number of branches below the threshold there.
        where: "X", "on Γ–X", or "mesh point" (with equivalent labels found
            by the point-group operations of the crystal).
    """

    qpoint: list[float]
    frequency: float
    n_modes: int
    where: str


@dataclass
class PhononSummary:
    """What a phonon run found; :meth:`text` prints it, :meth:`as_dict` for JSON.

    Frequencies in THz, lengths in Å, forces in eV/Å. ``heat_capacity_*`` in
    J/K per mole of atoms; ``dulong_petit_ratio`` is C_V / (3 N k_B) at
    ``t_max``.
    """

    formula: str
    model: str
    n_atoms_unitcell: int
    n_atoms_primitive: int
    n_atoms_supercell: int
    supercell_matrix: list[list[int]]
    supercell_widths: list[float]
    displacement: float
    n_displacements: int
    relaxed: bool
    relaxed_cell: bool
    relax_steps: int | None
    relax_fmax: float | None
    residual_force: float
    max_force_drift: float
    lattice: list[list[float]]
    mesh: list[int]
    nac: bool
    min_frequency: float
    min_frequency_qpoint: list[float]
    min_frequency_where: str
    max_frequency: float
    acoustic_gamma: list[float]
    imaginary_threshold: float
    has_imaginary: bool
    n_imaginary_qpoints: int
    imaginary_modes: list[ImaginaryMode] = field(default_factory=list)
    t_max: float = 1000.0
    heat_capacity_300K: float | None = None
    heat_capacity_tmax: float | None = None
    dulong_petit_ratio: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (units in the key names where not obvious)."""
        return asdict(self)

    def text(self) -> str:
        """A human-readable report."""
        lines = [
            f"{self.formula} with {self.model}: {self.n_atoms_primitive} atoms in the primitive cell, "
            f"supercell of {self.n_atoms_supercell} atoms (matrix {self.supercell_matrix}, "
            f"widths {', '.join(f'{w:.2f}' for w in self.supercell_widths)} Å), "
            f"{self.n_displacements} displacement(s) of {self.displacement:g} Å",
        ]
        if self.relaxed:
            lines.append(
                f"pre-relaxed ({'cell and positions' if self.relaxed_cell else 'positions'}, symmetry kept) in "
                f"{self.relax_steps} steps to max force "
                f"{self.relax_fmax:.1e} eV/Å"
            )
        else:
            lines.append("not pre-relaxed (relax=False)")
        lines.append(
            f"residual max force on the unit cell {self.residual_force:.1e} eV/Å; "
            f"largest force drift in a displaced supercell {self.max_force_drift:.1e} eV/Å"
        )
        lines.append(
            f"frequencies from {self.min_frequency:.3f} THz ({self.min_frequency_where}) "
            f"to {self.max_frequency:.3f} THz; q mesh {self.mesh} (Γ-centred)"
        )
        lines.append("acoustic modes at Γ: " + ", ".join(f"{f:+.4f}" for f in self.acoustic_gamma) + " THz")
        if self.has_imaginary:
            lines.append(
                f"IMAGINARY MODES: {self.n_imaginary_qpoints} q-point(s) with frequencies below "
                f"{self.imaginary_threshold:g} THz: the structure is dynamically unstable (a saddle point of "
                "the model's energy); lowest:"
            )
            for m in self.imaginary_modes[:10]:
                q = ", ".join(f"{x:.4f}" for x in m.qpoint)
                lines.append(f"  {m.frequency:+.3f} THz at q = ({q}) [{m.where}], {m.n_modes} branch(es)")
        else:
            lines.append(f"no imaginary modes (none below {self.imaginary_threshold:g} THz): dynamically stable")
        if not self.nac:
            lines.append("no non-analytical correction: LO–TO splitting absent (pass a BORN file for polar materials)")
        if self.heat_capacity_tmax is not None:
            lines.append(
                f"C_V at 300 K: {self.heat_capacity_300K:.3f} J/K/mol-atoms; at {self.t_max:g} K: "
                f"{self.heat_capacity_tmax:.3f} J/K/mol-atoms = {self.dulong_petit_ratio:.4f} × 3R (Dulong–Petit)"
            )
        return "\n".join(lines)


@dataclass
class PhononResult:
    """Outcome of :func:`phonons`.

    Attributes:
        phonopy: the ``phonopy.Phonopy`` object with displacements, forces and
            force constants (and the BORN parameters when given); band
            structure, mesh and thermal properties have been run on it.
        summary: :class:`PhononSummary`.
        atoms: the unit cell used (pre-relaxed unless ``relax=False``), no calculator.
        band: ``{"labels": [(start, end)], "connections": [bool], "qpoints":
            [[n, 3]], "distances": [[n]], "frequencies": [[n, 3 N_prim]] THz,
            "points": {label: [3]}}``.
        dos: ``{"frequency": [F] THz, "dos": [F] states/THz per primitive cell}``.
        thermal: ``{"temperature": K, "free_energy_fu": kJ/mol, "entropy_fu":
            J/K/mol, "heat_capacity_fu": J/K/mol, and the same with ``_atom``
            per mole of atoms}``, arrays [T]; ``"formula_unit"``,
            ``"atoms_per_formula_unit"``.
        forces: [S, N_super, 3] eV/Å, forces on the displaced supercells.
        relaxation: the pre-relaxation's RelaxResult, or None.
    """

    phonopy: Phonopy
    summary: PhononSummary
    atoms: Atoms
    band: dict[str, Any]
    dos: dict[str, np.ndarray]
    thermal: dict[str, Any]
    forces: np.ndarray
    relaxation: RelaxResult | None = None

    def frequencies(self, qpoints: Sequence[Sequence[float]]) -> np.ndarray:
        """Frequencies (THz) at q-points [Q, 3] (fractional, primitive reciprocal
        basis): [Q, 3 N_prim], sorted per q-point, imaginary as negative."""
        self.phonopy.run_qpoints(np.asarray(qpoints, dtype=float).reshape(-1, 3))
        return np.array(self.phonopy.qpoints.frequencies)

    def write(self, output_dir: str | os.PathLike, fc_format: str = "text") -> dict[str, Path]:
        """Write everything into ``output_dir`` (created if needed), each file atomically.

        Files: ``phonopy_params.yaml`` (unit cell, supercell matrix,
        displacements and forces, BORN data; ``phonopy.load`` reopens it),
        ``band.yaml`` (phonopy's band-structure file), ``band_structure.png``,
        ``dos.png``, ``total_dos.dat``, ``thermal_properties.csv`` (per formula
        unit and per mole of atoms, units in the header) and
        ``thermal_properties.yaml`` (phonopy's, per mole of primitive cells),
        ``FORCE_CONSTANTS`` (compact, primitive-atom rows; ``fc_format="text"``)
        or ``force_constants.hdf5`` (``"hdf5"``), ``unitcell.vasp``,
        ``summary.json`` and ``summary.txt``.

        Returns:
            {name: path} of the files written.

        Raises:
            ValueError: unknown ``fc_format``.
        """
        from ase.io import write as ase_write
        from phonopy.file_IO import write_force_constants_to_hdf5, write_FORCE_CONSTANTS

        if fc_format not in ("text", "hdf5"):
            raise WorkflowError(f"fc_format must be 'text' or 'hdf5', got {fc_format!r}")
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        ph = self.phonopy
        written: dict[str, Path] = {}

        def target(name: str) -> Path:
            written[name] = out / name
            return out / name

        with atomic_path(target("phonopy_params.yaml")) as tmp:
            ph.save(filename=tmp)
        with atomic_path(target("band.yaml")) as tmp:
            self._rerun_band()
            ph.write_yaml_band_structure(filename=tmp)
        with atomic_path(target("thermal_properties.yaml")) as tmp:
            ph.write_yaml_thermal_properties(filename=tmp)
        p2s = ph.primitive.p2s_map
        fc = ph.force_constants
        compact = fc[p2s] if fc.shape[0] == fc.shape[1] else fc  # rows of the primitive-cell atoms only
        if fc_format == "text":
            with atomic_path(target("FORCE_CONSTANTS")) as tmp:
                write_FORCE_CONSTANTS(compact, filename=tmp, p2s_map=p2s)
        else:
            with atomic_path(target("force_constants.hdf5")) as tmp:
                write_force_constants_to_hdf5(compact, filename=str(tmp), p2s_map=p2s)
        with atomic_path(target("unitcell.vasp")) as tmp:
            ase_write(tmp, self.atoms, format="vasp", direct=True)

        with atomic_write(target("total_dos.dat")) as fh:
            fh.write("# frequency (THz)   DOS (states/THz per primitive cell)\n")
            for f, d in zip(self.dos["frequency"], self.dos["dos"]):
                fh.write(f"{f:14.6f} {d:16.8f}\n")

        th = self.thermal
        fu = th["formula_unit"]
        with atomic_write(target("thermal_properties.csv")) as fh:
            fh.write(
                f"# harmonic thermal properties of {fu} ({th['atoms_per_formula_unit']} atoms per formula unit); "
                "_fu: per mole of formula units, _atom: per mole of atoms\n"
            )
            fh.write(
                "T_K,F_kJ_per_mol_fu,S_J_per_K_mol_fu,Cv_J_per_K_mol_fu,"
                "F_kJ_per_mol_atom,S_J_per_K_mol_atom,Cv_J_per_K_mol_atom,Cv_per_3R\n"
            )
            for k, t in enumerate(th["temperature"]):
                fh.write(
                    f"{t:.2f},{th['free_energy_fu'][k]:.6f},{th['entropy_fu'][k]:.6f},{th['heat_capacity_fu'][k]:.6f},"
                    f"{th['free_energy_atom'][k]:.6f},{th['entropy_atom'][k]:.6f},"
                    f"{th['heat_capacity_atom'][k]:.6f},{th['heat_capacity_atom'][k] / (3 * _R):.6f}\n"
                )

        with atomic_write(target("summary.json")) as fh:
            json.dump(self.summary.as_dict(), fh, indent=1)
        with atomic_write(target("summary.txt")) as fh:
            fh.write(self.summary.text() + "\n")

        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        plot_band_structure(self, ax=ax)
        ax.set_title(f"{self.thermal['formula_unit']} ({self.summary.model})")
        fig.tight_layout()
        with atomic_path(target("band_structure.png")) as tmp:
            fig.savefig(tmp, dpi=150)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(5.0, 3.6))
        plot_dos(self, ax=ax)
        ax.set_title(f"{self.thermal['formula_unit']} ({self.summary.model})")
        fig.tight_layout()
        with atomic_path(target("dos.png")) as tmp:
            fig.savefig(tmp, dpi=150)
        plt.close(fig)
        return written

    def _rerun_band(self) -> None:
        """Make the phonopy band structure current (a user may have run other q-points)."""
        b = self.band
        self.phonopy.run_band_structure(
            [np.asarray(s) for s in b["qpoints"]],
            path_connections=b["connections"],
            labels=_phonopy_labels(b["labels"], b["connections"]),
        )


def plot_band_structure(
    result: PhononResult,
    ax=None,
    color: str = "C0",
    label: str | None = None,
    reference: PhononResult | None = None,
    **kwargs,
):
    """Plot the band structure of ``result`` (frequencies in THz along the
    seekpath path; imaginary frequencies drawn as negative) on ``ax``.

    Args:
        result: a :class:`PhononResult`.
        ax: matplotlib Axes (a new figure when None).
        color, label, kwargs: passed to ``ax.plot``.
        reference: another result on the same band path (e.g. another model)
            whose path lengths set the x axis, so that both share the ticks.

    Returns:
        The matplotlib Axes.

    Raises:
        ValueError: ``reference`` has a different band path.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots()
    b = result.band
    xaxis = b
    if reference is not None:
        xaxis = reference.band
        if xaxis["labels"] != b["labels"] or [len(d) for d in xaxis["distances"]] != [len(d) for d in b["distances"]]:
            raise WorkflowError("reference has a different band path; plot it on its own axes")
    first = True
    for d, f in zip(xaxis["distances"], b["frequencies"]):
        lines = ax.plot(d, f, color=color, lw=1.0, **kwargs)
        if first and label is not None:
            lines[0].set_label(label)
        first = False
    ticks, names = _band_ticks(xaxis)
    for x in ticks:
        ax.axvline(x, color="0.7", lw=0.6, zorder=0)
    ax.axhline(0.0, color="k", lw=0.6, zorder=0)
    ax.set_xticks(ticks)
    ax.set_xticklabels(names)
    ax.set_xlim(ticks[0], ticks[-1])
    ax.set_ylabel("Frequency (THz)")
    return ax


def _band_ticks(band: dict[str, Any]) -> tuple[list[float], list[str]]:
    labels, conn, dist = band["labels"], band["connections"], band["distances"]
    ticks = [float(dist[0][0])]
    names = [labels[0][0]]
    for i, (a, b) in enumerate(labels):
        end = float(dist[i][-1])
        if i + 1 < len(labels) and not conn[i]:
            ticks.append(end)
            names.append(f"{b}|{labels[i + 1][0]}")
        else:
            ticks.append(end)
            names.append(b)
    return ticks, names


def plot_dos(result: PhononResult, ax=None, color: str = "C0", label: str | None = None):
    """Plot the total phonon DOS (states/THz per primitive cell vs THz).

    Returns:
        The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots()
    ax.plot(result.dos["frequency"], result.dos["dos"], color=color, lw=1.0, label=label)
    ax.fill_between(result.dos["frequency"], result.dos["dos"], color=color, alpha=0.2, lw=0)
    ax.axvline(0.0, color="k", lw=0.6)
    ax.set_xlabel("Frequency (THz)")
    ax.set_ylabel("DOS (states/THz per primitive cell)")
    ax.set_ylim(bottom=0)
    return ax



def _locate(
    q: np.ndarray, points: dict[str, np.ndarray], rotations: np.ndarray | None, segment: tuple[str, str] | None
) -> str:
    """Name of the labelled point equivalent to q (fractional; by a point-group
    operation, time reversal and a reciprocal lattice vector), else its band
    segment ("on Γ–X"), else "mesh point"."""
    ops = np.eye(3)[None] if rotations is None else np.asarray(rotations, dtype=float)
    images = np.einsum("j,rjk->rk", np.asarray(q, dtype=float), ops)
    images = np.concatenate([images, -images])  # [2R, 3]
    for name, p in points.items():
        d = images - np.asarray(p)
        if np.any(np.all(np.abs(d - np.rint(d)) < 1e-6, axis=1)):
            return name
    if segment is not None:
        return f"on {segment[0]}–{segment[1]}"
    return "mesh point"


def _imaginary_modes(
    band: dict[str, Any],
    mesh_q: np.ndarray,
    mesh_f: np.ndarray,
    threshold: float,
    rotations: np.ndarray | None,
    keep: int = 20,
) -> tuple[list[ImaginaryMode], int]:
    """The ``keep`` lowest q-points (band path and mesh, duplicates merged)
    whose lowest frequency is below ``threshold``, and how many there are."""
    found: dict[tuple, tuple[float, int, np.ndarray, tuple[str, str] | None]] = {}
    sources = [(np.asarray(q), np.asarray(f), seg) for q, f, seg in zip(band["qpoints"], band["frequencies"], band["labels"])]
    sources.append((mesh_q, mesh_f, None))
    for qs, fs, seg in sources:
        low = fs < threshold
        for i in np.flatnonzero(low.any(axis=1)):
            key = tuple(np.round(np.mod(qs[i] + 1e-9, 1.0), 6))
            fmin = float(fs[i].min())
            if key not in found or fmin < found[key][0]:
                found[key] = (fmin, int(low[i].sum()), qs[i], seg)
    ranked = sorted(found.values(), key=lambda t: t[0])[:keep]
    points = {k: np.asarray(v) for k, v in band["points"].items()}
    modes = [
        ImaginaryMode(qpoint=[float(x) for x in q], frequency=f, n_modes=n, where=_locate(q, points, rotations, seg))
        for f, n, q, seg in ranked
    ]
    return modes, len(found)

