"""A careless or hostile user at the command line: every mistake is one line (exit 2), and nothing is harmed.

One table of mistakes (``MISTAKES``), each run through ``fusionseg.cli.main`` in this process against a
tiny trained run; every case asserts exit status 2, exactly one line on stderr (no traceback) naming the
problem, and that no file of the dataset, the run, the inputs or a ground-truth copy changed (bytes and
modification time). Then the behaviours behind them: predictions redone for a replaced input, checkpoint
CRCs, resuming from a corrupt, imported or log-less run, bundle re-exports, the precision cache, memory
estimates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from careless import SHORT, TINY, snapshot
from fusionseg.checkpoints.checkpoint import build_checkpoint, load_checkpoint, rebuild_model, save_checkpoint
from fusionseg.cli import main as cli_main
from fusionseg.data import Preprocessing, make_phantom_dataset
from fusionseg.errors import InputError
from fusionseg.files import folder_lock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A 2D phantom dataset, a finished tiny run, a ground-truth copy and a file where a folder is expected."""
    root = tmp_path_factory.mktemp("careless")
    data = make_phantom_dataset(root / "data", spatial_dims=2, num_train=4, num_test=2, size=(32, 32))
    run = root / "run"
    assert cli_main(["train", "--data", str(data), "--output", str(run), *SHORT, *TINY]) == 0
    gt = shutil.copytree(data / "test" / "masks", root / "gt_copy")
    (root / "a_file").write_text("not a folder\n")
    return {"root": root, "data": data, "run": run, "gt": gt, "images": data / "test" / "images"}


def _flip_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


def _altered_checkpoint(w: dict, tmp: Path) -> Path:
    ckpt = load_checkpoint(w["run"] / "best.pt")
    ckpt["preprocessing"]["patch_size"] = "abc"
    return save_checkpoint(tmp / "altered.pt", ckpt)


def _corrupt_checkpoint(w: dict, tmp: Path) -> Path:
    path = Path(shutil.copy(w["run"] / "best.pt", tmp / "flipped.pt"))
    _flip_bytes(path)
    return path


def _config(tmp: Path, name: str, body: bytes) -> Path:
    path = tmp / name
    path.write_bytes(body)
    return path


LAUGHS = b'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + b"".join(
    b"%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n" % ((ord("a") + i + 1,) * 2 + (ord("a") + i,) * 9)
    for i in range(8)
)


def _predict(w: dict, output, *extra: str, checkpoint=None, source=None) -> list[str]:
    checkpoint = checkpoint or w["run"] / "best.pt"
    source = source or w["images"]
    return ["predict", "--checkpoint", str(checkpoint), "--input", str(source), "--output", str(output), *extra,
            "--threads", "1", "--no-progress"]  # fmt: skip


def _train(w: dict, output, *extra: str) -> list[str]:
    return ["train", "--data", str(w["data"]), "--output", str(output), *SHORT, *TINY, *extra]


