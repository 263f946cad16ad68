"""Fault injection: every failure a user can cause (or a crash can leave) ends in a one-line, actionable
error and no partial output — torn/empty/garbage checkpoints, pickled code, interrupted writes,
unwritable folders, wrong channel counts — and every long command killed with SIGKILL at any point
(training, cross-validation, predict, export) completes when run again, as an uninterrupted run would."""

from __future__ import annotations

import os
import pickle
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fusionseg import cli
from fusionseg.checkpoints import checkpoint as ckpt_mod
from fusionseg.checkpoints.checkpoint import build_checkpoint, load_checkpoint, rebuild_model, save_checkpoint
from fusionseg.data.validation import check_channels
from fusionseg.errors import InputError
from fusionseg.files import atomic_write, ensure_file, ensure_writable_dir, is_temporary
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
    from fusionseg.checkpoints.checkpoint import save_checkpoint
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

    monkeypatch.setattr("fusionseg.files.atomic.tempfile.mkstemp", denied)  # as if the folder were read-only
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
    pytest.importorskip("fusionseg.inference.predict_files")
    data = tiny_phantom_2d
    from dataclasses import replace

    from fusionseg.data import build_preprocessing, scan_dataset

    pre = build_preprocessing(scan_dataset(data))
    pre = replace(pre, in_channels=3, channel_normalisation=pre.channel_normalisation * 3)
    model = Faulty(in_channels=3, out_channels=pre.num_classes)
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


# --------------------------------------------------------------------------------------------- killed, then rerun
# Each long command is killed with SIGKILL at a named point (fusionseg.faults: FUSIONSEG_FAULT="point:N"), as a
# pre-empted cluster job would be, then run again: it completes, its outputs are complete and valid, no
# temporary file is left, and a resumed training ends with the weights of an uninterrupted one.
TRAIN_ARGS = (
    "--model", "unet", "--model-kwargs", '{"features": [4, 8]}', "--epochs", "2", "--iters-per-epoch", "2",
    "--batch-size", "2", "--patch-size", "32,32", "--val-fraction", "0.25", "--device", "cpu", "--seed", "7",
    "--lr", "0.01", "--threads", "1", "--no-progress",
)  # fmt: skip


def _env(fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FUSIONSEG_FAULT"}
    env.update(OMP_NUM_THREADS="1", PYTHONHASHSEED="0", PYTHONUNBUFFERED="1")  # unbuffered: a killed run's output
    return {**env, "FUSIONSEG_FAULT": fault} if fault else env


def _cli(*args, fault: str | None = None) -> subprocess.CompletedProcess:
    """``fusionseg ARGS`` in a subprocess; with ``fault`` it must die by SIGKILL at that point."""
    cmd = [sys.executable, "-m", "fusionseg", *map(str, args)]
    proc = subprocess.run(cmd, env=_env(fault), capture_output=True, text=True, timeout=600)
    expected = -signal.SIGKILL if fault else 0
    assert proc.returncode == expected, f"{fault}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


def _train(data: Path, out: Path, *extra, fault: str | None = None) -> subprocess.CompletedProcess:
    return _cli("train", "--data", data, "--output", out, *TRAIN_ARGS, *extra, fault=fault)


def _temporary_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if is_temporary(p))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from fusionseg.data import make_phantom_dataset

    folder = tmp_path_factory.mktemp("faults") / "data"
    return make_phantom_dataset(folder, spatial_dims=2, num_train=4, num_test=3, size=(32, 32), seed=0)


