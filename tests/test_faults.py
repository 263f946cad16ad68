"""Fault injection: every failure a user can cause (or a crash can leave) ends in a one-line, actionable
error and no partial output — torn/empty/garbage checkpoints, pickled code, interrupted writes,
unwritable folders, wrong channel counts, and SIGKILL during training followed by ``--resume``."""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from fusionseg import cli
from fusionseg.data.validation import check_channels
from fusionseg.engine import checkpoint as ckpt_mod
from fusionseg.engine.checkpoint import build_checkpoint, load_checkpoint, rebuild_model, save_checkpoint
from fusionseg.errors import InputError
from fusionseg.files import atomic_write, ensure_file, ensure_writable_dir
from fusionseg.nets import registry
from fusionseg.nets.weights import load_pretrained

ANSI = re.compile(r"\x1b\[")


class Faulty(nn.Module):
    size_multiple = 1

    def __init__(self, in_channels=1, out_channels=2, spatial_dims=2):
        super().__init__()
        self.conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(in_channels, out_channels, 3, padding=1)
        self.in_channels, self.out_channels, self.spatial_dims = in_channels, out_channels, spatial_dims
        kwargs = dict(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims)
        self.config = {"name": "_toy_faults", "kwargs": kwargs}
        self.in_channels, self.out_channels, self.spatial_dims = in_channels, out_channels, spatial_dims

    def check_input(self, x):
        pass

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(autouse=True)
def _register_toy(monkeypatch):
    """``_toy_faults`` in the model registry for this module's tests only (not seen by other test files)."""
    monkeypatch.setitem(registry._MODELS, "_toy_faults", Faulty)


def _assert_one_line(err: BaseException) -> str:
    msg = str(err)
    assert msg and "\n" not in msg and not ANSI.search(msg) and len(msg) < 600, msg
    return msg


@pytest.fixture
def good_ckpt(tmp_path) -> Path:
    return save_checkpoint(tmp_path / "good.pt", build_checkpoint(Faulty(), rng=False))


