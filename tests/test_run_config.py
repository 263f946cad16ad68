"""``fusionseg train --config``: YAML/JSON run configs, command-line overrides, config.yaml round trip, bad keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from fusionseg.cli import main as cli
from fusionseg.cli.run_config import parse_with_config
from fusionseg.cli.train import build_parser, config_from_args
from fusionseg.errors import InputError

TINY = {"model": "unet", "fusion": "dff", "model-kwargs": {"features": [8, 16]}, "epochs": 1, "iters_per_epoch": 2,
        "batch-size": 2, "patch-size": [32, 32], "no-progress": True}  # fmt: skip


def _write(path, values):
    path.write_text(json.dumps(values) if path.suffix == ".json" else yaml.safe_dump(values))
    return path


def test_config_round_trip_repeats_the_run(tmp_path, tiny_phantom_2d, capsys):
    first = tmp_path / "first"
    run_yaml = _write(tmp_path / "run.yaml", {"data": str(tiny_phantom_2d), "output": str(first), **TINY})
    assert cli(["train", "--config", str(run_yaml)]) == 0
    written = yaml.safe_load((first / "config.yaml").read_text())
    assert written["iters-per-epoch"] == 2 and written["patch-size"] == [32, 32]
    assert written["model-kwargs"] == {"features": [8, 16]} and written["progress"] is False
    assert "resume" not in written and "stop-after" not in written
    second = tmp_path / "second"
    assert cli(["train", "--config", str(first / "config.yaml"), "--output", str(second)]) == 0
    again = yaml.safe_load((second / "config.yaml").read_text())
    assert {k: v for k, v in again.items() if k != "output"} == {k: v for k, v in written.items() if k != "output"}
    a = torch.load(first / "last.pt", weights_only=True)
    b = torch.load(second / "last.pt", weights_only=True)
    assert {k for k in a["train_args"] if a["train_args"][k] != b["train_args"][k]} == {"output"}
    assert a["model"] == b["model"] and a["model"]["kwargs"]["fusion"] == "dff"
    assert a["model"]["kwargs"]["features"] == [8, 16]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0)  # same seed, same run


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_command_line_overrides_the_file(tmp_path, suffix):
    path = _write(tmp_path / f"run{suffix}", {"data": str(tmp_path), **TINY, "augment": False, "lr": 0.05})
    args = parse_with_config(build_parser(), ["--config", str(path), "--epochs", "7", "--patch-size", "64,64"])
    assert (args.epochs, args.patch_size, args.iters_per_epoch, args.batch_size) == (7, (64, 64), 2, 2)
    assert (args.augment, args.lr, args.fusion, args.progress) == (False, 0.05, "dff", False)
    assert json.loads(args.model_kwargs) == {"features": [8, 16]}
    assert str(args.data) == str(tmp_path)  # --data came from the file: not required on the command line


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"iters-per-epok": 3}, "unknown key 'iters-per-epok'; did you mean 'iters-per-epoch'?"),
        ({"fusoin": "dff"}, "unknown key 'fusoin'; did you mean 'fusion'?"),
        ({"epochs": "many"}, "--epochs 'many'"),
        ({"optimizer": "adam"}, "--optimizer must be one of sgd, adamw"),
        ({"channels-last": "yes"}, "channels-last takes true or false"),
    ],
)
def test_bad_config_entries_are_one_line_errors(tmp_path, values, message):
    path = _write(tmp_path / "run.yaml", {"data": str(tmp_path), **values})
    with pytest.raises(InputError, match=message.replace("?", r"\?").replace("(", r"\(")) as err:
        parse_with_config(build_parser(), ["--config", str(path)])
    assert "\n" not in str(err.value)


def test_unreadable_config_files_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text("data: [unclosed\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, message in [("broken.yaml", "is not valid YAML"), ("list.json", "must hold a mapping"),
                          ("missing.yaml", "does not exist")]:  # fmt: skip
        assert cli(["train", "--config", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def test_run_config_travels_to_another_directory(tmp_path, monkeypatch):
    """config.yaml holds absolute paths; `--config RUN/config.yaml` from elsewhere finds the data."""
    (tmp_path / "start" / "data" / "ds").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "start")
    parser = build_parser()
    args = parse_with_config(parser, ["--data", "data/ds", "--output", "runs/x", "--init", "w.pt"])
    from fusionseg.cli.run_config import resolved_options
    from fusionseg.training.run_folder import write_run_config

    write_run_config(tmp_path / "config.yaml", resolved_options(parser, args))
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["data"] == str(tmp_path / "start" / "data" / "ds")
    assert written["output"] == str(tmp_path / "start" / "runs" / "x")
    assert written["init"] == str(tmp_path / "start" / "w.pt")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = parse_with_config(build_parser(), ["--config", str(tmp_path / "config.yaml")])
    assert again.data == tmp_path / "start" / "data" / "ds"
    config_from_args(again).check()  # was: --data data/ds is not a folder


def test_old_relative_run_config_resolves_against_where_the_run_started(tmp_path, monkeypatch):
    (tmp_path / "data" / "ds").mkdir(parents=True)
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    _write(run / "config.yaml", {"data": "data/ds", "output": "runs/x", "cache": "cache"})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    args = parse_with_config(build_parser(), ["--config", "../runs/x/config.yaml"])
    assert (args.data, args.output, args.cache) == (tmp_path / "data/ds", run, tmp_path / "cache")
    monkeypatch.chdir(tmp_path)  # from the original directory: the same folders as before
    args = parse_with_config(build_parser(), ["--config", "runs/x/config.yaml"])
    assert (args.data.resolve(), args.output.resolve()) == (tmp_path / "data/ds", run)


def test_hand_written_config_paths_resolve_against_its_folder(tmp_path, monkeypatch):
    (tmp_path / "exp" / "ds").mkdir(parents=True)
    path = _write(tmp_path / "exp" / "run.yaml", {"data": "ds"})
    monkeypatch.chdir(tmp_path)
    args = parse_with_config(build_parser(), ["--config", str(path), "--output", "out"])
    assert args.data == tmp_path / "exp" / "ds"
    assert args.output == Path("out")  # the command line keeps its meaning (the current directory)
