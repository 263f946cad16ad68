"""Files: checks on user-supplied paths and the one atomic writer every output goes through.

Every file fusionseg writes (checkpoints, predictions, probabilities, exported models, CSV/JSON
logs, figures, reports) appears under its final name only when it is complete: it is written to a
hidden temporary file in the same folder, fsynced, then renamed over the target. Folders written as
a whole (MONAI bundles) go the same way through :func:`atomic_directory`.

Example:
    >>> out = ensure_writable_dir("runs/exp1")          # creates it, or InputError naming the fix
    >>> with atomic_write(out / "pred.nii.gz") as tmp:   # tmp is renamed to pred.nii.gz on success only
    ...     save_something(tmp)
    >>> write_text_atomic(out / "summary.json", "{}")
    >>> write_csv_atomic(out / "metrics.csv", [{"case": "a", "dice": 0.9}], ["case", "dice"])
    >>> with folder_lock(out, "training run"):          # one writer per folder; a second one gets one line
    ...     train_into(out)
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from fusionseg.errors import InputError
from fusionseg.faults import maybe_fail

__all__ = [
    "FolderLock",
    "ResumableOutputs",
    "atomic_directory",
    "atomic_write",
    "check_output_apart",
    "ensure_file",
    "ensure_writable_dir",
    "folder_lock",
    "fsync_dir",
    "inputs_fingerprint",
    "is_temporary",
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
        return 0o666 & ~_umask()


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


_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")  # a DICOM UID: FOLDER/UID names one series of a folder


def inputs_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """A cheap fingerprint of input files: each one's name, size and modification time (no content read).

    A file replaced under the same name (another size or mtime) changes it.

    >>> inputs_fingerprint([Path("imagesTs/case_0000.nii.gz")])   # 'sha256 hex'
    """
    digest = hashlib.sha256()
    for path in map(Path, paths):
        # A folder input (a DICOM series, or ``FOLDER/SERIES_UID`` naming one series of it) stands for its files.
        series_of_folder = _UID.match(path.name) and not path.exists() and path.parent.is_dir()
        folder = path if path.is_dir() else path.parent if series_of_folder else None
        members = sorted(p for p in folder.iterdir() if p.is_file()) if folder is not None else [path]
        digest.update(f"{path.name}\0{len(members)}\n".encode())
        for member in members:
            try:
                stat = member.stat()
                digest.update(f"{member.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{member.name}\0missing\n".encode())
    return digest.hexdigest()


class ResumableOutputs:
    """Which outputs in ``folder`` fusionseg wrote, and which a run with the same ``fingerprint`` (model and
    options) already completed from the same inputs.

    The hidden file ``.fusionseg-outputs`` is a log of JSON lines, one per output event: ``claim(*paths)``
    before writing an output (its name is then fusionseg's, even if the process dies mid-write),
    ``record(*paths, inputs=files)`` after (the run fingerprint, the :func:`inputs_fingerprint` of the inputs
    and the output's size and mtime). ``done(*paths, inputs=files)``: every path was recorded for this
    fingerprint and these inputs and is unchanged since, so an input replaced under the same name is
    predicted again. ``check_outputs(paths, inputs)`` before a run: one line for the first path that is an
    input or an existing file fusionseg did not write (e.g. a copy of ``labelsTs``), and nothing is replaced.

    >>> outputs = ResumableOutputs("predictions", "sha256 of model and options")
    >>> outputs.done(Path("predictions/case_1.nii.gz"), inputs=[image])  # False unless this run wrote it
    >>> outputs.claim(Path("predictions/case_1.nii.gz"))                  # then write it, then:
    >>> outputs.record(Path("predictions/case_1.nii.gz"), inputs=[image])
    """

    MARKER = ".fusionseg-outputs"

    def __init__(self, folder: str | os.PathLike, fingerprint: str) -> None:
        self.folder, self.fingerprint = Path(folder), fingerprint
        self.marker = self.folder / self.MARKER
        self.records: dict[str, dict] = {}  # output name → its last event
        self.legacy_since: int | None = None  # an older marker (the fingerprint alone): files written since are ours
        try:
            lines = self.marker.read_text().splitlines()
            stamp = self.marker.stat().st_mtime_ns
        except (OSError, UnicodeDecodeError):
            return
        events = [_json_object(line) for line in lines]
        if lines and events[0] is None:
            self.legacy_since = stamp
            return
        for event in events:
            if event is not None and isinstance(event.get("name"), str):
                self.records[event["name"]] = event
            elif event is not None and isinstance(event.get("legacy_since"), int):
                self.legacy_since = event["legacy_since"]
        if len(lines) > 2 * len(self.records) + 64:  # compact a log grown by many reruns
            with self._locked_log():
                self._rewrite()

    def done(self, *paths: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> bool:
        """Whether every path was written by a run with this fingerprint from these ``inputs`` and is unchanged."""
        expected = inputs_fingerprint(inputs)
        for path in map(Path, paths):
            record = self.records.get(path.name) or {}
            try:
                stat = path.stat()
            except OSError:
                return False
            if record.get("run") != self.fingerprint or record.get("inputs") != expected:
                return False
            if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
                return False
        return bool(paths)

    def claim(self, *paths: str | os.PathLike) -> None:
        """Before writing ``paths``: they become fusionseg's files (a rerun may replace them)."""
        new = [Path(p).name for p in paths if self.records.get(Path(p).name, {}).get("pending") is not True]
        self._append([{"name": name, "pending": True} for name in new] if paths else [])

    def record(self, *paths: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> None:
        """After writing ``paths``: outputs of this run made from ``inputs``."""
        key = inputs_fingerprint(inputs)
        events = []
        for path in map(Path, paths):
            stat = path.stat()
            events.append(
                {"name": path.name, "run": self.fingerprint, "inputs": key, "size": stat.st_size,
                 "mtime_ns": stat.st_mtime_ns}
            )  # fmt: skip
        self._append(events)

    def wrote(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` in this folder is a file fusionseg wrote (with any model or options)."""
        path = Path(path)
        if path.name in self.records:
            return True
        try:
            return self.legacy_since is not None and path.stat().st_mtime_ns >= self.legacy_since
        except OSError:
            return False

    def check_outputs(self, paths: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]) -> None:
        """:class:`InputError` for the first of ``paths`` that is one of ``inputs`` or an existing file that
        fusionseg did not write (a ground-truth folder given as output): nothing is replaced then."""
        sources = {os.path.realpath(p) for p in inputs}
        for path in map(Path, paths):
            if os.path.realpath(path) in sources:
                raise InputError(
                    f"the output {path} would replace its own input; choose an --output folder apart from --input"
                )
            if path.exists() and not self.wrote(path):
                raise InputError(
                    f"--output {self.folder} already holds {path.name}, which fusionseg did not write (ground truth?); "
                    "choose an empty or new --output folder, nothing was replaced"
                )

    def _append(self, events: list[dict]) -> None:
        """Add ``events`` to the log (fsynced; a torn last line of a killed writer is skipped when read).

        Several processes of one run (shards, torchrun ranks) may append to one log: each write holds an
        ``flock`` on the log and checks that the file it locked is still the log (a compaction replaces it).
        """
        with self._locked_log() as fd:
            if os.pread(fd, 1, 0) != b"{":  # a new log, or an older marker (the fingerprint alone) turned into one
                self._rewrite()
                if events:
                    self._append(events)
                return
            if events:
                os.write(fd, "".join(json.dumps(e, sort_keys=True) + "\n" for e in events).encode())
                os.fsync(fd)
        for event in events:
            self.records[event["name"]] = event

    @contextlib.contextmanager
    def _locked_log(self) -> Iterator[int]:
        import fcntl

        while True:
            fd = os.open(self.marker, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666 & ~_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_ino == os.stat(self.marker).st_ino:
                    break
            except FileNotFoundError:
                pass
            except OSError:  # no flock here: appends of one process at a time still work
                break
            os.close(fd)
        try:
            yield fd
        finally:
            os.close(fd)

    def _rewrite(self) -> None:
        """Replace the log by a compact one: a header, then the last event of each output (this process's view
        merged with what other processes appended meanwhile)."""
        self.records = {**_read_records(self.marker), **self.records}
        header = {"format": "fusionseg-outputs", "version": 2, "legacy_since": self.legacy_since}
        events = [header, *self.records.values()]
        write_text_atomic(self.marker, "".join(json.dumps(e, sort_keys=True) + "\n" for e in events))


def _read_records(marker: Path) -> dict[str, dict]:
    """The last event of each output in the log ``marker`` ({} for a missing, legacy or unreadable one)."""
    try:
        lines = marker.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    events = [_json_object(line) for line in lines]
    return {e["name"]: e for e in events if e is not None and isinstance(e.get("name"), str)}


def _json_object(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


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
        os.chmod(tmp, 0o777 & ~_umask())
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
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
