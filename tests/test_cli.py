"""The ``fusionseg`` CLI end to end through subprocesses (``python -m fusionseg ...``) on tiny phantoms."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataset_builders import OBLIQUE_3D, nnunet_dataset
from fusionseg.cli import main as cli_main
from fusionseg.data import make_phantom_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model-kwargs", '{"features": [4, 8]}', "--patch-size", "32,32", "--threads", "1", "--no-progress"]


def fusionseg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fusionseg", *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=timeout
    )


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return make_phantom_dataset(
        tmp_path_factory.mktemp("cli") / "ph", spatial_dims=2, num_train=4, num_test=2, size=(32, 32)
    )


def test_train_predict_evaluate(phantoms, tmp_path):
    run, pred, ev = tmp_path / "run", tmp_path / "pred", tmp_path / "eval"
    proc = fusionseg(
        "train",
        "--data",
        phantoms,
        "--output",
        run,
        "--fusion",
        "dff",
        "--epochs",
        "2",
        "--iters-per-epoch",
        "2",
        "--batch-size",
        "2",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr
    assert "best checkpoint" in proc.stdout
    assert {"best.pt", "last.pt", "log.csv", "learning_curve.png", "train_summary.json"} <= {
        p.name for p in run.iterdir()
    }
    assert len((run / "log.csv").read_text().splitlines()) == 3

    proc = fusionseg(
        "predict",
        "--checkpoint",
        run / "best.pt",
        "--input",
        phantoms / "test" / "images",
        "--output",
        pred,
        "--threads",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in pred.iterdir()) == ["phantom_000.png", "phantom_001.png"]

    proc = fusionseg(
        "evaluate",
        "--pred",
        pred,
        "--gt",
        phantoms / "test" / "masks",
        "--images",
        phantoms / "test" / "images",
        "--output",
        ev,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| class | Dice |" in proc.stdout
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["num_cases"] == 2 and summary["labels"] == [1, 2]
    assert 0.0 <= summary["mean"]["dice"] <= 1.0
    assert len(list((ev / "overlays").glob("*.png"))) == 2
    rows = list(csv.DictReader((ev / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 4 and {r["case"] for r in rows} == {"phantom_000", "phantom_001"}


def test_ablate(phantoms, tmp_path):
    proc = fusionseg(
        "ablate",
        "--data",
        phantoms,
        "--output",
        tmp_path,
        "--fusion",
        "concat,dff",
        "--seeds",
        "2",
        "--time-budget",
        "0.5",
        "--batch-size",
        "2",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "ablation.csv").read_text().splitlines()))
    assert [r["fusion"] for r in rows] == ["concat", "dff"] and all(r["seeds"] == "2" for r in rows)
    assert float(rows[0]["diff_vs_ref"]) == 0.0
    cases = list(csv.DictReader((tmp_path / "ablation_cases.csv").read_text().splitlines()))
    assert len(cases) == 2 * 2 * 2  # fusions × seeds × test cases
    table = (tmp_path / "ablation.md").read_text()
    assert "| dff |" in table and "p (Wilcoxon)" in table
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "concat_seed0",
        "concat_seed1",
        "dff_seed0",
        "dff_seed1",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "/nonexistent/folder"], "not a folder"),
        (["predict", "--checkpoint", "/nonexistent.pt", "--input", ".", "--output", "/tmp/x"], "does not exist"),
        (["predict", "--input", ".", "--output", "/tmp/x"], "--checkpoint is required"),
        (["evaluate", "--pred", "/nonexistent", "--gt", "/nonexistent"], "not a folder"),
        (["ablate", "--data", ".", "--time-budget", "1", "--fusion", "concat,magic"], "unknown"),
        (["ablate", "--data", "."], "--time-budget is required"),
        (["demo", "--threads", "zero"], "--threads"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fusionseg {argv[0]}: error:") and message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "demo", "ablate", "export", "import-weights"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: fusionseg {command}" in out and "``" not in out


def test_ablate_help_shows_its_own_defaults(capsys):
    with pytest.raises(SystemExit):
        cli_main(["ablate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default 1000)" in out and "(default runs/ablate)" in out and "--no-progress" in out


@pytest.mark.parametrize(
    ("argv", "old", "new"),
    [
        (["predict", "--model", "/nonexistent.pt", "--input", ".", "--output", "/tmp/x"], "--model", "--checkpoint"),
        (["ablate", "--data", ".", "--budget", "1", "--fusions", "concat,magic"], "--fusions", "--fusion"),
    ],
)
def test_old_option_names_still_work_with_a_note(argv, old, new, capsys):
    assert cli_main(argv) == 2  # parsed into the new option, then the usual one-line error
    err = capsys.readouterr().err
    assert f"note: {old} is now {new}" in err and "error:" in err and "Traceback" not in err


def test_bench_names_take_hyphens_and_underscores(capsys):
    for name in ("ds-transunet", "ds_transunet"):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["bench", name, "--help"])
        assert exit_info.value.code == 0
    assert "usage: fusionseg bench ds-transunet" in capsys.readouterr().out


@pytest.mark.slow
def test_train_under_torchrun_two_processes(phantoms, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            "-m",
            "fusionseg",
            "train",
            "--data",
            str(phantoms),
            "--output",
            str(tmp_path),
            "--epochs",
            "2",
            "--iters-per-epoch",
            "2",
            *TINY,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("best checkpoint") == 1 and "2 processes" in proc.stdout  # only rank 0 talks
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 3
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------ nnU-Net dataset layouts, end to end


def _blocks(shape: tuple[int, ...], values: list[int], seed: int) -> np.ndarray:
    """A label map tiled with blocks of ``values`` (every value present), shifted per case."""
    per_axis = int(np.ceil(len(values) ** (1 / len(shape)) - 1e-9))
    cell = sum((g // (n // per_axis)) * per_axis**i for i, (g, n) in enumerate(zip(np.indices(shape), shape)))
    label = np.asarray(values, dtype=np.uint8)[(cell + seed) % len(values)]
    assert sorted(np.unique(label)) == sorted(values)
    return label


def _nested(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Label 1 (a box) holding label 2 (a smaller box): BraTS-like nesting for region labels."""
    label = np.zeros(shape, np.uint8)
    label[tuple(slice(2 + seed % 2, s - 2) for s in shape)] = 1
    label[tuple(slice(4, s - 4) for s in shape)] = 2
    return label