@pytest.fixture(scope="module")
def reference_run(phantoms, tmp_path_factory) -> Path:
    """The uninterrupted training every resumed one must reproduce (its best.pt also serves predict and export)."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    _train(phantoms, out)
    return out


def _assert_same_run(run: Path, reference: Path, epochs: int = 2) -> None:
    for name in ("last.pt", "best.pt"):
        got, expected = load_checkpoint(run / name), load_checkpoint(reference / name)
        assert (got["epoch"], got["step"]) == (expected["epoch"], expected["step"]), name
        assert got["state_dict"].keys() == expected["state_dict"].keys()
        for key, value in expected["state_dict"].items():
            assert torch.equal(got["state_dict"][key], value), f"{name}: {key} differs after resume"
        assert [r["train_loss"] for r in got["history"]] == [r["train_loss"] for r in expected["history"]]
    assert (run / "log.csv").read_text().count("\n") == 1 + epochs  # header + one row per epoch, none twice


def test_train_killed_around_checkpoint_writes_resumes_to_identical_weights(phantoms, reference_run, tmp_path):
    run = tmp_path / "run"
    proc = _train(phantoms, run, "--resume", fault="checkpoint.write:1")  # last.pt written to its temporary name
    assert "starting the run afresh" in proc.stdout  # nothing to resume yet
    assert not (run / "last.pt").exists() and _temporary_files(run)[0].startswith(".last.pt.tmp-")
    _train(phantoms, run, "--resume", fault="train.checkpoint:1")  # after last.pt, before best.pt
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and not (run / "best.pt").exists()
    assert _temporary_files(run) == []  # the killed writer's file was swept
    proc = _train(phantoms, run, "--resume", fault="train.step:1")  # mid-epoch 2
    assert f"resuming from {run / 'last.pt'} at epoch 1 (step 2)" in proc.stdout
    assert load_checkpoint(run / "best.pt")["epoch"] == 1  # the interrupted best.pt write was completed
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    _train(phantoms, run, "--resume")
    _assert_same_run(run, reference_run)
    assert _temporary_files(run) == []


@pytest.mark.slow
def test_train_killed_before_its_first_checkpoint_resumes_to_identical_weights(phantoms, reference_run, tmp_path):
    run = tmp_path / "run"
    for fault in ("train.build_model", "train.load_data:1", "train.step:1"):  # model build, data loading, epoch 1
        _train(phantoms, run, "--resume", fault=fault)
        assert not list(run.glob("*.pt"))
    proc = _train(phantoms, run, "--resume", fault="train.load_data:2")  # after epoch 1
    assert "starting the run afresh" in proc.stdout and load_checkpoint(run / "last.pt")["epoch"] == 1
    _train(phantoms, run, "--resume")
    _assert_same_run(run, reference_run)


def _train_config(data: Path, output: Path, **kw):
    from fusionseg.training.config import TrainConfig

    base = dict(model="unet", model_kwargs={"features": [4, 8]}, epochs=2, iters_per_epoch=2, batch_size=2,
                patch_size=(32, 32), val_fraction=0.25, device="cpu", seed=7, lr=0.01, progress=False)  # fmt: skip
    return TrainConfig(data=data, output=output, **{**base, **kw})


def test_train_resume_starts_afresh_or_falls_back_to_best_pt(phantoms, tmp_path, one_thread):
    from fusionseg.training.trainer import Trainer, train

    train(_train_config(phantoms, tmp_path / "full"))
    run, lines = tmp_path / "run", []
    Trainer(_train_config(phantoms, run, resume=True, stop_after=1), log=lines.append).run()
    assert sum("starting the run afresh" in line for line in lines) == 1
    (run / "last.pt").write_bytes(b"PK\x03\x04 torn")  # as a crash of an older, non-atomic writer leaves it
    lines.clear()
    Trainer(_train_config(phantoms, run, resume=True), log=lines.append).run()
    skipped = [line for line in lines if "skipping" in line]
    assert len(skipped) == 1 and str(run / "last.pt") in skipped[0] and "corrupt or truncated" in skipped[0]
    assert f"resuming from {run / 'best.pt'} at epoch 1 (step 2)" in lines
    _assert_same_run(run, tmp_path / "full")


def _read_outputs(folder: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    arrays = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".png":
            arrays[path.name] = np.asarray(Image.open(path))
        elif path.suffix == ".npz":
            arrays[path.name] = np.load(path)["probabilities"]
    return arrays


def test_predict_killed_mid_case_reruns_only_what_is_missing(phantoms, reference_run, tmp_path, capsys):
    args = ["predict", "--checkpoint", str(reference_run / "best.pt"), "--input", str(phantoms / "test" / "images"),
            "--probabilities", "--threads", "1"]  # fmt: skip
    out = tmp_path / "out"
    _cli(*args, "--output", out, fault="predict.probabilities:2")  # case 2: label map written, probabilities not
    assert sorted(p.name for p in out.glob("phantom_*")) == [
        "phantom_000.png", "phantom_000_probabilities.npz", "phantom_001.png"
    ]  # fmt: skip
    proc = _cli(*args, "--output", out, fault="files.write:2")  # killed inside the write of case 2's probabilities
    assert "1 of 3 case(s) already written" in proc.stdout and _temporary_files(out)
    assert cli.main([*args, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 of 3 case(s) already written" in printed and "wrote 3 prediction(s)" in printed
    assert cli.main([*args, "--output", str(tmp_path / "reference")]) == 0  # uninterrupted
    expected, got = _read_outputs(tmp_path / "reference"), _read_outputs(out)
    assert len(expected) == 6 and got.keys() == expected.keys() and _temporary_files(out) == []
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    assert cli.main([*args, "--output", str(out), "--tta"]) == 0  # other options: nothing counts as done
    assert "already written" not in capsys.readouterr().out


def test_export_killed_while_writing_leaves_no_file_and_reruns(reference_run, tmp_path):
    out = tmp_path / "export" / "model.ts"
    args = ["export", "--checkpoint", str(reference_run / "best.pt"), "--format", "torchscript", "--output", str(out)]
    _cli(*args, fault="files.write:1")
    assert not out.exists() and len(_temporary_files(out.parent)) == 1
    assert cli.main(args) == 0
    assert _temporary_files(out.parent) == [] and sorted(p.name for p in out.parent.iterdir()) == ["model.ts"]
    module = torch.jit.load(str(out))
    assert module(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_cross_validation_rerun_continues_with_the_unfinished_fold(phantoms, tmp_path, monkeypatch, one_thread):
    """Killed in fold 1 (an exception stands for the kill: the train test above covers SIGKILL), then resumed."""
    from fusionseg.training.trainer import Trainer
    from fusionseg.workflows.crossval import run_cross_validation

    cv, lines = tmp_path / "cv", []
    config = _train_config(phantoms, cv, epochs=1, num_folds=2, splits=tmp_path / "splits.json")
    real_step, calls = Trainer.train_step, []

    def dying_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # fold 0 took 2 steps: the first step of fold 1
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_cross_validation(config, "all", log=lines.append)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    finished = (cv / "fold_0" / "last.pt").stat().st_mtime_ns
    assert not (cv / "fold_1" / "last.pt").exists()
    summary = run_cross_validation(replace(config, resume=True), "all", log=lines.append)
    assert f"resuming from {cv / 'fold_0' / 'last.pt'} at epoch 1 (step 2)" in lines
    assert (cv / "fold_0" / "last.pt").stat().st_mtime_ns == finished  # not trained again
    assert load_checkpoint(cv / "fold_1" / "last.pt")["step"] == 2
    assert summary["complete"] and [f["fold"] for f in summary["folds"]] == [0, 1]
    assert all(0.0 <= f["dice"] <= 1.0 and f["num_cases"] == 2 for f in summary["folds"])


def test_ablate_rerun_scores_finished_runs_without_training_them_again(phantoms, tmp_path, one_thread):
    from fusionseg.workflows.ablate import train_and_score

    base = _train_config(phantoms, tmp_path, epochs=1000, val_every=1000)
    first = train_and_score(base, ["concat"], [0], 0.3, tmp_path)
    last = tmp_path / "runs" / "concat_seed0" / "last.pt"
    written, steps = last.stat().st_mtime_ns, load_checkpoint(last)["step"]
    assert train_and_score(base, ["concat"], [0], 0.3, tmp_path) == first  # same scores, from the same weights
    assert last.stat().st_mtime_ns == written and load_checkpoint(last)["step"] == steps >= 1


def test_maybe_fail_kills_at_the_nth_call_of_its_point_only():
    import fusionseg.faults

    script = (  # the module alone (importing the package would load torch): it reads the variable at import
        "import importlib.util as u, sys\nspec = u.spec_from_file_location('faults', sys.argv[1])\n"
        "faults = u.module_from_spec(spec)\nspec.loader.exec_module(faults)\n"
        "for i in range(4):\n    faults.maybe_fail('y'); faults.maybe_fail('x'); print(i)"
    )
    cmd = [sys.executable, "-c", script, fusionseg.faults.__file__]
    run = partial(subprocess.run, cmd, capture_output=True, text=True, timeout=60)
    killed = run(env=_env("x:3"))
    assert killed.returncode == -signal.SIGKILL and killed.stdout.split() == ["0", "1"]
    assert run(env=_env("x")).stdout == "" and run(env=_env()).stdout.split() == ["0", "1", "2", "3"]


def test_outputs_of_other_settings_never_count_as_done(tmp_path):
    from fusionseg.files import ResumableOutputs, write_text_atomic

    image = write_text_atomic(tmp_path / "in.png", "an input")
    old = write_text_atomic(tmp_path / "old.png", "not written by fusionseg")
    first = ResumableOutputs(tmp_path, "model A")
    assert not first.done(old, inputs=[image]) and not (tmp_path / first.MARKER).exists()  # nothing claimed yet
    first.claim(tmp_path / "new.png")
    new = write_text_atomic(tmp_path / "new.png", "written by this run")
    first.record(new, inputs=[image])
    again = ResumableOutputs(tmp_path, "model A")  # the same command, rerun after a kill
    assert again.done(new, inputs=[image]) and not again.done(old, inputs=[image])
    assert not again.done(new, tmp_path / "missing.npz", inputs=[image])
    assert again.wrote(new) and not again.wrote(old)
    other = ResumableOutputs(tmp_path, "model B")
    assert not other.done(new, inputs=[image])
    other.claim(new)
    write_text_atomic(new, "written by model B")
    other.record(new, inputs=[image])
    assert not ResumableOutputs(tmp_path, "model A").done(new, inputs=[image])  # B replaced it since


def test_temporary_files_are_never_taken_for_data_or_results(tmp_path):
    """Leftovers of a killed writer (a torn PNG under a temporary name) in a dataset, inputs and predictions."""
    from fusionseg.data import make_phantom_dataset, scan_dataset
    from fusionseg.evaluation.evaluate import label_files
    from fusionseg.inference.inputs import find_inputs

    data = make_phantom_dataset(tmp_path / "data", spatial_dims=2, num_train=2, num_test=1, size=(32, 32), seed=0)
    for folder in (data / "images", data / "masks", data / "test" / "images"):
        (folder / ".phantom_009.png.tmp-4242-x1y2z3ab.png").write_bytes(b"\x89PNG torn")
        assert is_temporary(next(folder.glob(".*.tmp-*")))
    assert [c.case_id for c in scan_dataset(data).cases] == ["phantom_000", "phantom_001"]
    assert [cid for cid, _ in find_inputs(data / "test" / "images")] == ["phantom_000"]
    assert list(label_files(data / "masks")) == ["phantom_000", "phantom_001"]


@pytest.mark.slow
def test_train_killed_at_random_instants_resumes_to_identical_weights(phantoms, tmp_path):
    """SIGKILL at seeded random moments (imports, data caching, steps, writes), --resume after each."""
    longer = ("--epochs", "4", "--iters-per-epoch", "4")  # later options win: a run of several seconds
    _train(phantoms, tmp_path / "reference", *longer)
    run, rng, kills = tmp_path / "run", random.Random(24), 0
    cmd = [sys.executable, "-m", "fusionseg", "train", "--data", str(phantoms), "--output", str(run), *TRAIN_ARGS]
    for attempt in range(6):
        proc = subprocess.Popen([*cmd, *longer, *["--resume"] * (attempt > 0)], env=_env(), stdout=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(1.5, 6.5))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            kills += proc.wait() == -signal.SIGKILL
    assert kills >= 2, "the runs finished before they could be killed"
    _train(phantoms, run, *longer, "--resume")
    _assert_same_run(run, tmp_path / "reference", epochs=4)
    assert _temporary_files(run) == []


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
