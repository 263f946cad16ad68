"""The outputs log of resumable runs: which output files an interrupted run completed, for which inputs.

Example:
    >>> outputs = ResumableOutputs(folder, fingerprint)
    >>> outputs.done(folder / "a.nii.gz", inputs=[image])   # True when this run wrote it for this input
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from fusionseg.errors import InputError
from fusionseg.files.atomic import current_umask, write_text_atomic

__all__ = ["ResumableOutputs", "inputs_fingerprint"]


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
            fd = os.open(self.marker, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666 & ~current_umask())
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
