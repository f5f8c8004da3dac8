"""ASE calculator for the TorchScript CHGNet models of crossfunctional."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from crossfunctional.calculators.dispersion import dispersion_for_model
from crossfunctional.io import as_atoms
from crossfunctional.models import DEFAULT_MODEL, Graph, ModelError, load_model, model_metadata
from crossfunctional.models.loading import is_upstream_chgnet
from crossfunctional.neighbors import Edges, StructureError, neighbor_list

log = logging.getLogger(__name__)

#: with ``threads="auto"``, graphs with fewer directed edges than this run on one torch thread
SMALL_GRAPH_EDGES = 20_000


def forces_and_virial(
    edge_index: torch.Tensor, edge_vectors: torch.Tensor, grad: torch.Tensor, num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forces and virial from g = dE/d(edge_vectors) (``docs/design.md``).

    Args:
        edge_index: [2, E] int64, edges i -> j.
        edge_vectors: [E, 3] Å, r_j + S . cell - r_i.
        grad: [E, 3] eV/Å, dE/d(edge_vectors).
        num_nodes: N.

    Returns:
        forces [N, 3] eV/Å, F_i = Σ_j g_ij - Σ_j g_ji; and the virial [3, 3] eV,
        W = -Σ_e r_e ⊗ g_e, so that the stress (ASE sign, positive tensile) is -W / V.
    """
    forces = torch.zeros(num_nodes, 3, dtype=grad.dtype, device=grad.device)
    forces.index_add_(0, edge_index[0], grad).index_add_(0, edge_index[1], -grad)
    virial = -(edge_vectors.detach().t() @ grad)
    return forces, virial


