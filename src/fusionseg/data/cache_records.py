"""Integrity records of a preprocessed case's files: written with the case, checked whenever it is opened.

Each file of a cached case (``CASE_image.npy``, ``CASE_label.npy``, ``CASE_fg.npz``) gets a record
in ``CASE.json``: its size, modification time and CRC-32 (arrays also their shape and dtype).
:func:`check_case_files` compares the files with their records. It always checks the size and the
arrays' shape and dtype; it checks the CRC of small files (≤ 1 MiB) every time and of larger ones
when their modification time differs from the record (a replaced or rewritten file) or when asked
(``deep``). The result of a CRC is remembered per process, so a training that opens a case for
every patch reads a file at most once for it.

Example:
    >>> with open(path, "wb") as f:
    ...     out = CrcWriter(f); np.save(out, array)
    >>> props["files"] = {"_image.npy": file_record(path, out.crc, array)}
    >>> check_case_files(folder, "case_0", props)   # None, or why the case cannot be trusted
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CASE_FILES", "SMALL_FILE", "CrcWriter", "check_case_files", "file_crc", "file_record"]

CASE_FILES = ("_image.npy", "_label.npy", "_fg.npz")  # the only suffixes a record may name
SMALL_FILE = 2**20  # files up to this size are checksummed whenever they are opened
_CRCS: dict[tuple, int] = {}  # (path, inode, size, mtime, ctime) → CRC-32


class CrcWriter:
    """A write-only file wrapper that keeps the CRC-32 and length of what went through it."""

    def __init__(self, f) -> None:
        self.f, self.crc, self.size = f, 0, 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        self.size += len(view)
        return self.f.write(view)


def file_crc(path: str | Path, chunk: int = 2**22) -> int:
    """CRC-32 of the file's bytes (remembered per process while the file is unchanged)."""
    st = os.stat(path)
    memo = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if memo not in _CRCS:
        crc = 0
        with open(path, "rb") as f:
            while block := f.read(chunk):
                crc = zlib.crc32(block, crc)
        _CRCS[memo] = crc
    return _CRCS[memo]


def file_record(path: str | Path, crc: int | None = None, array: np.ndarray | None = None) -> dict:
    """``{"size", "mtime_ns", "crc32"[, "shape", "dtype"]}`` of a file just written (CRC computed if not given)."""
    st = os.stat(path)
    record: dict[str, Any] = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "crc32": file_crc(path) if crc is None else crc,
    }
    if array is not None:
        record.update(shape=list(array.shape), dtype=array.dtype.str)
    return record


def _npy_header(path: Path) -> tuple[tuple, str]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), np.dtype(dtype).str


def check_case_files(folder: Path, case_id: str, props: dict, deep: bool = False) -> str | None:
    """None when the files of ``case_id`` in ``folder`` match the records in ``props["files"]``, else why not."""
    records = props.get("files")
    if not isinstance(records, dict) or "_image.npy" not in records:
        return "it has no integrity records (written by an older fusionseg)"
    if any(suffix not in CASE_FILES for suffix in records):
        return "its record names unknown files"
    for suffix, record in records.items():
        path = folder / f"{case_id}{suffix}"
        try:
            st = path.stat()
            if st.st_size != record["size"]:
                return f"{path.name} has {st.st_size} bytes, {record['size']} were written (truncated or replaced)"
            if (deep or st.st_size <= SMALL_FILE or st.st_mtime_ns != record["mtime_ns"]) and file_crc(path) != record[
                "crc32"
            ]:
                return f"{path.name} changed after it was written (CRC-32 differs)"
            if "shape" in record and _npy_header(path) != (tuple(record["shape"]), record["dtype"]):
                return f"{path.name} does not hold the {record['dtype']} array of shape {record['shape']} written"
        except FileNotFoundError:
            return f"{path.name} is missing"
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"{path.name} cannot be checked ({err.strerror if isinstance(err, OSError) else err})"
    return None
