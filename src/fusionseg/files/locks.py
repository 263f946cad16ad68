"""One writer per output folder: an advisory lock whose holder a second writer is told about in one line.

Example:
    >>> with folder_lock(out, "training run"):
    ...     train_into(out)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from fusionseg.errors import InputError
from fusionseg.files.atomic import current_umask
from fusionseg.files.paths import ensure_writable_dir

__all__ = ["FolderLock", "folder_lock"]


class FolderLock:
    """An exclusive lock on a folder (``.fusionseg-lock`` in it while held): one fusionseg writer at a time.

    The lock is an advisory ``flock`` on the lock file, so the kernel releases it when the holder dies,
    however it dies (a stale lock of a killed process is simply taken over). The file records who holds
    it (pid, host, command, start time), so a second writer's :class:`InputError` names the holder.
    Where ``flock`` is not supported (some network filesystems) the lock degrades to a no-op.

    >>> lock = FolderLock("runs/exp1", "training run").acquire()   # InputError if another process holds it
    >>> lock.release()
    """

    NAME = ".fusionseg-lock"

    def __init__(self, folder: str | os.PathLike, what: str = "output folder", name: str = NAME) -> None:
        if not name.startswith(".") or "/" in name:
            raise ValueError(f"lock name must be a hidden file name like .fusionseg-lock, got {name!r}")
        self.folder, self.what = Path(folder), what
        self.path = self.folder / name
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        ensure_writable_dir(self.folder, self.what)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(fd)
                os.close(fd)
                raise InputError(
                    f"{self.what} {self.folder} is in use by another fusionseg process ({holder}); wait for it to "
                    "finish, stop it, or choose another folder"
                ) from None
            except OSError:  # flock unsupported here: no lock rather than no run
                os.close(fd)
                return self
            try:  # the holder before us removes the file on release: locked a removed file, so try again
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still locked: a process waiting on this file then sees it removed
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {record['pid']} on {record['host']} since {record['started']}: {record['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def folder_lock(folder: str | os.PathLike, what: str = "output folder", name: str = FolderLock.NAME) -> FolderLock:
    """A :class:`FolderLock` on ``folder`` for a ``with`` block (``with folder_lock(out, "prediction folder"):``)."""
    return FolderLock(folder, what, name)