def scripted(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` as TorchScript, for evaluation under
    ``torch.jit.optimized_execution(False)``: the graph executor then runs the
    same kernels as the eager module (same numbers, no re-specialisation per
    graph size), without Python's overhead per operation (about 20% of the
    time on structures of a few atoms)."""
    if isinstance(model, torch.jit.ScriptModule):
        return model
    with warnings.catch_warnings():  # the project relies on TorchScript (export, LAMMPS) by design
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=DeprecationWarning)
        return torch.jit.script(model)


class CompiledRunner:
    """The model contract (``CHGNet.forward``: atomic numbers, edges, shifts,
    vectors -> site energies [N] eV, magmoms [N] μB, dE/d(vectors) [E, 3]
    eV/Å) with the network compiled by ``torch.compile`` (TorchInductor:
    fused C++/OpenMP kernels on CPU, Triton on CUDA) and dynamic shapes, so
    that one compilation serves every graph size.

    The graph construction (data-dependent: sorting, pairing of edges) runs in
    TorchScript; the compiled function is bond lengths and angles from the
    edge vectors, embedding, interaction blocks and readout, and autograd
    differentiates it with a compiled backward pass. Fusing the elementwise
    work (layer norms, SiLU gates, gathers) makes energy + forces + stress
    faster than the TorchScript runner (measured by ``benchmarks/speed.py
    --compile``, results in ``benchmarks/results/``); the numbers agree with it to float rounding (float32:
    about 1e-6 eV/atom, 6e-5 eV/Å).

    On CPU with more than one thread the call runs with deterministic
    algorithms switched on (and uninitialised memory left unfilled), restored
    afterwards: TorchInductor then keeps ATen's scatter-add kernels (the
    backward pass of every gather) instead of lowering them to atomic adds in
    parallel loops, which made the compiled model slower than TorchScript on
    two threads (``benchmarks/results/README.md``). On one thread the fused atomic adds are the faster
    choice and are kept.

    The price is a one-time compilation of one to three minutes on a 2-core
    CPU per process (TorchInductor caches its kernels on disk, so later
    processes start faster) and a C++ compiler at run time. Graphs with fewer
    than two atoms, bonds, short bonds or angles (``torch.compile``
    specialises sizes 0 and 1, which would compile again), graphs above
    ``recompute_threshold`` edges plus angles (block-by-block memory-lean
    gradient) and energy-only calls go to the TorchScript runner.

    With ``mode="aot"`` the same function (and its gradient) is compiled
    ahead of time into a package that is cached on disk for this machine,
    model, dtype and torch version (:mod:`crossfunctional.calculators.aot`):
    the first process compiles (about a minute), later ones load it in
    seconds; no C++ compiler is needed once the package exists.

    Args:
        model: an eager :class:`crossfunctional.models.CHGNet` (not a
            TorchScript module: compilation needs the Python code).
        script: the TorchScript version of ``model`` (:func:`scripted`).
        mode: ``"jit"`` (``torch.compile`` in this process) or ``"aot"``.
        retry_failed: with ``"aot"``, compile again where an earlier
            compilation of the same key failed (else raise at once).

    Raises:
        ValueError: ``model`` is a TorchScript module.
    """

    def __init__(self, model: torch.nn.Module, script: torch.nn.Module, mode: str = "jit", retry_failed: bool = True) -> None:
        if isinstance(model, torch.jit.ScriptModule):
            raise ModelError(
                "compile needs the model's Python code (a registered name or a chgnet checkpoint), "
                "not a TorchScript file"
            )
        if mode not in ("jit", "aot"):
            raise ValueError(f"compile mode must be 'jit' or 'aot', got {mode!r}")
        self.model = model
        self.script = script
        self.mode = mode
        self.atom_graph_cutoff = float(model.atom_graph_cutoff)
        if mode == "aot":
            from crossfunctional.calculators.aot import load_or_compile

            self._package = load_or_compile(model, script, retry_failed)
        else:
            self._network = torch.compile(self._site_energies, dynamic=True)

    def _site_energies(self, atomic_numbers: torch.Tensor, graph, vectors: torch.Tensor):
        return self.model.network(atomic_numbers, self.model.with_geometry(graph, vectors))

    def parameters(self):
        """The model's parameters."""
        return self.model.parameters()

    @property
    def recompute_threshold(self) -> int:
        """Edges + angles above which the TorchScript runner's block-by-block gradient is used."""
        return int(self.script.recompute_threshold)

    @recompute_threshold.setter
    def recompute_threshold(self, value: int) -> None:
        self.script.recompute_threshold = int(value)

    def __call__(
        self,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        edge_shifts: torch.Tensor,
        edge_vectors: torch.Tensor,
        compute_gradient: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``CHGNet.forward`` (same arguments, shapes and units)."""
        if not compute_gradient:
            return self.script(atomic_numbers, edge_index, edge_shifts, edge_vectors, False)
        vectors = edge_vectors.detach()
        with torch.jit.optimized_execution(False):
            # TorchScript returns its own namedtuple type for every call; the
            # compiled function guards on the type, so rebuild a Graph
            graph = Graph(*self.script.build_graph(edge_index, edge_shifts, vectors, atomic_numbers.shape[0]))
        sizes = (atomic_numbers.shape[0], graph.bond_length.shape[0], graph.short_bonds.shape[0], graph.angle.shape[0])
        if min(sizes) < 2 or graph.center.shape[0] + graph.angle.shape[0] > self.recompute_threshold:
            with torch.jit.optimized_execution(False):
                return self.script(atomic_numbers, edge_index, edge_shifts, vectors, True)
        if self.mode == "aot":
            return self._package(atomic_numbers, vectors, *graph)
        vectors.requires_grad_(True)
        with _aten_scatter(vectors.device):
            site_energies, magmoms = self._network(atomic_numbers, graph, vectors)
            (grad,) = torch.autograd.grad(site_energies.sum(), vectors)
        return site_energies.detach(), magmoms.detach(), grad


@contextlib.contextmanager
def _aten_scatter(device: torch.device) -> Iterator[None]:
    """On CPU with more than one thread, deterministic algorithms on (warn
    only, no filling of uninitialised memory) for the duration of the block,
    so that TorchInductor compiles scatter-adds as ATen calls, not atomic adds
    (see :class:`CompiledRunner`); the previous settings are restored."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.utils.deterministic.fill_uninitialized_memory = flags[2]


def retain_freed_memory() -> bool:
    """Keep freed memory in the process heap for reuse (glibc only; process-wide).

    glibc serves every allocation above 32 MB with a fresh ``mmap`` and returns
    it to the OS when freed, so each large intermediate tensor of a big graph
    is page-faulted in again on every call (about 0.6 ms per MB on the
    development VM; Si 4,096 atoms spent a third of its time there). With
    ``mmap`` disabled for ``malloc`` and no trimming of the heap, freed blocks
    are reused: time per atom then stays flat from 512 to 8,000 atoms
    (``benchmarks/performance.py``). The price is that the process keeps its
    peak heap after a large calculation instead of returning it to the OS.

    Returns:
        True if the settings were applied, False where glibc's ``mallopt`` is
        not available (other C libraries are left alone).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def aot_by_default() -> bool:
    """Whether ``compile="auto"`` may use the ahead-of-time compiled network:
    yes unless the environment variable ``CROSSFUNCTIONAL_COMPILE`` is
    ``off`` (or ``0``, ``false``, ``no``)."""
    return os.environ.get("CROSSFUNCTIONAL_COMPILE", "").strip().lower() not in ("off", "0", "false", "no")


def _runner(model: torch.nn.Module, script: torch.nn.Module, compile: bool | str):
    """The runner of a model the calculator loaded itself (see ``compile`` of
    :class:`CrossFunctionalCalculator`)."""
    if compile == "auto":
        device = next(iter(model.parameters())).device
        if isinstance(model, torch.jit.ScriptModule) or device.type != "cpu" or not aot_by_default():
            return script
        try:
            return CompiledRunner(model, script, "aot", retry_failed=False)
        except ModelError as exc:
            log.warning("%s; running the TorchScript model instead", str(exc).removesuffix("; use compile=False"))
            return script
    if compile:
        return CompiledRunner(model, script, "aot" if compile == "aot" else "jit")
    return script


class CrossFunctionalCalculator(Calculator):
    """ASE calculator running a crossfunctional model (TorchScript CHGNet).

    Args:
        model: registered name (``"chgnet-r2scan"``, ``"chgnet-0.3.0"``), path to
            a ``chgnet`` checkpoint or an exported TorchScript file, or a loaded
            module with the model contract.
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: None (the model file's own precision: float32 for the shipped
            weights), ``"float32"`` or ``"float64"`` (for
            phonons and finite differences).
        task: the channel of a multi-task checkpoint (e.g. ``"r2scan"``),
            folded into a plain model (:func:`crossfunctional.models.load_model`).
        recompute_threshold: for a model the calculator loads itself, graphs
            with more edges plus angles than this (default 500,000, e.g. Si
            beyond about 8,500 atoms, MgO beyond about 1,500) are
            differentiated block by block with recomputation: about 0.35
            instead of 0.85 MB per atom for Si, and 40 % more time.
        retain_memory: on CPU, call :func:`retain_freed_memory` (process-wide
            glibc setting) so that large graphs do not page-fault their
            intermediates in again on every call; False keeps glibc's defaults.
        threads: torch threads per call: ``"auto"`` (default) runs graphs of
            fewer than ``SMALL_GRAPH_EDGES`` directed edges (about 300 atoms of
            Si) on one thread, since small systems gain nothing from more and
            lose much when a core is busy, and larger ones on torch's
            thread count; an integer fixes it; None leaves torch's setting.
        compile: ``"auto"`` (default): on CPU, a model the calculator loads
            itself from its Python code (a registered name or a chgnet
            checkpoint) runs compiled ahead of time (``"aot"``), unless the
            environment variable ``CROSSFUNCTIONAL_COMPILE=off``; TorchScript
            files, modules passed in, CUDA devices and a failed compilation
            (a warning says why) run TorchScript. ``"aot"``: the network and
            its gradient compiled once per machine, model, dtype and torch
            version and cached on disk
            (:mod:`crossfunctional.calculators.aot`): the first process
            compiles (about a minute, stated in a log message), later ones
            load the package in about a second; 1.2-1.8x faster per call
            than TorchScript (``benchmarks/results/``). False: TorchScript.
            True or ``"jit"``: ``torch.compile`` in every process (one to
            three minutes each).
        dispersion: None (default: the models were trained without
            dispersion), ``"d3bj"``, ``"d4"``, ``"d3bj-atm"`` or ``"d4-atm"``:
            add Grimme's D3(BJ) or D4 correction (two-body, or with the ATM
            three-body term) for the model's functional, from the ``dftd3`` /
            ``dftd4`` packages (:mod:`crossfunctional.calculators.dispersion`).
        dispersion_functional: the functional whose dispersion parameters
            apply (``"r2scan"``, ``"pbe"``, ...); default: the model's
            (r2SCAN for ``chgnet-r2scan``, PBE for ``chgnet-0.3.0``). Needed
            for a checkpoint whose metadata names none.

    Properties, in ASE units: ``energy`` and ``free_energy`` (eV), ``forces``
    (eV/Å), ``stress`` (eV/Å³, Voigt order, positive tensile; only for fully
    periodic cells, otherwise ASE raises ``PropertyNotImplementedError``),
    ``magmoms`` (μB, non-negative as in CHGNet) and ``energies`` (site energies
    in eV, AtomRef included, summing to ``energy``). With ``dispersion`` the
    correction is added to ``energy``, ``free_energy``, ``forces``, ``stress``
    and ``energies`` (the library's per-atom decomposition), and
    ``dispersion_energy`` (eV) holds its share of the energy.

    ``model`` is the module as loaded; ``runner`` the one evaluated: a model
    the calculator loads itself runs as a :class:`CompiledRunner` (compiled
    ahead of time, or with ``torch.compile``) or as TorchScript
    (:func:`scripted`) as ``compile`` says; a module passed in runs as it is
    (or compiled, with ``compile=True`` or ``"aot"``).

    The calculator accepts pymatgen ``Structure``/``Molecule`` objects as well
    as Atoms (converted with ``AseAtomsAdaptor``), is safe to share between
    threads (one evaluation at a time), records its settings in
    :meth:`todict` and pickles (it is rebuilt from its settings, or from the
    pickled module when one was passed), so Atoms carrying it can go through
    ``multiprocessing``.

    Raises:
        TypeError: an unknown keyword argument (the message names the valid ones).
        crossfunctional.models.ModelError: unknown model or unreadable file; a
            multi-task checkpoint without ``task``, an unknown task (the message
            names the available ones), or ``task`` for a single-task model.
        ValueError: an unknown ``compile``; ``compile=True`` or ``"aot"`` with
            a TorchScript module or file; a failed ahead-of-time compilation
            with ``compile="aot"``.
        crossfunctional.calculators.dispersion.DispersionError: unknown
            ``dispersion``, ``dftd3``/``dftd4`` not installed, a functional
            without parameters, or a model whose functional is unknown and no
            ``dispersion_functional``.
        crossfunctional.neighbors.StructureError: a structure the model cannot
            evaluate (unknown element, NaN, atoms closer than 0.5 Å, ...).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "magmoms", "energies"]

    #: ASE's own constructor arguments, passed on to ``Calculator``
    _ASE_ARGS = ("restart", "ignore_bad_restart_file", "label", "atoms", "directory")

    def __init__(
        self,
        model: str | torch.nn.Module = DEFAULT_MODEL,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        task: str | None = None,
        recompute_threshold: int = 500_000,
        retain_memory: bool = True,
        compile: bool | str = "auto",
        threads: int | str | None = "auto",
        dispersion: str | None = None,
        dispersion_functional: str | None = None,
        **kwargs,
    ) -> None:
        unknown = sorted(set(kwargs) - set(self._ASE_ARGS))
        if unknown:
            valid = ["model", "device", "dtype", "task", "recompute_threshold", "retain_memory", "compile", "threads",
                     "dispersion", "dispersion_functional", *self._ASE_ARGS]
            raise TypeError(
                f"CrossFunctionalCalculator() got unknown keyword argument(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
            )
        if compile not in (False, True, "jit", "aot", "auto"):
            raise ValueError(f"compile must be 'auto', False, True, 'jit' or 'aot', got {compile!r}")
        if not (threads is None or threads == "auto" or (isinstance(threads, int) and threads >= 1)):
            raise TypeError(f"threads must be 'auto', a positive integer or None, got {threads!r}")
        super().__init__(**kwargs)
        self._settings = {"model": model, "device": str(device), "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
                          "task": task, "recompute_threshold": int(recompute_threshold), "retain_memory": bool(retain_memory),
                          "compile": compile if isinstance(compile, str) else bool(compile), "threads": threads, "dispersion": dispersion,
                          "dispersion_functional": dispersion_functional}
        self._lock = threading.RLock()
        self.threads = threads
        if is_upstream_chgnet(model):  # a loaded chgnet.model.CHGNet: converted once
            model = load_model(model, device=device, dtype=dtype)
        if isinstance(model, torch.nn.Module):
            if task is not None:
                raise ModelError("task= selects the channel of a multi-task model file; a loaded module has one task already")
            self.model = model
            explicit = compile if compile != "auto" else False  # a module passed in runs as it is unless asked
            self.runner = CompiledRunner(model, scripted(model), "aot" if explicit == "aot" else "jit") if explicit else model
        else:
            self.model = load_model(model, device=device, dtype=dtype, task=task)
            script = scripted(self.model)
            script.recompute_threshold = int(recompute_threshold)
            self.runner = _runner(self.model, script, compile)
        param = next(iter(self.model.parameters()))
        self.device = param.device
        self.dtype = param.dtype
        self.cutoff = float(self.model.atom_graph_cutoff)
        self.metadata = model_metadata(self.model)
        self.dispersion = dispersion_for_model(dispersion, dispersion_functional, self.metadata)
        if retain_memory and self.device.type == "cpu":
            retain_freed_memory()

    def todict(self) -> dict:
        """The settings this calculator was made with (ASE's ``todict``; a
        module passed as ``model`` is named by its metadata)."""
        out = dict(self._settings)
        if isinstance(out["model"], torch.nn.Module) or is_upstream_chgnet(out["model"]):
            out["model"] = self.metadata.get("model_name", type(out["model"]).__name__)
        else:
            out["model"] = str(out["model"])
        return out

    def __getstate__(self) -> dict:
        settings = dict(self._settings)
        model = settings.pop("model")
        if isinstance(model, torch.jit.ScriptModule):
            buffer = io.BytesIO()
            torch.jit.save(model, buffer)
            model = ("torchscript", buffer.getvalue())
        elif isinstance(model, (str, os.PathLike)):
            model = ("name", str(model))
        else:
            model = ("module", model)  # an eager module (or a chgnet.model.CHGNet) pickles as itself
        return {"model": model, "settings": settings, "ase": {"directory": self.directory, "label": self.label}}

    def __setstate__(self, state: dict) -> None:
        kind, value = state["model"]
        if kind == "torchscript":
            value = torch.jit.load(io.BytesIO(value), map_location="cpu")
        self.__init__(value, **state["settings"])
        self.directory = state["ase"]["directory"]

    def get_property(self, name, atoms=None, allow_calculation=True):
        """ASE's ``get_property``, one thread at a time, for Atoms or a pymatgen Structure."""
        with self._lock:
            return super().get_property(name, None if atoms is None else as_atoms(atoms), allow_calculation)

    @contextlib.contextmanager
    def _thread_count(self, n_edges: int) -> Iterator[None]:
        want = None
        if self.threads == "auto":
            want = 1 if n_edges < SMALL_GRAPH_EDGES else None
        elif self.threads is not None:
            want = int(self.threads)
        before = torch.get_num_threads()
        if want is None or want == before:
            yield
            return
        torch.set_num_threads(want)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def predict_batch(self, structures: Sequence[Atoms], max_edges: int = 200_000) -> list[dict[str, np.ndarray | float]]:
        """Evaluate many independent structures with this calculator's model as
        batched graphs (:func:`predict_batch`), its dispersion correction (if
        any) added structure by structure; the calculator's own results and
        atoms are left as they are."""
        results = predict_batch(structures, self.runner, max_edges=max_edges)
        if self.dispersion is not None:
            for atoms, res in zip(structures, results):
                self.dispersion.add_to(res, as_atoms(atoms))
        return results

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes) -> None:
        super().calculate(None if atoms is None else as_atoms(atoms), properties, system_changes)
        atoms = self.atoms
        edges = neighbor_list(atoms, self.cutoff)
        n = len(atoms)
        isolated = n - np.unique(edges.edge_index[0]).size
        if isolated:
            log.warning("%d atom(s) have no neighbour within %.1f Å", isolated, self.cutoff)
        z, edge_index, shifts, vectors = edges.to_torch(self.device, self.dtype)
        with self._thread_count(edge_index.shape[1]), torch.enable_grad(), torch.jit.optimized_execution(False):
            site_energies, magmoms, grad = self.runner(z, edge_index, shifts, vectors, True)
        forces, virial = forces_and_virial(edge_index, vectors, grad, n)
        energies = site_energies.detach().cpu().double().numpy()
        energy = float(energies.sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": energies,
            "forces": forces.detach().cpu().double().numpy(),
            "magmoms": magmoms.detach().cpu().double().numpy(),
        }
        if atoms.pbc.all():
            stress = -virial.detach().cpu().double().numpy() / abs(atoms.get_volume())
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
        if self.dispersion is not None:
            self.dispersion.add_to(self.results, atoms)


def predict_batch(
    structures: Sequence[Atoms],
    model: str | torch.nn.Module | CrossFunctionalCalculator = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    max_edges: int = 200_000,
) -> list[dict[str, np.ndarray | float]]:
    """Evaluate many independent structures as batched graphs.

    Structures are packed into one graph (node indices offset per structure)
    until ``max_edges`` directed edges are reached, so memory stays bounded.

    Args:
        structures: ASE Atoms or pymatgen Structures, any mix of sizes and periodicities.
        model: a model name or file, or a loaded model or runner (a module
            with the forward contract of :class:`~crossfunctional.models.CHGNet`,
            e.g. a calculator's ``runner``); an object with its own
            ``predict_batch`` (a :class:`CrossFunctionalCalculator`) is asked
            to evaluate the batch itself.
        device, dtype: for a model loaded here (ignored otherwise).
        max_edges: upper bound on directed edges per packed graph.

    Returns:
        One dict per structure with the calculator's properties in ASE units:
        ``energy``, ``free_energy`` (eV), ``energies`` [n] eV, ``forces`` [n, 3]
        eV/Å, ``magmoms`` [n] μB and, for fully periodic cells, ``stress`` [6]
        eV/Å³ (Voigt, positive tensile).

    Raises:
        StructureError: as the calculator, naming the index of the structure.
    """
    structures = [as_atoms(s) for s in structures]
    if hasattr(model, "predict_batch") and not isinstance(model, torch.nn.Module):  # a calculator: its own batch path
        return model.predict_batch(structures, max_edges=max_edges)
    module = model if isinstance(model, torch.nn.Module) else scripted(load_model(model, device=device, dtype=dtype))
    param = next(iter(module.parameters()))
    cutoff = float(module.atom_graph_cutoff)
    edges = []
    for k, atoms in enumerate(structures):
        try:
            edges.append(neighbor_list(atoms, cutoff))
        except StructureError as exc:
            raise StructureError(f"structure {k}: {exc}") from None
        isolated = len(atoms) - np.unique(edges[-1].edge_index[0]).size
        if isolated:
            log.warning("structure %d: %d atom(s) have no neighbour within %.1f Å", k, isolated, cutoff)
    results: list[dict[str, np.ndarray | float]] = []
    start = 0
    while start < len(edges):
        stop, n_edges = start, 0
        while stop < len(edges) and (stop == start or n_edges + edges[stop].edge_index.shape[1] <= max_edges):
            n_edges += edges[stop].edge_index.shape[1]
            stop += 1
        results.extend(_evaluate_packed(module, structures[start:stop], edges[start:stop], param.device, param.dtype))
        start = stop
    return results


def _evaluate_packed(module, structures, edges, device, dtype) -> list[dict[str, np.ndarray | float]]:
    """One forward/backward pass over several structures packed into one graph."""
    n_atoms = [len(e.atomic_numbers) for e in edges]
    n_edges = [e.edge_index.shape[1] for e in edges]
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    packed = Edges(
        atomic_numbers=np.concatenate([e.atomic_numbers for e in edges]),
        edge_index=np.concatenate([e.edge_index + off for e, off in zip(edges, offsets)], axis=1),
        edge_shifts=np.concatenate([e.edge_shifts for e in edges]),
        edge_vectors=np.concatenate([e.edge_vectors for e in edges]),
    )
    z, edge_index, shifts, vectors = packed.to_torch(device, dtype)
    with torch.enable_grad(), torch.jit.optimized_execution(False):
        site_energies, magmoms, grad = module(z, edge_index, shifts, vectors, True)
    forces, _ = forces_and_virial(edge_index, vectors, grad, len(z))
    edge_owner = torch.repeat_interleave(torch.arange(len(edges), device=device), torch.tensor(n_edges, device=device))
    outer = -(vectors.detach().unsqueeze(2) * grad.unsqueeze(1))  # [E, 3, 3]
    virials = torch.zeros(len(edges), 3, 3, dtype=grad.dtype, device=device).index_add_(0, edge_owner, outer)
    site = site_energies.detach().cpu().double().numpy()
    f = forces.detach().cpu().double().numpy()
    m = magmoms.detach().cpu().double().numpy()
    w = virials.detach().cpu().double().numpy()
    out = []
    for k, atoms in enumerate(structures):
        sl = slice(offsets[k], offsets[k] + n_atoms[k])
        energy = float(site[sl].sum())
        res = {"energy": energy, "free_energy": energy, "energies": site[sl], "forces": f[sl], "magmoms": m[sl]}
        if atoms.pbc.all():
            res["stress"] = full_3x3_to_voigt_6_stress(-w[k] / abs(atoms.get_volume()))
        out.append(res)
    return out


def predict_structure(
    structure,
    model: str | torch.nn.Module | CrossFunctionalCalculator = DEFAULT_MODEL,
    task: str = "efsm",
    return_site_energies: bool = False,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
    """The call and units of upstream ``chgnet.model.CHGNet.predict_structure``
    (Deng et al. 2023), evaluated as batched graphs (:func:`predict_batch`).

    Args:
        structure: a pymatgen ``Structure`` or ASE ``Atoms``, or a list of them.
        model: model name (``"r2scan"`` and ``"0.3.0"`` as upstream, or ours),
            file, loaded module or calculator.
        task: the keys to return, any of ``e`` ``f`` ``s`` ``m`` (default "efsm").
        return_site_energies: add ``site_energies`` [N] (eV, AtomRef included).
        device, dtype: for a model loaded here.

    Returns:
        For one structure a dict (a list of dicts for a list): ``e`` energy per
        atom (eV/atom), ``f`` forces [N, 3] (eV/Å), ``s`` stress [3, 3] (GPa,
        ASE's sign: positive tensile; periodic structures only), ``m``
        magnetic moments [N] (μB).

    Raises:
        ValueError: ``task`` with other letters than e, f, s, m.
        crossfunctional.neighbors.StructureError: a structure the model cannot evaluate.
    """
    from ase.stress import voigt_6_to_full_3x3_stress
    from ase.units import GPa

    if not task or set(task) - set("efsm"):
        raise ValueError(f"task must use the letters e, f, s, m (e.g. 'efsm'), got {task!r}")
    single = not isinstance(structure, (list, tuple))
    frames = [as_atoms(s) for s in ([structure] if single else structure)]
    results = predict_batch(frames, model, device=device, dtype=dtype)
    out = []
    for atoms, res in zip(frames, results):
        pred: dict[str, np.ndarray] = {}
        if "e" in task:
            pred["e"] = np.asarray(res["energy"] / len(atoms))
        if "f" in task:
            pred["f"] = res["forces"]
        if "s" in task and "stress" in res:
            pred["s"] = voigt_6_to_full_3x3_stress(res["stress"]) / GPa
        if "m" in task:
            pred["m"] = res["magmoms"]
        if return_site_energies:
            pred["site_energies"] = res["energies"]
        out.append(pred)
    return out[0] if single else out
