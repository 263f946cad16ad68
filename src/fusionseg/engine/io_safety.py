"""Guards for user-supplied paths and inputs: one-line :class:`InputError` messages, no partial output.

Example:
    >>> out = ensure_writable_dir("runs/exp1")          # creates it, or InputError naming the fix
    >>> with atomic_write(out / "pred.nii.gz") as tmp:   # tmp is renamed to pred.nii.gz on success only
    ...     save_something(tmp)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fusionseg.errors import InputError, ensure_file

__all__ = [
    "atomic_write",
    "check_channels",
    "ensure_file",
    "ensure_writable_dir",
    "fsync_dir",
    "parse_json_object",
    "publish_mode",
]


def ensure_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create ``path`` if needed and check that files can be created in it; :class:`InputError` otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is an existing file, not a directory; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A real probe: os.access is wrong on read-only mounts, ACLs and for root on some filesystems.
        fd, probe = tempfile.mkstemp(prefix=".fusionseg-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = {
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system",
            errno.ENOSPC: "no space left on device",
        }.get(err.errno, err.strerror or type(err).__name__)
        raise InputError(f"cannot write to {what} {path} ({reason}); choose a writable directory") from None
    return path


def check_channels(expected: int, got: int, source: str, what: str = "the checkpoint") -> None:
    """:class:`InputError` unless an input with ``got`` channels fits a model trained on ``expected``."""
    if int(expected) != int(got):
        raise InputError(
            f"{source} has {got} channel(s) but {what} expects {expected} (in_channels={expected}); "
            f"pass {expected} image file(s)/channel(s) per case in the training order, or use a matching checkpoint"
        )


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (after a rename) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_mode(path: str | os.PathLike) -> int:
    """Permissions for a file replacing ``path``: the old file's, else 0o666 minus the umask.

    ``mkstemp`` creates 0600 files; without this, atomically written outputs would be unreadable to
    the group even where ``open()`` would have made them readable.
    """
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was (absent or
    the old version), so readers never see a half-written file. The temporary name keeps the
    suffix of ``path`` (writers such as nibabel choose the format from it).
    """
    path = Path(path)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, publish_mode(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def parse_json_object(text: str, option: str, example: str) -> dict:
    """``text`` parsed as a JSON object (e.g. ``--model-kwargs``); InputError naming ``option`` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{option} is not valid JSON ({err.msg}); e.g. '{example}'") from None
    if not isinstance(value, dict):
        raise InputError(f"{option} must be a JSON object, e.g. '{example}'")
    return value
