"""files.FolderLock: one writer per folder, the holder named, a dead holder's lock taken over."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from fusionseg.errors import InputError
from fusionseg.files import FolderLock, folder_lock

HOLD = "from fusionseg.files import folder_lock; import sys, time\nwith folder_lock(sys.argv[1], 'run'):\n" \
       "    print('held', flush=True); time.sleep(60)"  # fmt: skip


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_gets_one_line_naming_the_holder(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(InputError) as err, folder_lock(tmp_path, "training run"):
            pass
        message = str(err.value)
        assert "\n" not in message
        assert f"pid {proc.pid}" in message and "training run" in message and "choose another folder" in message
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    proc.kill()
    proc.wait()
    with folder_lock(tmp_path, "run") as lock:
        assert lock.held
        record = json.loads((tmp_path / FolderLock.NAME).read_text())
        assert record["pid"] != proc.pid


def test_released_lock_can_be_taken_again_and_leaves_no_file(tmp_path):
    lock = FolderLock(tmp_path / "new" / "folder", "run").acquire()  # creates the folder
    assert lock.held and (tmp_path / "new" / "folder" / FolderLock.NAME).stat().st_size > 0
    lock.release()
    assert not lock.held and not (tmp_path / "new" / "folder" / FolderLock.NAME).exists()
    start = time.perf_counter()
    with folder_lock(tmp_path / "new" / "folder") as again:
        assert again.held
    assert time.perf_counter() - start < 5  # never waits


def test_lock_on_an_existing_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="existing file"):
        FolderLock(tmp_path / "f").acquire()


def test_shards_hold_their_own_locks_in_one_folder(tmp_path):
    from fusionseg.inference.sharding import shard_lock_name

    assert shard_lock_name(None) == FolderLock.NAME and shard_lock_name((1, 4)) == ".fusionseg-lock-shard-1-of-4"
    with folder_lock(tmp_path, "prediction folder", name=shard_lock_name((0, 2))):
        with folder_lock(tmp_path, "prediction folder", name=shard_lock_name((1, 2))) as other:
            assert other.held  # another shard writes the same folder
        proc = subprocess.run(
            [sys.executable, "-c", "from fusionseg.files import folder_lock; import sys\n"
             "folder_lock(sys.argv[1], 'prediction folder', name='.fusionseg-lock-shard-0-of-2').acquire()",
             str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode != 0 and "is in use by another fusionseg process" in proc.stderr  # the same shard
    with pytest.raises(ValueError, match="hidden file name"):
        FolderLock(tmp_path, name="lock/../x")
