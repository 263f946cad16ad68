"""The ``fusionseg`` CLI end to end through subprocesses (``python -m fusionseg ...``) on tiny phantoms."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dataset_builders import OBLIQUE_3D, check_written_probabilities, nnunet_dataset
from fusionseg.cli import main as cli_main
from fusionseg.data import Preprocessing, make_phantom_dataset
from fusionseg.data.normalization import ChannelNormalisation

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
    assert sorted(p.name for p in pred.iterdir()) == [".fusionseg-outputs", "phantom_000.png", "phantom_001.png"]

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
        "--fusions",
        "concat,dff",
        "--num-seeds",
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
        (["ablate", "--data", ".", "--time-budget", "1", "--fusions", "concat,magic"], "--fusions: unknown"),
        (["ablate", "--data", "."], "--time-budget is required"),
        (["demo", "--threads", "zero"], "--threads"),
        (["train", "--data", "/nonexistent", "--fold", "x"], "--fold must be"),
        (["train", "--data", ".", "--cross-validate", "0,x"], "--cross-validate must be"),
        (["train", "--data", ".", "--fold", "0", "--num-folds", "1"], "--num-folds"),
        (
            ["predict", "--checkpoint", "a.pt", "--postprocess", "/nonexistent.json", "--input", ".", "--output", "/x"],
            "--postprocess",
        ),
        (["evaluate", "--pred", ".", "--gt", ".", "--dataset-json", "/nonexistent"], "--dataset-json"),
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
    "argv",
    [
        ["predict", "--model", "/nonexistent.pt", "--input", ".", "--output", "/tmp/x"],
        ["ablate", "--data", ".", "--budget", "1"],
        ["ablate", "--data", ".", "--time-budget", "1", "--fusion", "concat,dff"],
        ["ablate", "--data", ".", "--time-budget", "1", "--seeds", "2"],
        ["train", "--data", ".", "--folds", "all"],
        ["export", "--checkpoint", "a.pt", "--format", "onnx", "--output", "a.onnx", "--input-size", "32,32"],
        ["import-weights", "--model", "dnet", "--weights", "w.pt", "--output", "o.pt", "--non-strict"],
    ],
)
def test_renamed_options_have_no_old_spelling(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and "note:" not in err


def test_bench_names_take_hyphens(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "ds-transunet", "--help"])
    assert exit_info.value.code == 0
    assert "usage: fusionseg bench ds-transunet" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "ds_transunet", "--help"])
    assert exit_info.value.code == 2 and "invalid choice: 'ds_transunet'" in capsys.readouterr().err


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
    assert not list(tmp_path.glob(".*.tmp-*"))  # no temporary file of fusionseg.files.atomic_write


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


def _layout_dataset(root: Path, kind: str, num_cases: int = 3) -> tuple[Path, list[str]]:
    """An nnU-Net dataset of ``kind`` → (root, training --patch-size)."""
    rng = np.random.default_rng(0)
    cases = [f"case{i}" for i in range(num_cases)]
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
    from fusionseg.checkpoints.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "best.pt")
    return {
        "run": run,
        "pred": pred,
        "pre": Preprocessing.from_dict(ckpt["preprocessing"]),
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
    assert pre.activation == activation and pre.out_channels == result["out_channels"] == out_channels
    assert summary["labels"] == scored and summary["num_cases"] == 3 and summary["missing"] == []
    assert len(result["rows"]) == 3 * len(scored)
    assert all(0.0 <= float(r["dice"]) <= 1.0 and 0.0 <= float(r["nsd"]) <= 1.0 for r in result["rows"])
    if kind == "ignore":
        assert summary["ignore_label"] == 3 and pre.label_layout.ignore_label == 3
    if kind == "channels4":
        schemes = [c.scheme for c in pre.channel_normalisation]
        assert schemes == ["ct", "noNorm", "rescale_to_0_1", "zscore"]
    assert check_written_probabilities(result["pred"], pre) == 3
    out = capsys.readouterr().out
    assert ("| region |" if activation == "sigmoid" else "| class |") in out and "NSD (1 mm)" in out


def _npz(path: Path) -> np.ndarray:
    return np.load(path)["probabilities"]


def _png(path: Path) -> np.ndarray:
    from fusionseg.data import read_label

    return read_label(path)[0]


@pytest.mark.usefixtures("one_thread")
def test_cross_validation_ensemble_and_postprocessing(tmp_path, capsys):
    """train --cross-validate (2 folds) → fold runs on splits_final.json, mean ± std, postprocessing.json; predict with
    a run folder = the fold ensemble (mean probabilities) + its postprocessing; mismatched models are refused."""
    from fusionseg.inference.postprocess import apply_postprocessing

    root, patch = _layout_dataset(tmp_path / "Dataset_cv", "ignore", num_cases=4)
    run = tmp_path / "cv"
    argv = ["train", "--data", root, "--output", run, "--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "2"]
    tiny = ["--model-kwargs", '{"features": [4, 8]}', "--threads", "1", "--no-progress", *patch]
    assert cli_main([*map(str, argv), *tiny, "--cross-validate", "--num-folds", "2"]) == 0
    out = capsys.readouterr().out
    splits = json.loads((root / "splits_final.json").read_text())
    assert len(splits) == 2 and sorted(splits[0]["val"] + splits[1]["val"]) == [f"case{i}" for i in range(4)]
    fold_dice = []
    for k in (0, 1):
        fold = run / f"fold_{k}"
        assert json.loads((fold / "train_summary.json").read_text())["val_cases"] == splits[k]["val"]
        assert sorted(p.name for p in (fold / "validation").glob("*.png")) == [f"{c}.png" for c in splits[k]["val"]]
        fold_dice.append(json.loads((fold / "validation" / "summary.json").read_text())["mean"]["dice"])
    summary = json.loads((run / "crossval_summary.json").read_text())
    assert [f["dice"] for f in summary["folds"]] == pytest.approx(fold_dice) and summary["complete"]
    assert summary["dice_mean"] == pytest.approx(np.mean(fold_dice))
    assert summary["dice_std"] == pytest.approx(np.std(fold_dice))
    assert f"cross-validation Dice {np.mean(fold_dice):.4f} ± {np.std(fold_dice):.4f} over 2 fold(s)" in out
    chosen = json.loads((run / "postprocessing.json").read_text())
    assert set(chosen["dice_before"]) == {"c1", "c2"} and chosen["num_cases"] == 4
    # A plan that surely changes these fragmented predictions, to see that predict applies the run folder's file.
    plan = {"keep_largest_component": [{"name": "c1", "values": [1]}, {"name": "c2", "values": [2]}]}
    (run / "postprocessing.json").write_text(json.dumps(plan))

    def predict(name: str, *args) -> Path:
        out_dir = tmp_path / name
        argv = ["predict", "--input", root / "imagesTr", "--output", out_dir, "--probabilities", "--threads", "1"]
        assert cli_main([*map(str, argv), "--no-progress", *map(str, args)]) == 0
        return out_dir

    f0 = predict("f0", "--checkpoint", run / "fold_0" / "best.pt")
    f1 = predict("f1", "--checkpoint", run / "fold_1" / "best.pt")
    ens = predict("ens", "--checkpoint", run / "fold_0" / "best.pt", run / "fold_1" / "best.pt")
    folder = predict("folder", "--checkpoint", run)  # the run folder: ensemble + its postprocessing.json
    raw = predict("raw", "--checkpoint", run, "--no-postprocess")
    explicit = predict("explicit", "--checkpoint", run / "fold_0" / "best.pt", run / "fold_1" / "best.pt",
                       "--postprocess", run / "postprocessing.json")  # fmt: skip
    changed = 0
    for case in (f"case{i}" for i in range(4)):
        mean = (_npz(f0 / f"{case}_probabilities.npz") + _npz(f1 / f"{case}_probabilities.npz")) / 2
        np.testing.assert_allclose(_npz(ens / f"{case}_probabilities.npz"), mean, atol=1e-6)
        np.testing.assert_array_equal(
            _npz(folder / f"{case}_probabilities.npz"), _npz(ens / f"{case}_probabilities.npz")
        )
        np.testing.assert_array_equal(_png(raw / f"{case}.png"), _png(ens / f"{case}.png"))
        cleaned = apply_postprocessing(_png(ens / f"{case}.png"), plan)
        np.testing.assert_array_equal(_png(folder / f"{case}.png"), cleaned)
        np.testing.assert_array_equal(_png(explicit / f"{case}.png"), cleaned)
        changed += not np.array_equal(cleaned, _png(raw / f"{case}.png"))
    assert changed > 0
    # Another invocation for fold 1 only: resumes the finished fold (no new epoch) and summarises both folders.
    log_before = (run / "fold_1" / "log.csv").read_text()
    capsys.readouterr()
    assert cli_main([*map(str, argv), *tiny, "--cross-validate", "1", "--resume"]) == 0
    assert "over 2 fold(s)" in capsys.readouterr().out and (run / "fold_1" / "log.csv").read_text() == log_before
    assert cli_main([*map(str, argv), *tiny, "--cross-validate", "0,9", "--resume"]) == 2
    assert "fold(s) [9] do not exist" in capsys.readouterr().err
    assert cli_main([*map(str, argv), *tiny, "--cross-validate", "0"]) == 2  # fold 0 is trained: not replaced
    assert "already holds a run (fold_0/last.pt, finished)" in capsys.readouterr().err

    from fusionseg.checkpoints.checkpoint import build_checkpoint, load_checkpoint, rebuild_model, save_checkpoint

    ckpt = load_checkpoint(run / "fold_1" / "best.pt")
    pre = replace(
        Preprocessing.from_dict(ckpt["preprocessing"]), channel_normalisation=(ChannelNormalisation("noNorm"),)
    )
    other = save_checkpoint(tmp_path / "other.pt", build_checkpoint(rebuild_model(ckpt), preprocessing=pre, rng=False))
    capsys.readouterr()
    argv = ["predict", "--checkpoint", run / "fold_0" / "best.pt", other, "--input", root, "--output", tmp_path / "x"]
    assert cli_main([*map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert "preprocessing differs" in err and "channel_normalisation" in err and len(err.strip().splitlines()) == 1
