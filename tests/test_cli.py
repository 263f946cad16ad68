"""The ``fusionseg`` CLI end to end through subprocesses (``python -m fusionseg ...``) on tiny phantoms."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
