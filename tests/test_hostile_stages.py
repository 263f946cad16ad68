"""A hostile user against the engine side of the CLI (train, ablate, export, ...): each mistake is one line.

One table (``HOSTILE``) of options out of range or disagreeing with the data, each run through
``fusionseg.cli.main`` in this process against a tiny dataset and run; every case asserts exit status 2,
exactly one line on stderr (no traceback, no argparse usage) naming the problem, and that no file of the
dataset or the run changed and nothing was written into the dataset folder.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from careless import SHORT, TINY, snapshot
from fusionseg.cli import main as cli_main
from fusionseg.cli.options import positive_float
from fusionseg.cli.plan import _spacing
from fusionseg.data import make_phantom_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A 2D phantom dataset, a finished tiny run and a copy of the test labels as predictions."""
    root = tmp_path_factory.mktemp("hostile")
    data = make_phantom_dataset(root / "data", spatial_dims=2, num_train=4, num_test=2, size=(32, 32))
    run = root / "run"
    assert cli_main(["train", "--data", str(data), "--output", str(run), *SHORT, *TINY]) == 0
    gt, pred = data / "test" / "masks", root / "pred"
    shutil.copytree(gt, pred)
    return {"root": root, "data": data, "run": run, "gt": gt, "pred": pred}


def _train(w: dict, output, *extra: str) -> list[str]:
    return ["train", "--data", str(w["data"]), "--output", str(output), *SHORT, *TINY, *extra]


def _kwargs(text: str) -> tuple[str, str]:
    return ("--model-kwargs", text)


# (id, argv from (world, tmp_path), words the one line must hold)
HOSTILE: list[tuple[str, Callable[[dict, Path], list[str]], str]] = [
    ("train-a-million-threads", lambda w, t: _train(w, t / "r", "--threads", "1000000"), "per core"),
    ("train-a-million-workers", lambda w, t: _train(w, t / "r", "--workers", "1000000"), "per core"),
    ("train-seed-beyond-64-bits", lambda w, t: _train(w, t / "r", "--seed", "99999999999999999999"), "--seed must"),
    ("train-huge-lr", lambda w, t: _train(w, t / "r", "--lr", "1e300"), "--lr must be ≤"),
    ("train-huge-weight-decay", lambda w, t: _train(w, t / "r", "--weight-decay", "1e300"), "--weight-decay must be ≤"),
    ("train-patch-of-one-voxel", lambda w, t: _train(w, t / "r", "--patch-size", "1,1"), "is too small for unet"),
    ("train-deeper-than-the-patch",
     lambda w, t: _train(w, t / "r", *_kwargs('{"features": [4, 8, 16, 32, 64, 128, 256, 512, 1024]}')),
     "too small for unet"),
    ("train-out-channels-not-the-data",
     lambda w, t: _train(w, t / "r", *_kwargs('{"features": [4, 8], "out_channels": 1}')), "out_channels=1 does not"),
    ("train-spatial-dims-not-the-data",
     lambda w, t: _train(w, t / "r", *_kwargs('{"features": [4, 8], "spatial_dims": 3}')), "spatial_dims=3 does not"),
    ("train-output-is-the-data", lambda w, t: _train(w, w["data"]), "dataset's own files"),
    ("train-output-inside-the-data", lambda w, t: _train(w, w["data"] / "images" / "run"), "dataset's own files"),
    ("train-cache-in-the-masks", lambda w, t: _train(w, t / "r", "--cache", str(w["data"] / "masks" / "c")), "--cache"),
    ("ablate-output-inside-the-data",
     lambda w, t: ["ablate", "--data", str(w["data"]), "--output", str(w["data"] / "images" / "a"),
                   "--time-budget", "1", "--fusions", "concat", *TINY], "dataset's own files"),
    ("ablate-a-fusion-twice",
     lambda w, t: ["ablate", "--data", str(w["data"]), "--output", str(t / "a"), "--time-budget", "1",
                   "--fusions", "concat,dff,concat", *TINY], "concat more than once"),
    ("ablate-a-hundred-million-seeds",
     lambda w, t: ["ablate", "--data", str(w["data"]), "--output", str(t / "a"), "--time-budget", "1",
                   "--fusions", "concat", "--num-seeds", "100000000", *TINY], "--num-seeds 100000000"),
    ("export-over-the-run-s-last-pt", lambda w, t: _export(w, w["run"] / "last.pt"), "is not a torchscript export"),
    ("export-over-dataset-json", lambda w, t: _export(w, w["data"] / "dataset.json"), "is not a torchscript export"),
    ("export-onnx-over-a-checkpoint",
     lambda w, t: _export(w, w["run"] / "last.pt", "--format", "onnx"), "is not a onnx export"),
    ("export-opset-out-of-range",
     lambda w, t: _export(w, t / "m.onnx", "--format", "onnx", "--opset", "999"), "--opset must be between 7"),
    ("import-weights-over-the-run-s-last-pt", lambda w, t: _import(w, w["run"] / "last.pt"), "not written by import"),
    ("import-weights-over-dataset-json", lambda w, t: _import(w, w["data"] / "dataset.json"), "not written by import"),
    ("import-weights-nothing-fits",
     lambda w, t: ["import-weights", "--model", "dnet", "--no-strict", "--weights", str(w["run"] / "best.pt"),
                   "--output", str(t / "x.pt")], "no tensor of"),
    ("evaluate-pred-is-gt",
     lambda w, t: ["evaluate", "--pred", str(w["gt"]), "--gt", str(w["gt"]), "--output", str(t / "e")], "is --gt"),
    ("evaluate-into-the-gt",
     lambda w, t: ["evaluate", "--pred", str(w["pred"]), "--gt", str(w["gt"]), "--output", str(w["gt"] / "e")],
     "lies inside --gt"),
    ("evaluate-negative-label",
     lambda w, t: ["evaluate", "--pred", str(w["pred"]), "--gt", str(w["gt"]), "--labels", "-1",
                   "--output", str(t / "e")], "--labels are foreground values"),
    ("evaluate-huge-label",
     lambda w, t: ["evaluate", "--pred", str(w["pred"]), "--gt", str(w["gt"]), "--labels", "99999999999",
                   "--output", str(t / "e")], "--labels are foreground values"),
    ("demo-into-the-dataset",
     lambda w, t: ["demo", "--quick", "--phantoms", "--output", str(w["data"]), "--threads", "1"],
     "files the demo did not write"),
    ("train-init-of-another-size",
     lambda w, t: _train(w, t / "r", "--init", str(w["run"] / "best.pt"), *_kwargs('{"features": [8, 16]}')),
     "tensors of unet"),
    ("train-config-output-a-list",
     lambda w, t: ["train", "--config", str(_write(t / "c.yaml", f"data: {w['data']}\noutput: [a, b]\n"))],
     "output takes one path"),
    ("train-splits-without-a-fold",
     lambda w, t: _train(w, t / "r", "--splits", str(t / "splits_final.json")), "--fold or --cross-validate"),
]  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _export(w: dict, output: Path, *extra: str) -> list[str]:
    argv = ["export", "--checkpoint", str(w["run"] / "best.pt"), "--format", "torchscript", "--output", str(output)]
    return argv + list(extra)