# (id, argv from (world, tmp_path), words the one line must hold)
MISTAKES: list[tuple[str, Callable[[dict, Path], list[str]], str]] = [
    ("predict-output-is-input", lambda w, t: _predict(w, w["images"]), "is --input"),
    ("predict-output-inside-input", lambda w, t: _predict(w, w["images"] / "pred"), "lies inside --input"),
    ("predict-over-ground-truth", lambda w, t: _predict(w, w["gt"]), "which fusionseg did not write"),
    ("predict-msd-name-onto-itself",
     lambda w, t: _predict(w, w["images"], source=w["images"] / "phantom_000.png"), "would replace its own input"),
    ("predict-overlap-of-one", lambda w, t: _predict(w, t / "p", "--overlap", "1"), "--overlap must be in [0, 1)"),
    ("predict-output-is-a-file", lambda w, t: _predict(w, w["root"] / "a_file"), "is an existing file"),
    ("predict-corrupt-checkpoint",
     lambda w, t: _predict(w, t / "p", checkpoint=_corrupt_checkpoint(w, t)), "fails its CRC-32 check"),
    ("predict-malformed-patch-size",
     lambda w, t: _predict(w, t / "p", checkpoint=_altered_checkpoint(w, t)), "preprocessing.patch_size"),
    ("evaluate-output-is-a-file",
     lambda w, t: ["evaluate", "--pred", str(w["gt"]), "--gt", str(w["gt"]), "--output", str(w["root"] / "a_file")],
     "is an existing file"),
    ("demo-output-is-a-file",
     lambda w, t: ["demo", "--quick", "--phantoms", "--output", str(w["root"] / "a_file"), "--threads", "1"],
     "is an existing file"),
    ("ablate-output-is-a-file",
     lambda w, t: ["ablate", "--data", str(w["data"]), "--output", str(w["root"] / "a_file"), "--time-budget", "1",
                   "--fusions", "concat", *TINY], "is an existing file"),
    ("export-over-its-checkpoint",
     lambda w, t: ["export", "--checkpoint", str(w["run"] / "best.pt"), "--format", "torchscript",
                   "--output", str(w["run"] / "best.pt")], "would replace --checkpoint"),
    ("export-bundle-over-the-run",
     lambda w, t: ["export", "--checkpoint", str(w["run"] / "best.pt"), "--format", "bundle",
                   "--output", str(w["run"])], "would replace --checkpoint"),
    ("export-huge-patch",
     lambda w, t: ["export", "--checkpoint", str(w["run"] / "best.pt"), "--format", "onnx", "--output",
                   str(t / "m.onnx"), "--patch-size", "100000,100000"], "needs about"),
    ("export-to-an-existing-folder",
     lambda w, t: ["export", "--checkpoint", str(w["run"] / "best.pt"), "--format", "torchscript",
                   "--output", str(w["gt"])], "is a folder"),
    ("import-weights-over-its-weights",
     lambda w, t: ["import-weights", "--model", "unet", "--weights", str(w["run"] / "best.pt"),
                   "--output", str(w["run"] / "best.pt")], "would replace --weights"),
    ("import-weights-preprocessing-not-a-mapping",
     lambda w, t: ["import-weights", "--model", "unet", "--weights", str(w["run"] / "best.pt"), "--preprocessing",
                   str(_config(t, "pre.json", b"[1, 2]")), "--output", str(t / "x.pt")], "expected a mapping"),
    ("predict-deep-postprocessing-json",
     lambda w, t: _predict(w, t / "p", "--postprocess", str(_config(t, "pp.json", b"[" * 100_000 + b"]" * 100_000))),
     "--postprocess: cannot read"),
    ("train-negative-lr", lambda w, t: _train(w, t / "r", "--lr", "-1"), "--lr must be"),
    ("train-negative-weight-decay", lambda w, t: _train(w, t / "r", "--weight-decay", "-1"), "--weight-decay must"),
    ("train-huge-patch", lambda w, t: _train(w, t / "r", "--patch-size", "100000,100000"), "needs about"),
    ("train-huge-batch", lambda w, t: _train(w, t / "r", "--batch-size", "10000000"), "needs about"),
    ("train-huge-features",
     lambda w, t: _train(w, t / "r", "--model-kwargs", '{"features": [100000, 200000]}'), "needs about"),
    ("train-deep-json",
     lambda w, t: _train(w, t / "r", "--model-kwargs", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
     "nested too deeply"),
    ("train-config-not-utf8",
     lambda w, t: _train(w, t / "r", "--config", str(_config(t, "c.yaml", b"epochs: 1\nseed: \xff\xfe\n"))),
     "not UTF-8"),
    ("train-config-billion-laughs",
     lambda w, t: _train(w, t / "r", "--config", str(_config(t, "laughs.yaml", LAUGHS))), "aliases are not allowed"),
    ("train-config-too-large",
     lambda w, t: _train(w, t / "r", "--config", str(_config(t, "big.yaml", b"# x\n" * 300_000))), "limit"),
    ("train-config-into-its-finished-run",
     lambda w, t: ["train", "--config", str(w["run"] / "config.yaml")], "already holds a run"),
    ("train-over-a-finished-run", lambda w, t: _train(w, w["run"]), "--overwrite"),
    ("train-resume-and-overwrite", lambda w, t: _train(w, t / "r", "--resume", "--overwrite"), "exclude each other"),
]  # fmt: skip


@pytest.mark.parametrize(("make_argv", "expected"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_one_line_and_harms_nothing(world, tmp_path, capsys, make_argv, expected):
    argv = make_argv(world, tmp_path)
    before = snapshot(world["data"], world["run"], world["gt"], world["root"] / "a_file")
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"fusionseg {argv[0]}: error: ") and expected in err, err
    assert snapshot(world["data"], world["run"], world["gt"], world["root"] / "a_file") == before


def test_a_second_writer_gets_one_line_naming_the_holder(world, tmp_path, capsys):
    export = ["export", "--checkpoint", str(world["run"] / "best.pt"), "--format", "torchscript",
              "--output", str(tmp_path / "busy" / "m.ts")]  # fmt: skip
    for argv, what in ((_train(world, tmp_path / "busy"), "training run"), (_predict(world, tmp_path / "busy"), ""),
                       (export, "")):  # fmt: skip
        with folder_lock(tmp_path / "busy", "training run"):
            assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "in use by another fusionseg process" in err
        assert f"pid {os.getpid()}" in err and what in err
    assert not (tmp_path / "busy" / "last.pt").exists() and not (tmp_path / "busy" / ".fusionseg-lock").exists()


@pytest.mark.parametrize("value", ["train.step:abc", "train.step:0", "a b"])
def test_malformed_fault_variable_is_one_line(value):
    env = {**os.environ, "FUSIONSEG_FAULT": value, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "fusionseg", "train", "--data", "."], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "FUSIONSEG_FAULT" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------------- predictions
def test_an_input_replaced_under_the_same_name_is_predicted_again(world, tmp_path, capsys):
    images = shutil.copytree(world["images"], tmp_path / "images")
    out = tmp_path / "pred"
    argv = _predict(world, out, source=images)
    argv.remove("--no-progress")
    assert cli_main(argv) == 0
    first = snapshot(out)
    assert cli_main(argv) == 0
    assert "2 of 2 case(s) already written" in capsys.readouterr().out and snapshot(out) == first
    shutil.copy(images / "phantom_000.png", images / "phantom_001.png")  # another image, the same name
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "1 of 2 case(s) already written" in printed and "phantom_001" in printed.split("skipped")[1]
    again = snapshot(out)
    assert again[str(out / "phantom_000.png")] == first[str(out / "phantom_000.png")]
    assert again[str(out / "phantom_001.png")] != first[str(out / "phantom_001.png")]
    assert (out / "phantom_001.png").read_bytes() == (out / "phantom_000.png").read_bytes()  # the same image now


def test_files_under_an_older_marker_stay_fusionseg_s(tmp_path):
    from fusionseg.files import ResumableOutputs

    before = tmp_path / "before.png"
    before.write_bytes(b"there before fusionseg wrote here")
    os.utime(before, (1, 1))
    (tmp_path / ResumableOutputs.MARKER).write_text("a3f0" * 16 + "\n")  # the marker of an older fusionseg
    after = tmp_path / "after.png"
    after.write_bytes(b"a prediction")
    outputs = ResumableOutputs(tmp_path, "model")
    assert outputs.wrote(after) and not outputs.wrote(before) and not outputs.done(after)
    with pytest.raises(InputError, match=r"before\.png, which fusionseg did not write"):
        outputs.check_outputs([after, before], [])
    outputs.claim(tmp_path / "new.png")  # rewritten in today's format, the older files still fusionseg's
    assert ResumableOutputs(tmp_path, "model").wrote(after)


# --------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_crc_catches_flipped_bytes_torch_would_load(world, tmp_path):
    from fusionseg.nets.weights import zip_damage

    good = world["run"] / "best.pt"
    bad = Path(shutil.copy(good, tmp_path / "bad.pt"))
    _flip_bytes(bad)
    assert zip_damage(good) is None and "CRC-32" in zip_damage(bad)
    torch.load(bad, weights_only=True)  # torch itself does not notice: the reason for the check
    with pytest.raises(InputError, match=r"corrupt .*fails its CRC-32 check"):
        load_checkpoint(bad)
    assert load_checkpoint(good)["format"] == "fusionseg"


def test_resume_skips_a_corrupt_last_pt_for_best_pt(world, tmp_path, capsys):
    run = shutil.copytree(world["run"], tmp_path / "run")
    _flip_bytes(run / "last.pt")
    assert cli_main(_train(world, run, "--resume", "--epochs", "2")) == 0
    out = capsys.readouterr().out
    assert "skipping" in out and "CRC-32" in out and f"resuming from {run / 'best.pt'}" in out
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_resume_skips_a_last_pt_with_a_malformed_field(world, tmp_path, capsys):
    run = shutil.copytree(world["run"], tmp_path / "run")
    ckpt = load_checkpoint(run / "last.pt")
    ckpt["step"] = "many"
    save_checkpoint(run / "last.pt", ckpt)
    assert cli_main(_train(world, run, "--resume", "--epochs", "2")) == 0
    out = capsys.readouterr().out
    assert "skipping" in out and "step is 'many'" in out and f"resuming from {run / 'best.pt'}" in out


def test_weights_of_import_weights_resume_with_a_fresh_optimizer(world, tmp_path, capsys):
    ckpt = load_checkpoint(world["run"] / "best.pt")
    model = rebuild_model(ckpt)
    run = tmp_path / "imported"
    save_checkpoint(
        run / "best.pt",
        build_checkpoint(model, preprocessing=Preprocessing.from_dict(ckpt["preprocessing"]), rng=False),
    )
    assert load_checkpoint(run / "best.pt")["optimizer"] is None  # what import-weights writes
    assert cli_main(_train(world, run, "--resume")) == 0
    assert "no optimizer state" in capsys.readouterr().out
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and (run / "log.csv").is_file()


def test_resume_after_a_full_disk_at_best_pt_writes_the_log_and_curve(world, tmp_path):
    run = shutil.copytree(world["run"], tmp_path / "run")
    (run / "log.csv").unlink()
    (run / "learning_curve.png").unlink()  # what a full disk at best.pt leaves: last.pt only
    assert cli_main(_train(world, run, "--resume")) == 0
    assert len((run / "log.csv").read_text().splitlines()) == 2 and (run / "learning_curve.png").is_file()


def test_overwrite_replaces_a_run(world, tmp_path):
    run = shutil.copytree(world["run"], tmp_path / "run")
    old = snapshot(run / "best.pt")
    assert cli_main(_train(world, run, "--overwrite")) == 0
    assert snapshot(run / "best.pt") != old and load_checkpoint(run / "last.pt")["epoch"] == 1


# --------------------------------------------------------------------------------------------- export, cache
def test_bundle_re_export_keeps_files_the_user_added(world, tmp_path):
    bundle = tmp_path / "bundle"
    argv = ["export", "--checkpoint", str(world["run"] / "best.pt"), "--format", "bundle", "--output", str(bundle)]
    assert cli_main(argv) == 0
    (bundle / "notes.txt").write_text("my notes\n")
    (bundle / "docs" / "extra.md").write_text("mine\n")
    assert cli_main(argv) == 0
    assert (bundle / "notes.txt").read_text() == "my notes\n" and (bundle / "docs" / "extra.md").read_text() == "mine\n"
    assert (bundle / "configs" / "metadata.json").is_file() and not (bundle / ".fusionseg-lock").exists()


@pytest.mark.parametrize("entry", [None, "x", {"fp32_s": "fast"}, {"fp32_s": -1.0, "amp_s": 1.0}, {"amp_s": 1.0}])
def test_bad_precision_cache_entries_are_measured_again(tmp_path, monkeypatch, entry):
    from fusionseg.nets.registry import create_model
    from fusionseg.runtime import precision

    model = create_model("unet", spatial_dims=2, features=[4, 8])
    shape, device = (1, 1, 16, 16), torch.device("cpu")
    monkeypatch.setattr(precision, "resolve_amp", lambda *a: torch.bfloat16)
    path = tmp_path / "precision.json"
    key = precision._cache_key(model, shape, device, torch.bfloat16, "train")
    path.write_text(json.dumps({key: entry}))
    notes = []
    dtype = precision.choose_amp(model, shape, device, True, cache=path, log=notes.append,
                                 timer=lambda *a, **k: 1.0 if a[3] is None else 0.5)  # fmt: skip
    assert dtype == torch.bfloat16 and "malformed" in notes[0] and "measured now" in notes[1]
    assert json.loads(path.read_text())[key]["amp_s"] == 0.5


def test_memory_estimate_scales_with_batch_and_refuses_what_cannot_fit():
    from fusionseg.nets.registry import create_model
    from fusionseg.runtime.memory import check_fits, training_memory

    def build():
        return create_model("unet", spatial_dims=2, features=[4, 8])

    one, four = training_memory(build, (1, 1, 32, 32)), training_memory(build, (4, 1, 32, 32))
    assert one.weights == four.weights > 0 and four.activations == 4 * one.activations > 0
    check_fits(four, "cpu", "a tiny batch")  # fits
    with pytest.raises(InputError, match=r"needs about .* TiB"):
        check_fits(training_memory(build, (10_000_000, 1, 32, 32)), "cpu", "a huge batch")
