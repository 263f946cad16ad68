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

from fusionseg.files.atomic import (
    atomic_directory,
    atomic_write,
    fsync_dir,
    is_temporary,
    publish_mode,
    remove_stale_temp_files,
    removed_on_error,
    write_csv_atomic,
    write_text_atomic,
)
from fusionseg.files.locks import FolderLock, folder_lock
from fusionseg.files.paths import check_output_apart, ensure_file, ensure_writable_dir
from fusionseg.files.resumable import ResumableOutputs, inputs_fingerprint

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
