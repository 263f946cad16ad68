"""Checks on user-supplied paths: files that must exist, folders that must be writable, outputs apart from inputs.

Example:
    >>> out = ensure_writable_dir("runs/exp1")          # creates it, or InputError naming the fix
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from fusionseg.errors import InputError

__all__ = ["check_output_apart", "ensure_file", "ensure_writable_dir"]


def ensure_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path if it is a readable, non-empty file; :class:`InputError` naming the problem otherwise."""
    path = Path(path)
    if not path.exists():
        where = "" if path.parent.is_dir() else f" (folder {path.parent} does not exist either)"
        raise InputError(f"{what} {path} does not exist{where}; check the path")
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory; pass the file inside it")
    if not os.access(path, os.R_OK):
        raise InputError(f"{what} {path} is not readable (permission denied); fix its permissions")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path} is empty (0 bytes); the copy or download was probably interrupted")
    return path


def ensure_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create ``path`` if needed and check that files can be created in it; :class:`InputError` otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is an existing file, not a directory; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A real probe: os.access is wrong on read-only mounts, ACLs and for root on some filesystems.
        fd, probe = tempfile.mkstemp(prefix=f".fusionseg-write-test.tmp-{os.getpid()}-", dir=path)  # swept if killed
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reasons: dict[int | None, str] = {
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system",
            errno.ENOSPC: "no space left on device",
        }
        reason = reasons.get(err.errno, err.strerror or type(err).__name__)
        raise InputError(f"cannot write to {what} {path} ({reason}); choose a writable directory") from None
    return path


def check_output_apart(output: str | os.PathLike, source: str | os.PathLike) -> None:
    """:class:`InputError` when the folder ``output`` is the input ``source`` (a folder) or lies inside it.

    >>> check_output_apart("imagesTs/pred", "imagesTs")   # InputError: predictions would mix with the images
    """
    out, src = Path(os.path.realpath(output)), Path(os.path.realpath(source))
    if out == src or (src.is_dir() and src in out.parents):
        where = "is" if out == src else "lies inside"
        raise InputError(
            f"--output {output} {where} --input {source}; predictions would mix with or replace the inputs, "
            "choose an output folder outside the input folder"
        )
