"""What a dataset *is*, independent of where it lies: content keys of cases and datasets, and safe folder names.

A case's key is a hash of its files as seen from the dataset folder: per file the relative name and
either a SHA-256 of its bytes (label maps up to 16 MiB and images up to 1 MiB: :data:`HASHED_BYTES`,
so labels and 2D images are identified by content) or, for larger files, the size, the
modification time and the header geometry (shape, spacing, affine, channels). Entries are
remembered per process (by path, inode, size and mtime), so planning and preprocessing read each
file once. The dataset's key hashes the sorted ``(case id, case
key)`` pairs. The same files reached through another spelling of the folder (relative, absolute,
a symlink, another working directory) give the same keys; different files give different keys,
whatever the datasets are called. Names only appear in folder names through :func:`slug`.

Example:
    >>> info = scan_dataset("data/Task02_Heart")
    >>> keys = {c.case_id: case_key(c, info.root) for c in info.cases}
    >>> data_key(keys), slug("../../x y")
    ('5f0c2a9be1d4', 'x_y')
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fusionseg.data.datasets import Case

__all__ = ["HASHED_BYTES", "case_key", "content_hash", "data_key", "slug"]

HASHED_BYTES = {"label": 16 * 2**20, "image": 2**20}  # files up to this size are identified by their bytes
_SLUG_LENGTH = 40
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(name: str, fallback: str = "dataset") -> str:
    """``name`` as one safe path component: letters, digits, ``.``, ``_``, ``-`` only, no leading dot or dash,
    at most 40 characters (``"../../x y"`` → ``"x_y"``, ``""`` → ``fallback``)."""
    text = _UNSAFE.sub("_", str(name)).lstrip("._-").rstrip("._-")[:_SLUG_LENGTH].rstrip("._-")
    return text or fallback


def content_hash(path: str | Path, chunk: int = 2**20) -> str:
    """SHA-256 hex digest of the file's bytes (32 digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:32]


def _relative_name(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` in POSIX form (the resolved path when it is not inside ``root``)."""
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.resolve().as_posix()


def _header_summary(path: Path) -> list:
    from fusionseg.data.io import read_header

    meta = read_header(path)
    affine = np.round(np.asarray(meta["affine"], dtype=np.float64), 6).tolist()
    spacing = [round(float(s), 6) for s in meta["spacing"]]
    return [list(map(int, meta["spatial_shape"])), spacing, affine, int(meta["num_channels"])]


_ENTRIES: dict[tuple, list] = {}  # (path, inode, size, mtime, ctime, kind) → identity of the file's content


def _series_entry(path: Path, root: Path | None) -> list:
    """A DICOM series (a folder, or ``FOLDER/SERIES_UID``): name, size and mtime of every file of its folder."""
    folder = path if path.is_dir() else path.parent
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file())
    listing = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:32]
    return [_relative_name(path, root), "series", listing]


def _file_entry(path: Path, root: Path | None, kind: str) -> list:
    from fusionseg.data.backends.dicom_io import is_series_path

    if is_series_path(path):
        return _series_entry(path, root)
    st = os.stat(path)
    memo = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, kind)
    if memo not in _ENTRIES:
        if st.st_size <= HASHED_BYTES[kind]:
            _ENTRIES[memo] = ["content", content_hash(path)]
        else:
            _ENTRIES[memo] = ["stat", st.st_size, st.st_mtime_ns, _header_summary(path)]
    return [_relative_name(path, root), *_ENTRIES[memo]]


def case_key(case: Case, root: str | Path | None) -> str:
    """16 hex digits identifying ``case``'s files by content (see the module docstring); ``root`` is the
    dataset folder the names are taken relative to. OSError if a file is missing."""
    root = Path(root) if root is not None else None
    files = [(p, "image") for p in case.images] + ([(case.label, "label")] if case.label is not None else [])
    entries = [case.case_id, [_file_entry(Path(p), root, kind) for p, kind in files]]
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]


def data_key(case_keys: Mapping[str, str]) -> str:
    """12 hex digits identifying a dataset by its ``{case id: case key}`` (order does not matter)."""
    return hashlib.sha256(json.dumps(sorted(case_keys.items())).encode()).hexdigest()[:12]
