"""Real-data benchmark: the peer model, model specs, options, statistics, and a smoke run on the shipped data.

The smoke run trains every model for ~1 s on both real datasets with tiny widths. The dataset builders
are tested in tests/data/test_real_data.py.
"""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest
import torch

from fusionseg.bench import real_data, real_data_stats
from fusionseg.checkpoints.checkpoint import load_checkpoint
from fusionseg.data.real import AAL_GROUPS
from fusionseg.errors import InputError


def test_peer_follows_model_contract():
    from fusionseg.nets.registry import create_model

    net = create_model("monai_basicunet", in_channels=1, out_channels=3, spatial_dims=3, features=[4, 4, 8, 8, 16, 4])
    assert net.size_multiple == 16 and net.config["name"] == "monai_basicunet"
    rebuilt = create_model(net.config["name"], **net.config["kwargs"])
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 32, 32, 32)  # instance norm needs > 1 voxel at the bottleneck (32 / 16 = 2)
    torch.testing.assert_close(rebuilt(x), net(x))
    assert net(x).shape == (1, 3, 32, 32, 32)
    with pytest.raises(ValueError, match="6 features"):
        create_model("monai_basicunet", features=[8, 16])
    with pytest.raises(ValueError, match="deep supervision"):
        create_model("monai_basicunet", deep_supervision=True)


def test_model_specs():
    spec = real_data.parse_model_spec("unet+dff", [8, 16])
    assert (spec.model, spec.fusion, spec.kwargs) == ("unet", "dff", {"features": [8, 16]})
    assert real_data.parse_model_spec("basicunet", [8, 16]).kwargs == {"features": [8, 16, 8]}
    with pytest.raises(InputError, match="unknown fusion"):
        real_data.parse_model_spec("unet+nope", [8, 16])
    with pytest.raises(InputError, match="unknown model"):
        real_data.parse_model_spec("nope", [8, 16])


def _smoke(out, dataset: str, seeds: int) -> list[dict]:
    argv = ["--output", str(out), "--datasets", dataset, "--num-seeds", str(seeds)]
    argv += ["--time-budget", "0.5", "--features", "4,8,8,16,16", "--patch-size", "nuclei2d=64,64"]
    argv += ["brain3d=32,32,32", "--batch-size", "brain3d=1", "--model", "basicunet,basicunet+dff", "--threads", "1"]
    assert real_data.main([*argv, "--overlap", "0"]) == 0
    with open(out / "real_data_runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert {(r["dataset"], r["model"], int(r["seed"])) for r in runs} == {
        (dataset, m, s) for m in ("basicunet", "basicunet+dff") for s in range(seeds)
    }
    assert all(0.0 <= float(r["dice"]) <= 1.0 and int(r["iterations"]) >= 1 for r in runs)
    return runs


def test_smoke_run_nuclei2d_two_seeds(tmp_path):
    runs = _smoke(tmp_path, "nuclei2d", seeds=2)
    with open(tmp_path / "real_data.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["basicunet", "basicunet+dff"] and all(int(r["seeds"]) == 2 for r in rows)
    for row in rows:
        seeds = [float(r["dice"]) for r in runs if r["model"] == row["model"]]
        assert math.isclose(float(row["dice_mean"]), np.mean(seeds), rel_tol=1e-9)
        assert math.isclose(float(row["dice_std"]), np.std(seeds, ddof=1), rel_tol=1e-6, abs_tol=1e-12)
    peer, dff = (float(r["dice_mean"]) for r in rows)
    assert math.isclose(float(rows[1]["diff_vs_peer"]), dff - peer, abs_tol=1e-12)
    assert load_checkpoint(tmp_path / "runs" / "nuclei2d" / "basicunet_seed1" / "best.pt")["train_args"]["augment"]
    table = (tmp_path / "real_data.md").read_text()
    assert "| nuclei2d | basicunet (peer) |" in table and "measured elsewhere: BasicUNet 0.927" in table
    # the controlled comparison: basicunet+dff paired with basicunet, seed by seed
    by = {(r["model"], int(r["seed"])): float(r["dice"]) for r in runs}
    diffs = [by[("basicunet+dff", k)] - by[("basicunet", k)] for k in (0, 1)]
    assert f"| nuclei2d | basicunet+dff | basicunet | {diffs[0]:+.4f} | {diffs[1]:+.4f} |" in table


def test_smoke_run_brain3d(tmp_path):
    runs = _smoke(tmp_path, "brain3d", seeds=1)
    for r in runs:  # the score is the mean of the 7 merged classes
        per_class = [float(r[f"dice_{name}"]) for name, _ in AAL_GROUPS]
        assert math.isclose(float(r["dice"]), np.mean(per_class), rel_tol=1e-9)
    args = load_checkpoint(tmp_path / "runs" / "brain3d" / "basicunet_dff_seed0" / "best.pt")["train_args"]
    assert args["augment"] is False and args["target_spacing"] == [2.0, 2.0, 2.0]  # 3D default: no flips, 2 mm
    table = (tmp_path / "real_data.md").read_text()
    assert "Per-class Dice on brain3d" in table
    copy = re.search(r"copied onto the test hemisphere \(no learning\) scores (\d\.\d{4})", table)
    assert copy is not None and 0.75 < float(copy.group(1)) < 0.95  # atlas symmetry at 2 mm


def test_bad_arguments_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="--datasets"):
        real_data.main(["--datasets", "mnist", "--output", str(tmp_path)])
    with pytest.raises(SystemExit):  # argparse: "--seeds: expected a positive integer"
        real_data.main(["--num-seeds", "0", "--output", str(tmp_path)])
    with pytest.raises(InputError, match="real data folder missing"):
        real_data.main(["--data-root", str(tmp_path / "nowhere"), "--output", str(tmp_path), "--num-seeds", "1"])
    with pytest.raises(InputError, match="unknown dataset"):
        real_data.main(["--time-budget", "mnist=3", "--output", str(tmp_path)])
    with pytest.raises(InputError, match="--time-budget brain3d=-1"):
        real_data.main(["--time-budget", "brain3d=-1", "--output", str(tmp_path)])
    with pytest.raises(InputError, match="unknown model"):
        real_data.main(["--model", "brain3d=nope", "--output", str(tmp_path)])


