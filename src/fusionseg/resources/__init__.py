"""Files shipped inside the package: the real data sets (``data/``, provenance in ``data/README.md``).

Layer 0: standard library only. Paths come from :mod:`importlib.resources`, so they work from a clone,
an editable install and a wheel alike (never from where the checkout sits).

Example:
    >>> real_data_path("nuclei2d").joinpath("image.png").is_file()
    True
    >>> real_data_path().name
    'data'
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fusionseg.errors import InputError

__all__ = ["REAL_DATASETS", "real_data_path"]

REAL_DATASETS = ("nuclei2d", "brain3d")


def real_data_path(name: str | None = None) -> Path:
    """Folder of the shipped real data set ``name`` (``nuclei2d`` or ``brain3d``), or of all of them (None)."""
    root = Path(str(resources.files(__package__).joinpath("data")))
    if name is None:
        return root
    if name not in REAL_DATASETS:
        raise InputError(f"unknown real data set {name!r}; choose from {', '.join(REAL_DATASETS)}")
    folder = root / name
    if not folder.is_dir():
        raise InputError(f"{folder}: shipped data missing; reinstall fusionseg (the wheel includes resources/data)")
    return folder