# --------------------------------------------------------------------------------------------- corrupt files
def _torn(path: Path, good: Path) -> None:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPT = {
    "empty": (lambda p, g: p.write_bytes(b""), "is empty"),
    "torn": (_torn, "corrupt or truncated"),
    "garbage": (lambda p, g: p.write_bytes(os.urandom(256).replace(b"\x80", b"\x00").replace(b"PK", b"pk")),
                "not a PyTorch file"),
    "lfs-pointer": (lambda p, g: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n"),
                    "git lfs pull"),
    "html-page": (lambda p, g: p.write_text("<!DOCTYPE html><html>Not Found</html>"), "HTML"),
    "plain-pickle": (lambda p, g: p.write_bytes(pickle.dumps({"a": 1}, protocol=4)), "corrupt or not a PyTorch file"),
    "zip-not-torch": (lambda p, g: __import__("zipfile").ZipFile(p, "w").writestr("x.txt", "hi"), "corrupt"),
    "directory": (lambda p, g: p.mkdir(), "is a directory"),
    "missing": (lambda p, g: None, "does not exist"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_bad_checkpoint_files_give_one_clear_line(tmp_path, good_ckpt, kind):
    make, expected = CORRUPT[kind]
    path = tmp_path / f"{kind}.pt"
    make(path, good_ckpt)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    msg = _assert_one_line(info.value)
    assert expected in msg and str(path) in msg


@pytest.mark.parametrize("kind", ["torn", "garbage", "missing"])
def test_cli_reports_bad_checkpoint_without_traceback_or_output(tmp_path, good_ckpt, capsys, kind):
    make, expected = CORRUPT[kind]
    bad = tmp_path / f"{kind}.pt"
    make(bad, good_ckpt)
    out = tmp_path / "out" / "model.onnx"
    rc = cli.main(["export", "--checkpoint", str(bad), "--format", "onnx", "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("fusionseg export: error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


# --------------------------------------------------------------------------------------------- pickled code
class _Payload:
    """Unpickling this runs ``open(marker, "w")`` — proof that code would execute."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_with_pickled_code_is_refused_and_never_executed(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": Faulty().state_dict(), "hook": _Payload(marker)}, evil)
    for load in (load_checkpoint, lambda p: load_pretrained(Faulty(), p), rebuild_model):
        with pytest.raises(InputError) as info:
            load(evil)
        msg = _assert_one_line(info.value)
        assert "pickled Python objects" in msg and "io.open" in msg and "corrupt" not in msg
    rc = cli.main(["import-weights", "--model", "_toy_faults", "--weights", str(evil), "--output", str(tmp_path / "c")])
    assert rc == 2 and "pickled Python objects" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "c").exists()


def test_pickled_class_instance_message_has_no_ansi_codes(tmp_path):
    import argparse

    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "ns.pt")  # torch's own message has ANSI bold here
    with pytest.raises(InputError) as info:
        load_checkpoint(tmp_path / "ns.pt")
    assert "argparse.Namespace" in _assert_one_line(info.value)


# --------------------------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("error", [RuntimeError("disk died"), KeyboardInterrupt()])
def test_interrupted_save_keeps_old_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch, error):
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 1, "w": torch.ones(3)})

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise error

    monkeypatch.setattr(ckpt_mod.torch, "save", torn_save)
    with pytest.raises(type(error)):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_disk_full_during_save_is_an_input_error_and_old_file_survives(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 1})

    def full(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full)
    with pytest.raises(InputError, match="No space left on device"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and len(list(tmp_path.iterdir())) == 1


WRITER = textwrap.dedent(
    """
    import sys, torch
    from fusionseg.engine.checkpoint import save_checkpoint
    path, i = sys.argv[1], 0
    while True:
        i += 1
        save_checkpoint(path, {"i": i, "w": torch.full((1_000_000,), float(i))})
        print(i, flush=True)
    """
)


def test_sigkill_while_saving_never_leaves_a_torn_checkpoint(tmp_path):
    """A writer rewriting a 4 MB checkpoint in a loop (mostly inside torch.save) is killed; the file loads."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "ck.pt"
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # a few complete saves, then kill at an arbitrary point of the next one
        assert proc.stdout.readline()
    time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = load_checkpoint(path)
    assert ck["i"] >= 3 and torch.equal(ck["w"], torch.full((1_000_000,), float(ck["i"])))
    save_checkpoint(path, {"i": 0})  # the next save sweeps temp files of the killed writer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "writer.py"]


def test_atomic_write_helper_publishes_only_complete_files(tmp_path):
    target = tmp_path / "pred.nii.gz"
    with pytest.raises(ValueError), atomic_write(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise ValueError("writer crashed")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete" and list(tmp_path.iterdir()) == [target]


# --------------------------------------------------------------------------------------------- unwritable output
def test_unwritable_output_directory(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is an existing file"):
        ensure_writable_dir(tmp_path / "file")
    with pytest.raises(InputError, match=r"cannot write to output directory .*sub"):
        ensure_writable_dir(tmp_path / "file" / "sub")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("fusionseg.files.tempfile.mkstemp", denied)  # as if the folder were read-only
    with pytest.raises(InputError) as info:
        save_checkpoint(tmp_path / "ro" / "last.pt", {"a": 1})
    assert "(permission denied); choose a writable directory" in _assert_one_line(info.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_for_real(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(InputError, match="permission denied"):
            save_checkpoint(ro / "last.pt", {"a": 1})
    finally:
        ro.chmod(0o700)


def test_cli_unwritable_output_is_one_line(tmp_path, good_ckpt, capsys):
    (tmp_path / "file").write_text("x")
    rc = cli.main(["export", "--checkpoint", str(good_ckpt), "--format", "torchscript", "--output",
                   str(tmp_path / "file" / "m.ts"), "--patch-size", "4", "4"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "is an existing file, not a directory" in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------- missing / wrong input
def test_missing_and_empty_input_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ensure_file(tmp_path / "nope.pth", "weights")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        load_pretrained(Faulty(), tmp_path / "empty.pth")


def test_wrong_channel_count_for_checkpoint(tmp_path):
    with pytest.raises(InputError) as info:
        check_channels(3, 1, "image case_001.png")
    msg = _assert_one_line(info.value)
    assert "3 channel(s)" in msg and "expects 1" in msg
    check_channels(2, 2, "x")  # matching counts pass
    # weights of a 1-channel model do not go into a 3-channel model: named fix
    with pytest.raises(InputError, match="in_channels=1"):
        load_pretrained(Faulty(in_channels=3), Faulty(in_channels=1).state_dict())


def test_predict_with_wrong_channel_count_fails_cleanly_and_writes_nothing(tmp_path, capsys, tiny_phantom_2d):
    """Cross-stream: a 3-channel checkpoint given 1-channel images (engine predict + data loading)."""
    pytest.importorskip("fusionseg.engine.infer")
    data = tiny_phantom_2d
    from fusionseg.data import build_preprocessing, scan_dataset

    pre = build_preprocessing(scan_dataset(data))
    pre["in_channels"] = 3
    model = Faulty(in_channels=3, out_channels=int(pre["num_classes"]))
    ck = save_checkpoint(tmp_path / "c3.pt", build_checkpoint(model, preprocessing=pre, rng=False))
    image = sorted((data / "images").iterdir())[0] if (data / "images").is_dir() else None
    if image is None:
        pytest.skip("2D phantom layout has no images/ folder")
    out = tmp_path / "pred"
    rc = cli.main(["predict", "--checkpoint", str(ck), "--input", str(image), "--output", str(out)])
    captured = capsys.readouterr()
    assert rc != 0
    assert "channel" in captured.err.lower()
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------------------------- SIGKILL + resume
class Noisy(nn.Module):
    """Consumes every RNG a training loop may use: torch (dropout, data), numpy and random (augmentation)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


def _steps(model, opt, sched, n):
    import random

    import numpy as np

    for _ in range(n):
        noise = float(np.random.rand()) + random.random()
        x = torch.randn(8, 4) + noise
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _fresh():
    torch.manual_seed(0)
    model = Noisy()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    return model, opt, torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)


def test_resume_from_checkpoint_continues_bit_identically(tmp_path):
    """The mechanism behind ``--resume``: model + optimizer + scheduler + RNG state in a safe checkpoint."""
    import random

    import numpy as np

    def seed():
        torch.manual_seed(1)
        np.random.seed(1)
        random.seed(1)

    seed()
    model, opt, sched = _fresh()
    seed()
    _steps(model, opt, sched, 10)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt, sched = _fresh()
    seed()
    _steps(model, opt, sched, 4)
    state = {"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    save_checkpoint(tmp_path / "last.pt", {**state, "rng": ckpt_mod.capture_rng_state(), "step": 4})
    _steps(model, opt, sched, 2)  # work lost in the crash
    del model, opt, sched
    torch.manual_seed(123)  # the restarted process starts from other RNG states
    np.random.seed(123)
    random.seed(123)

    ck = load_checkpoint(tmp_path / "last.pt")
    model, opt, sched = _fresh()
    model.load_state_dict(ck["state_dict"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    ckpt_mod.restore_rng_state(ck["rng"])
    _steps(model, opt, sched, 10 - ck["step"])
    for key, value in expected.items():
        assert torch.equal(model.state_dict()[key], value), key


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "fusionseg", "train", "--data", str(data), "--output", str(out), "--model", "unet",
        "--model-kwargs", '{"features": [4, 8]}', "--epochs", "3", "--iters-per-epoch", "3", "--batch-size", "2",
        "--patch-size", "32,32", "--val-fraction", "0", "--device", "cpu", "--seed", "7", "--lr", "0.01", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.mark.slow
def test_sigkill_during_training_then_resume_reaches_identical_weights(tmp_path, tiny_phantom_2d):
    """``fusionseg train`` killed with SIGKILL after its first checkpoint, then ``--resume``: bit-identical."""
    pytest.importorskip("fusionseg.engine.train")
    data = tiny_phantom_2d
    # Uninterrupted reference run.
    ref = subprocess.run(_train_cmd(data, tmp_path / "ref"), env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    # Same run, killed with SIGKILL as soon as the first checkpoint exists.
    run = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(data, run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (run / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = load_checkpoint(run / "last.pt")  # never torn
    assert 1 <= killed_at["epoch"] < 3
    # Restart with --resume: continues from the last checkpoint.
    res = subprocess.run(
        _train_cmd(data, run, "--resume"), env=_env(), capture_output=True, text=True, timeout=300
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {run / 'last.pt'} at epoch {killed_at['epoch']}" in res.stdout + res.stderr
    final, expected = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "ref" / "last.pt")
    assert final["epoch"] == expected["epoch"] == 3 and final["step"] == expected["step"] == 9
    assert final["state_dict"].keys() == expected["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), f"{key} differs after resume"  # bit-identical on CPU
    assert [r["train_loss"] for r in final["history"]] == [r["train_loss"] for r in expected["history"]]
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_atomically_written_files_get_normal_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        ck = save_checkpoint(tmp_path / "a.pt", {"a": 1})
        with atomic_write(tmp_path / "b.txt") as tmp:
            tmp.write_text("b")
        assert (ck.stat().st_mode & 0o777) == 0o644 and ((tmp_path / "b.txt").stat().st_mode & 0o777) == 0o644
        ck.chmod(0o600)  # a replaced file keeps its permissions
        assert (save_checkpoint(ck, {"a": 2}).stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(mask)


def test_removed_on_error_keeps_a_case_whole(tmp_path):
    from fusionseg.files import removed_on_error

    label, probs = tmp_path / "case.nii.gz", tmp_path / "case_probabilities.nii.gz"
    label.write_bytes(b"label")
    with pytest.raises(OSError, match="disk full"), removed_on_error(label):
        raise OSError("disk full")  # the probability write fails → the label map goes too
    assert not label.exists()
    label.write_bytes(b"label")
    with removed_on_error(label):
        probs.write_bytes(b"probs")
    assert label.read_bytes() == b"label" and probs.read_bytes() == b"probs"
