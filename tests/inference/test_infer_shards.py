"""Several processes predict one folder together (``--shard I/N``, torchrun's RANK/WORLD_SIZE): each case once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fusionseg.checkpoints.checkpoint import build_checkpoint, save_checkpoint
from fusionseg.cli import predict as predict_cli
from fusionseg.data import build_preprocessing, make_phantom_dataset, scan_dataset
from fusionseg.errors import InputError
from fusionseg.inference.sharding import choose_shard, parse_shard, shard_from_env, take_shard
from fusionseg.nets.registry import create_model

REPO = Path(__file__).resolve().parents[2]


def test_shards_are_disjoint_and_cover_the_cases():
    cases = [f"c{i}" for i in range(7)]
    shards = [take_shard(cases, (i, 3)) for i in range(3)]
    assert sorted(c for shard in shards for c in shard) == cases and shards[0] == ["c0", "c3", "c6"]
    assert take_shard(cases, None) == cases
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b", "-1/2", "1/0"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


def test_torchrun_rank_picks_the_shard_unless_shard_is_given():
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert shard_from_env({"WORLD_SIZE": "1"}) is None and shard_from_env({}) is None
    assert choose_shard("0/4", {"RANK": "1", "WORLD_SIZE": "2"}) == (0, 4)
    with pytest.raises(InputError, match="RANK 3"):
        shard_from_env({"RANK": "3", "WORLD_SIZE": "2"})


def _predict(ckpt: Path, source: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "fusionseg", "predict", "--checkpoint", str(ckpt), "--input", str(source)]
    argv += ["--output", str(out), "--threads", "1", *extra]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, **(env or {})}
    )


def _finish(proc: subprocess.Popen) -> tuple[str, list[str]]:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return stdout, re.findall(r"^\[\d+/\d+\] (\S+) →", stdout, re.MULTILINE)


def test_two_processes_predict_each_case_once_like_one(tmp_path, capsys):
    """Shard 0/2 (``--shard``) and rank 1 of 2 (torchrun's environment) run at once into one folder."""
    root = make_phantom_dataset(tmp_path / "ph", spatial_dims=2, num_train=5, num_test=0, size=(32, 32))
    pre = build_preprocessing(scan_dataset(root), patch_size=(16, 16))
    model = create_model("unet", in_channels=1, out_channels=3, spatial_dims=2, features=(4, 8))
    ckpt = save_checkpoint(tmp_path / "ck.pt", build_checkpoint(model, preprocessing=pre, rng=False))
    source, shared = root / "images", tmp_path / "shared"
    names = sorted(p.stem for p in source.iterdir())

    procs = [
        _predict(ckpt, source, shared, "--shard", "0/2"),
        _predict(ckpt, source, shared, env={"RANK": "1", "WORLD_SIZE": "2"}),
    ]
    (_, done0), (out1, done1) = (_finish(p) for p in procs)
    assert sorted(done0 + done1) == names and not set(done0) & set(done1)  # every case once
    assert "shard 1/2: 2 of 5 case(s)" in out1
    single = ["--checkpoint", str(ckpt), "--input", str(source), "--threads", "1"]
    assert predict_cli.main([*single, "--output", str(tmp_path / "single")]) == 0
    for name in names:
        assert (shared / f"{name}.png").read_bytes() == (tmp_path / "single" / f"{name}.png").read_bytes()

    # a killed process left two cases undone: a rerun of the whole cohort does just those
    for name in (names[1], names[3]):
        (shared / f"{name}.png").unlink()
    capsys.readouterr()
    assert predict_cli.main([*single, "--output", str(shared)]) == 0
    out = capsys.readouterr().out
    assert "3 of 5 case(s) already written" in out
    assert sorted(re.findall(r"^\[\d+/\d+\] (\S+) →", out, re.MULTILINE)) == [names[1], names[3]]
