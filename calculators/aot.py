"""The network compiled ahead of time by TorchInductor (AOTInductor) and cached
on disk, so that only the first process on a machine waits for the compiler.

What is compiled: the function (atomic numbers [N], edge vectors [E, 3],
the geometry-free graph of :class:`crossfunctional.models.Graph`) ->
(site energies [N] eV, magmoms [N] μB, dE/d(edge vectors) [E, 3] eV/Å), i.e.
bond lengths and angles, embedding, interaction blocks, readout and the
gradient, with every size dynamic. It is traced with ``make_fx`` (symbolic
shapes; the gradient is traced too, the weights become constants), exported
with ``torch.export`` and compiled into a ``.pt2`` package by
``torch._inductor.aoti_compile_and_package``. Graph construction stays in
TorchScript (:meth:`CHGNet.build_graph`).

Cache: ``$CROSSFUNCTIONAL_CACHE_DIR`` or ``$XDG_CACHE_HOME/crossfunctional``
or ``~/.cache/crossfunctional``, folder ``aot/``. An artefact's key holds the
torch version, the CPU's instruction set as torch reports it (or the CUDA
device name and compute capability), the device type, the dtype, a hash of
the weights and a hash of the model's code; the file name is the key's hash
and a JSON file beside it holds the key. An artefact whose JSON does not
match the key it was looked up with (copied from another machine, say) is
never loaded: it is compiled again and replaced. Packages are written under a
temporary name and renamed, so an interrupted compilation leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from crossfunctional.io import atomic_path, atomic_write
from crossfunctional.models import Graph, ModelError

log = logging.getLogger(__name__)

#: bump when the traced function or its inputs change
AOT_FORMAT = 1

#: packages loaded in this process, by path
_LOADED: dict[str, Any] = {}


def cache_dir() -> Path:
    """Folder of the compiled artefacts (see the module docstring)."""
    if os.environ.get("CROSSFUNCTIONAL_CACHE_DIR"):
        root = Path(os.environ["CROSSFUNCTIONAL_CACHE_DIR"])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "crossfunctional"
    else:
        root = Path.home() / ".cache" / "crossfunctional"
    return root / "aot"


def _instruction_set(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} sm_{major}{minor}"
    return f"cpu {torch.backends.cpu.get_cpu_capability()}"


def artefact_key(model: torch.nn.Module) -> dict[str, str]:
    """The cache key of ``model`` (an eager :class:`crossfunctional.models.CHGNet`)
    on its own device and dtype: torch version, instruction set, device type,
    dtype, hash of the weights, hash of the model code, format version."""
    import crossfunctional.models.chgnet as code

    param = next(iter(model.parameters()))
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode())
        weights.update(str(tuple(tensor.shape)).encode())
        weights.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {
        "format": str(AOT_FORMAT),
        "torch": torch.__version__,
        "instruction_set": _instruction_set(param.device),
        "device": param.device.type,
        "dtype": str(param.dtype).replace("torch.", ""),
        "weights_sha256": weights.hexdigest(),
        "model_code_sha256": hashlib.sha256(Path(code.__file__).read_bytes()).hexdigest(),
    }


def _example(model: torch.nn.Module, script: torch.nn.Module, seed: int) -> tuple[torch.Tensor, ...]:
    """Inputs of the compiled function for a rattled test crystal (Si 64 for
    tracing, rock-salt MgO 64 for the check): every size at least 2."""
    from ase.build import bulk

    from crossfunctional.neighbors import neighbor_list

    atoms = (bulk("Si", "diamond", a=5.43, cubic=True) if seed == 0 else bulk("MgO", "rocksalt", a=4.21, cubic=True))
    atoms = atoms.repeat((2, 2, 2))
    atoms.rattle(0.05, seed=seed + 1)
    param = next(iter(model.parameters()))
    z, edge_index, shifts, vectors = neighbor_list(atoms, float(model.atom_graph_cutoff)).to_torch(param.device, param.dtype)
    with torch.jit.optimized_execution(False):
        graph = Graph(*script.build_graph(edge_index, shifts, vectors, z.shape[0]))
    return (z, vectors.detach(), *graph)


def _compile(model: torch.nn.Module, script: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    from torch._inductor import aoti_compile_and_package
    from torch.export import Dim
    from torch.fx.experimental.proxy_tensor import make_fx

    def site_energies_and_gradient(z: torch.Tensor, vectors: torch.Tensor, *graph: torch.Tensor):
        vectors = vectors.detach().requires_grad_(True)
        energies, magmoms = model.network(z, model.with_geometry(Graph(*graph), vectors))
        (grad,) = torch.autograd.grad(energies.sum(), vectors)
        return energies.detach(), magmoms.detach(), grad

    args = _example(model, script, 0)
    with torch.enable_grad():
        traced = make_fx(site_energies_and_gradient, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
    dynamic = tuple({axis: Dim.AUTO for axis in range(a.dim())} for a in args)
    exported = torch.export.export(traced, args, dynamic_shapes=dynamic, strict=False)
    with atomic_path(path) as tmp:
        configs = {"aot_inductor.metadata": dict(metadata)} if metadata else None
        aoti_compile_and_package(exported, package_path=str(tmp), inductor_configs=configs)  # tmp ends in .pt2


def _check(package: Any, model: torch.nn.Module, script: torch.nn.Module) -> None:
    """Compare the package with the TorchScript model on a structure it was not traced with."""
    z, vectors, *graph = _example(model, script, 1)
    with torch.enable_grad():
        want = model.network(z, model.with_geometry(Graph(*graph), vectors.requires_grad_(True)))
        (grad,) = torch.autograd.grad(want[0].sum(), vectors)
    got = package(z, vectors.detach(), *graph)
    tol = 1e-4 if vectors.dtype == torch.float32 else 1e-9
    errors = [float((a - b.detach()).abs().max()) for a, b in zip(got, (*want, grad))]
    if max(errors) > tol:
        raise ModelError(f"the ahead-of-time compiled network disagrees with TorchScript by {max(errors):.2e} "
                         f"(tolerance {tol:g})")


def _build(model: torch.nn.Module, script: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None,
           advice: str = "; use compile=False") -> Any:
    """Compile ``model`` into the package ``path``, load it and check it
    against TorchScript; on any failure nothing is left at ``path`` and a
    :class:`ModelError` gives the reason in one line, followed by ``advice``."""
    from torch._inductor import aoti_load_package

    try:
        _compile(model, script, path, metadata)
        package = aoti_load_package(str(path))
        _check(package, model, script)
    except Exception as exc:  # the compiler's own failure, in one line
        path.unlink(missing_ok=True)
        if isinstance(exc, ModelError):
            raise ModelError(f"{exc}{advice}") from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
        raise ModelError(f"ahead-of-time compilation failed ({type(exc).__name__}: {reason}){advice}") from None
    return package


def load_or_compile(model: torch.nn.Module, script: torch.nn.Module, retry_failed: bool = True) -> Any:
    """The compiled network of ``model`` for this machine: loaded from the
    cache, or compiled (once, stating how long it took) and cached.

    Args:
        model: eager :class:`crossfunctional.models.CHGNet` on its device and dtype.
        script: its TorchScript version (graph construction, and the reference
            the new package is checked against).
        retry_failed: compile even if a compilation of this key failed
            before (a ``.failed`` file in the cache records why); False: raise
            at once instead, so that the default calculator does not spend a
            minute on every start of a machine where compiling fails.

    Returns:
        a callable (z [N], vectors [E, 3], *graph) -> (site energies [N],
        magmoms [N], dE/d(vectors) [E, 3]).

    Raises:
        crossfunctional.models.ModelError: a TorchScript module (the Python
            code is needed), a compilation that fails (no C++ compiler, say),
            or a package that disagrees with TorchScript.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError('compile="aot" needs the model\'s Python code (a registered name or a chgnet checkpoint), '
                         "not a TorchScript file")
    from torch._inductor import aoti_load_package

    key = artefact_key(model)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    folder = cache_dir()
    path, meta, failed = folder / f"{name}.pt2", folder / f"{name}.json", folder / f"{name}.failed"
    stored = None
    if path.is_file() and meta.is_file():
        try:
            stored = json.loads(meta.read_text())
        except (OSError, ValueError):
            stored = None
        if stored != key:
            log.warning("ignoring %s: compiled for %s, not for this model and machine; compiling again", path,
                        "an unreadable key" if stored is None else
                        ", ".join(f"{k} {stored.get(k)}" for k in key if stored.get(k) != key[k]))
            stored = None
    if stored is None:
        if failed.is_file() and not retry_failed:
            raise ModelError(f"compiling failed before on this machine ({failed.read_text().strip()}); "
                             f"delete {failed} to try again")
        folder.mkdir(parents=True, exist_ok=True)
        log.warning("compiling the network ahead of time for this machine (once; about a minute, longer on a busy CPU); "
                    "cached in %s", folder)
        t0 = time.perf_counter()
        try:
            package = _build(model, script, path)
        except ModelError as exc:
            with atomic_write(failed) as fh:
                fh.write(f"{exc}\n")
            raise
        failed.unlink(missing_ok=True)
        with atomic_write(meta) as fh:
            json.dump(key, fh, indent=1)
        log.warning("compiled in %.0f s: %s", time.perf_counter() - t0, path)
        _LOADED[str(path)] = package
        return package
    if str(path) not in _LOADED:  # one loaded copy per process
        _LOADED[str(path)] = aoti_load_package(str(path))
    return _LOADED[str(path)]


