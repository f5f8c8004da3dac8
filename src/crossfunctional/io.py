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
    return frames


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """Open a temporary file beside ``path`` and rename it onto ``path`` only if
    the block finishes; on error nothing is left behind."""
    path = Path(path)
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
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
        os.close(fd)
        os.chmod(tmp, _umask_mode())
        try:
            yield Path(tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    return _ctx()