def _layout_dataset(root: Path, kind: str) -> tuple[Path, list[str]]:
    """A 3-case nnU-Net dataset of ``kind`` → (root, training --patch-size)."""
    rng = np.random.default_rng(0)
    cases = [f"case{i}" for i in range(3)]
    images, labels = {}, {}
    if kind == "regions":
        shape, ext, affine, patch = (16, 14, 12), ".nii.gz", OBLIQUE_3D, ["14,16,12"]
        entries = {
            "channel_names": {"0": "T2"},
            "labels": {"background": 0, "whole": [1, 2], "core": 2},
            "regions_class_order": [1, 2],
        }
        for i, c in enumerate(cases):
            labels[c] = _nested(shape, i)
            images[c] = [(labels[c] * 0.4 + rng.normal(0, 0.1, shape)).astype(np.float32)]
    elif kind in ("ignore", "classes120", "rgb"):
        shape, ext, affine, patch = (24, 24), ".png", None, ["24,24"]
        values = {"ignore": [0, 1, 2, 3], "classes120": list(range(120)), "rgb": [0, 1]}[kind]
        if kind == "classes120":
            shape, patch = (48, 48), ["48,48"]
        names = {"background": 0, **{f"c{k}": k for k in values[1:]}}
        entries = {"channel_names": {"0": "grey"}, "labels": names}
        if kind == "ignore":
            names.pop("c3")
            names["ignore"] = 3
        if kind == "rgb":
            entries["channel_names"] = {"0": "R", "1": "G", "2": "B"}
        for i, c in enumerate(cases):
            labels[c] = _blocks(shape, values, i)
            grey = labels[c] * (200 // max(values)) + rng.integers(0, 20, shape)
            if kind == "rgb":
                rgb = np.stack([grey, 255 - grey, rng.integers(0, 255, shape)]).astype(np.uint8)
                images[c] = [(rgb, True)]
            else:
                images[c] = [grey.astype(np.uint8)]
    else:  # 3D volumes: MHA, NRRD, 4 channels with mixed normalisation
        shape, patch = (12, 12, 10), ["12,12,10"]
        ext, affine = {"mha": (".mha", OBLIQUE_3D), "nrrd": (".nrrd", None), "channels4": (".nii.gz", None)}[kind]
        channel_names = {"mha": {"0": "CT"}, "nrrd": {"0": "MRI"}}.get(
            kind, {"0": "CT", "1": "noNorm", "2": "rescale_to_0_1", "3": "zscore"}
        )
        entries = {"channel_names": channel_names, "labels": {"background": 0, "organ": 1, "tumour": 2}}
        for i, c in enumerate(cases):
            labels[c] = _blocks(shape, [0, 1, 2], i)
            base = labels[c] * 50.0 + rng.normal(0, 10, shape)
            images[c] = [(base * (k + 1) - 100 * k).astype(np.float32) for k in range(len(channel_names))]
    nnunet_dataset(root, images, labels, ext, affine, **entries)
    return root, ["--patch-size", *patch]


def _check_probabilities(pred_dir: Path, pre: dict) -> int:
    """Read every written probability file back: sums to 1 (softmax) or lies in [0, 1] (sigmoid), and its
    argmax / region painting is exactly the written label map. Returns how many were checked."""
    from fusionseg.data import LabelLayout, read_image, read_label

    layout = LabelLayout.from_preprocessing(pre)
    checked = 0
    for prob_path in sorted(pred_dir.glob("*_probabilities.*")):
        cid = prob_path.name.split("_probabilities")[0]
        label_path = next(p for p in pred_dir.iterdir() if p.name.split(".")[0] == cid)
        probs, _ = read_image(prob_path)
        label, _ = read_label(label_path)
        assert probs.dtype == np.float32 and probs.shape == (layout.out_channels, *label.shape)
        if layout.activation == "softmax":
            np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
        assert probs.min() >= 0.0 and probs.max() <= 1.0
        np.testing.assert_array_equal(layout.to_label_map(probs), label)
        checked += 1
    return checked


def _train_predict_evaluate(root: Path, work: Path, train_args: list[str], probabilities: bool = True) -> dict:
    """``fusionseg train`` (1 epoch × 2 iterations) → ``predict`` imagesTr → ``evaluate`` with --dataset-json."""
    run, pred, ev = work / "run", work / "pred", work / "eval"
    quiet = ["--threads", "1", "--no-progress"]
    argv = ["train", "--data", root, "--output", run, "--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "2"]
    assert cli_main([*map(str, argv), "--model-kwargs", '{"features": [4, 8]}', *quiet, *train_args]) == 0
    argv = ["predict", "--checkpoint", run / "best.pt", "--input", root / "imagesTr", "--output", pred, *quiet]
    assert cli_main([*map(str, argv), *(["--probabilities"] if probabilities else [])]) == 0
    argv = ["evaluate", "--pred", pred, "--gt", root / "labelsTr", "--dataset-json", root, "--output", ev]
    assert cli_main([*map(str, argv), "--num-overlays", "0"]) == 0
    from fusionseg.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "best.pt")
    return {
        "run": run,
        "pred": pred,
        "pre": ckpt["preprocessing"],
        "out_channels": ckpt["model"]["kwargs"]["out_channels"],
        "summary": json.loads((ev / "summary.json").read_text()),
        "rows": list(csv.DictReader((ev / "metrics.csv").read_text().splitlines())),
    }


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("kind", "activation", "out_channels", "scored", "extra"),
    [
        ("regions", "sigmoid", 2, ["whole", "core"], ["--deep-supervision"]),
        ("ignore", "softmax", 3, [1, 2], []),
        ("rgb", "softmax", 2, [1], []),
        ("mha", "softmax", 3, [1, 2], []),
        ("nrrd", "softmax", 3, [1, 2], []),
        ("channels4", "softmax", 3, [1, 2], []),
        ("classes120", "softmax", 120, list(range(1, 120)), []),
    ],
)
def test_nnunet_layouts_train_predict_evaluate(kind, activation, out_channels, scored, extra, tmp_path, capsys):
    root, patch = _layout_dataset(tmp_path / f"Dataset_{kind}", kind)
    result = _train_predict_evaluate(root, tmp_path, [*patch, *extra])
    pre, summary = result["pre"], result["summary"]
    assert pre["activation"] == activation and pre["out_channels"] == result["out_channels"] == out_channels
    assert summary["labels"] == scored and summary["num_cases"] == 3 and summary["missing"] == []
    assert len(result["rows"]) == 3 * len(scored)
    assert all(0.0 <= float(r["dice"]) <= 1.0 and 0.0 <= float(r["nsd"]) <= 1.0 for r in result["rows"])
    if kind == "ignore":
        assert summary["ignore_label"] == 3 and pre["ignore_label"] == 3
    if kind == "channels4":
        schemes = [c["scheme"] for c in pre["channel_normalisation"]]
        assert schemes == ["ct", "noNorm", "rescale_to_0_1", "zscore"]
    assert _check_probabilities(result["pred"], pre) == 3
    out = capsys.readouterr().out
    assert ("| region |" if activation == "sigmoid" else "| class |") in out and "NSD (1 mm)" in out
