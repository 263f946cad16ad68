"""The one atomic writer: every file fusionseg writes appears under its final name only when complete.

A file is written to a hidden temporary file in the same folder, fsynced, then renamed over the target;
folders written as a whole (MONAI bundles) go the same way through :func:`atomic_directory`.

Example:
    >>> with atomic_write(out / "pred.nii.gz") as tmp:   # tmp is renamed to pred.nii.gz on success only
    ...     save_something(tmp)
    >>> write_text_atomic(out / "summary.json", "{}")
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from fusionseg.errors import InputError
from fusionseg.faults import maybe_fail
from fusionseg.files.paths import ensure_writable_dir

__all__ = [
    "atomic_directory",
    "atomic_write",
    "current_umask",
    "fsync_dir",
    "is_temporary",
    "publish_mode",
    "remove_stale_temp_files",
    "removed_on_error",
    "write_csv_atomic",
    "write_text_atomic",
]


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
        return 0o666 & ~current_umask()


# Temporary files of atomic_write: ``.NAME.tmp-<pid>-<random><suffix>`` (hidden, so never listed as results).
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[^.]+")


_swept_folders: set[str] = set()  # folders this process already cleaned


_own_temp_files: set[str] = set()  # temp files this process is writing right now


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write` (``.NAME.tmp-<pid>-<random>...``)."""
    return bool(_TEMP_NAME.match(Path(path).name))


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files in ``folder`` of writers that died (e.g. SIGKILL during a save) → their paths.

    A temp file whose writer process is still alive (another job writing there) is kept.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or entry.path in _own_temp_files:
            continue
        pid = int(match["pid"])
        try:
            if pid != os.getpid():  # our own pid on a file we are not writing: an earlier process with our pid
                os.kill(pid, 0)
                continue  # alive (or alive under another user): not ours to delete
        except ProcessLookupError:
            pass
        except OSError:
            continue
        if entry.is_dir(follow_symlinks=False):  # a folder of atomic_directory
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was (absent or
    the old version), so readers never see a half-written file; a crash at any moment leaves the
    old or the new file. The temporary name ``.NAME.tmp-<pid>-<random><suffix>`` keeps the suffix of
    ``path`` (writers such as nibabel choose the format from it); leftovers of dead writers in the
    folder are removed by the first write of a process there. An unwritable folder raises :class:`InputError`.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        ensure_writable_dir(folder)
    key = os.path.realpath(folder)
    if key not in _swept_folders:
        remove_stale_temp_files(folder)
        _swept_folders.add(key)
    suffix = "".join(path.suffixes) or ".tmp"
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=suffix, dir=folder)
    except OSError:
        ensure_writable_dir(folder)  # raises the InputError that names the reason
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    _own_temp_files.add(str(tmp))
    try:
        yield tmp
        maybe_fail("files.write")  # the temporary file is complete, the target not yet replaced
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, publish_mode(path))
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise InputError(f"could not write {path}: {err.strerror}; free space or choose another path") from None
        raise
    finally:
        _own_temp_files.discard(str(tmp))
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


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    Readers see the old folder or the complete new one, never a half-written one: the new folder
    is filled under ``.NAME.tmp-<pid>-<random>`` (the temporary name of :func:`atomic_write`, so the
    folder of a killed writer is swept like its files), an old ``path`` is moved aside, the new one
    renamed into place, then the old one deleted. On any exception the temporary folder is removed
    and ``path`` is left as it was.

    >>> with atomic_directory("bundle") as tmp:
    ...     (tmp / "configs").mkdir()
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    ensure_writable_dir(folder)
    remove_stale_temp_files(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=folder))
    _own_temp_files.add(str(tmp))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-old", dir=folder))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _own_temp_files.discard(str(tmp))
    fsync_dir(folder)


def current_umask() -> int:
    """The process's umask (read by setting and restoring it): the mode new files get is 0o666 & ~umask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