def fnv1a64(path: str | os.PathLike) -> str:
    """64-bit FNV-1a hash of a file's bytes, as 16 hex digits (the LAMMPS
    plugin computes the same to pair a package with its TorchScript file)."""
    import numpy as np

    data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    h = 0xCBF29CE484222325
    for byte in data.tolist():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def export_package(model: torch.nn.Module | str, path: str | os.PathLike, dtype: str = "float32") -> tuple[Path, Path]:
    """Write the TorchScript file ``path`` (``.pt``, as
    :func:`crossfunctional.models.export`) and beside it the ahead-of-time
    package ``<stem>.pt2`` for ``pair_style chgnet <stem>.pt2`` in LAMMPS (CPU).

    The package's metadata holds its key: torch version, instruction set,
    device, dtype and the FNV-1a hash of the ``.pt`` file it belongs to. The
    pair style compares them with its own torch, CPU and file and refuses a
    package that does not match (compiled elsewhere, or a ``.pt`` replaced).

    Args:
        model: a registered name, a chgnet checkpoint or an eager crossfunctional CHGNet.
        path: the ``.pt`` file to write.
        dtype: "float32" or "float64".

    Returns:
        (the ``.pt`` path, the ``.pt2`` path).

    Raises:
        crossfunctional.models.ModelError: a TorchScript module or file (the
            Python code is needed), a failed compilation, a package that
            disagrees with TorchScript.
    """
    from crossfunctional.calculators.calculator import scripted
    from crossfunctional.models import export, load_model

    if not isinstance(model, torch.nn.Module):
        model = load_model(model, dtype=dtype)
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError("an ahead-of-time package needs the model's Python code (a registered name or a chgnet "
                         "checkpoint), not a TorchScript file")
    if next(iter(model.parameters())).dtype != getattr(torch, dtype):
        import copy

        model = copy.deepcopy(model).to(dtype=getattr(torch, dtype))  # leave the caller's module as it is
    path = Path(path)
    if path.suffix != ".pt":
        raise ModelError(f"the TorchScript file of a package must end in .pt, got {path.name}")
    pt = export(model, path, dtype=dtype)
    param = next(iter(model.parameters()))
    metadata = {"crossfunctional_aot": str(AOT_FORMAT), "torch": torch.__version__.split("+")[0],
                "instruction_set": torch.backends.cpu.get_cpu_capability(), "device": param.device.type,
                "dtype": str(param.dtype).replace("torch.", ""), "torchscript_fnv1a64": fnv1a64(pt)}
    package_path = pt.with_suffix(".pt2")
    _build(model, scripted(model), package_path, metadata, advice="")
    return pt, package_path


__all__ = ["AOT_FORMAT", "artefact_key", "cache_dir", "export_package", "fnv1a64", "load_or_compile"]
