"""Files: checks on user-supplied paths and the one atomic writer every output goes through.

Every file fusionseg writes (checkpoints, predictions, probabilities, exported models, CSV/JSON
logs, figures, reports) appears under its final name only when it is complete: it is written to a
hidden temporary file in the same folder, fsynced, then renamed over the target.

Example:
    >>> out = ensure_writable_dir("runs/exp1")          # creates it, or InputError naming the fix
    >>> with atomic_write(out / "pred.nii.gz") as tmp:   # tmp is renamed to pred.nii.gz on success only
    ...     save_something(tmp)
    >>> write_text_atomic(out / "summary.json", "{}")
    >>> write_csv_atomic(out / "metrics.csv", [{"case": "a", "dice": 0.9}], ["case", "dice"])
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from fusionseg.errors import InputError

__all__ = [
    "atomic_write",
    "ensure_file",
    "ensure_writable_dir",
    "fsync_dir",
    "publish_mode",
    "remove_stale_temp_files",
    "removed_on_error",
    "write_csv_atomic",
    "write_text_atomic",
]


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


def remove_stale_temp_files(path: str | os.PathLike) -> None:
    """Delete ``.NAME.<pid>.*`` leftovers of writers of ``path`` that died (e.g. SIGKILL during a save)."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*"):
        pid = tmp.name[len(path.name) + 2 :].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # alive under another user: not ours to delete


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was (absent or
    the old version), so readers never see a half-written file; a crash at any moment leaves the
    old or the new file. The temporary name ``.NAME.<pid>.<random><suffix>`` keeps the suffix of
    ``path`` (writers such as nibabel choose the format from it); leftovers of dead writers are
    removed first. An unwritable folder raises :class:`InputError`.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        ensure_writable_dir(folder)
    remove_stale_temp_files(path)
    suffix = "".join(path.suffixes) or ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix, dir=folder)
    except OSError:
        ensure_writable_dir(folder)  # raises the InputError that names the reason
        raise
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, publish_mode(path))
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise InputError(f"could not write {path}: {err.strerror}; free space or choose another path") from None
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_write`."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path


def write_csv_atomic(path: str | os.PathLike, rows: Iterable[Mapping], fieldnames: Sequence[str]) -> Path:
    """Write ``rows`` (dicts) as a CSV file with columns ``fieldnames`` through :func:`atomic_write` → ``path``.

    A missing key or None is an empty cell; keys not in ``fieldnames`` are left out.

    Example:
        >>> write_csv_atomic("log.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": None}], ["epoch", "loss"])
    """
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in fieldnames})
    return path


@contextlib.contextmanager
def removed_on_error(*paths: str | os.PathLike) -> Iterator[None]:
    """Delete ``paths`` if the block raises (all files of one output or none), then re-raise.

    >>> with removed_on_error(label_path):
    ...     write_probabilities(prob_path)  # a failure here also removes label_path
    """
    try:
        yield
    except BaseException:
        for path in paths:
            Path(path).unlink(missing_ok=True)
        raise