def test_per_dataset_options():
    parser = real_data.build_parser("p")
    args = real_data.resolve_options(parser.parse_args(["--time-budget", "60", "brain3d=90", "--model", "unet+dff"]))
    assert args.budget == {"nuclei2d": 60.0, "brain3d": 90.0}
    assert args.models_by_dataset == {"nuclei2d": ["unet+dff"], "brain3d": ["unet+dff"]}
    assert args.patch == {"nuclei2d": [128, 128], "brain3d": [48, 64, 64]}
    assert args.batch == {"nuclei2d": 4, "brain3d": 2}
    assert args.augment_by_dataset == {"nuclei2d": True, "brain3d": False}
    assert (args.num_seeds, args.seed) == (3, 0)
    defaults = real_data.resolve_options(parser.parse_args([]))
    assert defaults.models_by_dataset["nuclei2d"] == ["basicunet", "basicunet+dff", "basicunet+tif", "unet+dff"]
    assert defaults.models_by_dataset["brain3d"] == ["basicunet", "basicunet+dff", "dnet_small"]
    argv = ["--patch-size", "brain3d=32x32x32", "--augment", "nuclei2d=false", "--num-seeds", "2", "--seed", "4"]
    args = real_data.resolve_options(parser.parse_args(argv))
    assert args.patch["brain3d"] == [32, 32, 32] and args.augment_by_dataset["nuclei2d"] is False
    assert (args.num_seeds, args.seed) == (2, 4)
    with pytest.raises(InputError, match="--augment nuclei2d=maybe: expected true or false"):
        real_data.resolve_options(parser.parse_args(["--augment", "nuclei2d=maybe"]))
    with pytest.raises(InputError, match="--batch-size brain3d=0: expected a positive integer"):
        real_data.resolve_options(parser.parse_args(["--batch-size", "brain3d=0"]))
    with pytest.raises(SystemExit):  # old spellings are gone
        parser.parse_args(["--seeds", "2"])


def test_paired_differences_and_verdict():
    def run(model, seed, dice, iterations=100):
        return {"dataset": "d", "model": model, "seed": seed, "dice": dice, "iterations": iterations}

    records = [run("basicunet", k, 0.80 + 0.01 * k) for k in range(3)]
    records += [run("basicunet+dff", k, 0.85 + 0.01 * k + 0.001 * (k == 1), 90) for k in range(3)]
    records += [run("basicunet+tif", k, 0.80 + 0.01 * k + 0.004 * (-1) ** k) for k in range(3)]
    records += [run("dnet_small", k, 0.7) for k in range(3)]
    pairs = {p["with"]: p for p in real_data_stats.paired_differences(records)}
    assert set(pairs) == {"basicunet+dff", "basicunet+tif"}  # dnet_small has no arm without a module
    dff = pairs["basicunet+dff"]
    assert dff["without"] == "basicunet" and dff["seeds"] == [0, 1, 2]
    np.testing.assert_allclose(dff["diffs"], [0.05, 0.051, 0.05])
    assert math.isclose(dff["diff_mean"], 0.050333, rel_tol=1e-4) and dff["iterations_with"] == 90
    assert dff["verdict"].startswith("better by more than the seed-to-seed spread")
    tif = pairs["basicunet+tif"]
    np.testing.assert_allclose(tif["diffs"], [0.004, -0.004, 0.004], atol=1e-12)
    assert tif["verdict"].startswith("within the seed-to-seed spread")
    assert real_data_stats.baseline_of("unet+dff", ["unet+concat", "unet+dff"]) == "unet+concat"
    assert real_data_stats.baseline_of("unet+dff", ["basicunet"]) is None
    table = real_data_stats.format_pairs(list(pairs.values()))
    assert "| d | basicunet+dff | basicunet | +0.0500 | +0.0510 | +0.0500 | +0.0503 ± 0.0006 |" in table