def _import(w: dict, output: Path) -> list[str]:
    model = ["--model", "unet", "--spatial-dims", "2", "--in-channels", "1", "--out-channels", "3"]
    weights = ["--model-kwargs", '{"features": [4, 8]}', "--weights", str(w["run"] / "best.pt")]
    return ["import-weights", *model, *weights, "--output", str(output)]


@pytest.mark.parametrize(("make_argv", "expected"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_each_hostile_input_is_one_line_and_harms_nothing(world, tmp_path, capsys, make_argv, expected):
    argv = make_argv(world, tmp_path)
    before = snapshot(world["data"], world["run"])
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"fusionseg {argv[0]}: error: ") and expected in err, err
    assert snapshot(world["data"], world["run"]) == before


@pytest.mark.parametrize("text", ["inf", "1e999", "nan", "0", "-1"])
def test_positive_numbers_are_finite(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a positive number"):
        positive_float(text)
    assert positive_float("1e300") == 1e300


@pytest.mark.parametrize("text", ["nan,1", "inf,1", "0,1", "-1,1"])
def test_target_spacing_is_finite_and_positive(text):
    with pytest.raises(argparse.ArgumentTypeError, match="spacings in mm > 0"):
        _spacing(text)
    assert _spacing("0.5,0.5") == (0.5, 0.5) and _spacing("Median") == "median"


def test_export_and_import_weights_replace_their_own_outputs(world, tmp_path):
    exported = tmp_path / "m.ts"
    assert cli_main(_export(world, exported)) == 0
    assert cli_main(_export(world, exported)) == 0  # an earlier export is replaced
    imported = tmp_path / "x.pt"
    assert cli_main(_import(world, imported)) == 0
    first = imported.stat().st_mtime_ns
    assert cli_main(_import(world, imported)) == 0 and imported.stat().st_mtime_ns >= first


def test_fault_points_are_the_ones_in_the_sources():
    import re

    from fusionseg.faults import FAULT_POINTS

    sources = (Path(__file__).resolve().parents[1] / "src" / "fusionseg").rglob("*.py")
    called = {m for path in sources for m in re.findall(r"maybe_fail\(\"([\w.]+)\"\)", path.read_text("utf-8"))}
    assert called == set(FAULT_POINTS)


def test_a_fault_variable_naming_no_point_is_one_line():
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "FUSIONSEG_FAULT": "train.stpe:2", "PYTHONPATH": src}
    proc = subprocess.run([sys.executable, "-m", "fusionseg", "train", "--data", "."], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "names no fault point" in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "", "--output", "x"],
        ["train", "--data", "d", "--cache", ""],
        ["predict", "--checkpoint", "x.pt", "--input", "in", "--output", ""],
        ["evaluate", "--pred", "", "--gt", "g"],
        ["export", "--checkpoint", "x.pt", "--output", ""],
        ["import-weights", "--weights", "", "--output", "x.pt", "--model", "unet"],
        ["relabel", "--data", "", "--output", "new"],
        ["demo", "--output", ""],
    ],
    ids=lambda argv: f"{argv[0]}-{argv[argv.index('') - 1]}",
)
def test_an_empty_path_is_refused_not_taken_for_the_working_folder(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli_main(argv)
    assert exit_.value.code == 2 and "expected a path, got an empty string" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
