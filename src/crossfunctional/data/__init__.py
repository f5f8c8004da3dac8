"""Reference data shipped with the package (see ``README.md`` in this folder
for units, sources, licences and citations)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["data_path"]


def data_path(name: str) -> Path:
    """Path of a shipped data file, e.g. ``data_path("wbm_random_pbe_equilibrium.json.gz")``.

    Raises:
        FileNotFoundError: ``name`` is not one of the shipped files.
    """
    path = Path(str(resources.files("crossfunctional.data").joinpath(name)))
    if not path.is_file():
        shipped = sorted(p.name for p in path.parent.iterdir() if p.suffix in (".csv", ".gz"))
        raise FileNotFoundError(f"no shipped data file {name!r}; shipped: {', '.join(shipped)}")
    return path
