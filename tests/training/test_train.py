"""Training loop: loss, schedule, split, exact resume, time budget, checkpoints, every registered model."""

from __future__ import annotations

import csv
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusionseg.checkpoints.checkpoint import load_checkpoint, rebuild_model
from fusionseg.cli.train import build_parser, config_from_args
from fusionseg.data import make_phantom_dataset
from fusionseg.errors import InputError
from fusionseg.nets.registry import list_models
from fusionseg.training.config import TrainConfig
from fusionseg.training.losses import DeepSupervisedDiceCE, deep_supervision_weights
from fusionseg.training.optim import poly_lr_lambda
from fusionseg.training.trainer import Trainer, split_cases, train

TINY_UNET = {"features": [4, 8]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantoms2d(tmp_path_factory) -> Path:
    return make_phantom_dataset(tmp_path_factory.mktemp("ph2d"), spatial_dims=2, num_train=5, num_test=1, size=(32, 32))


@pytest.fixture(scope="module")
def phantoms3d(tmp_path_factory) -> Path:
    return make_phantom_dataset(
        tmp_path_factory.mktemp("ph3d"), spatial_dims=3, num_train=2, num_test=0, size=(32,) * 3
    )


def _config(data: Path, output: Path, **kw) -> TrainConfig:
    base = dict(
        data=data,
        output=output,
        model="unet",
        fusion="dff",
        model_kwargs=TINY_UNET,
        epochs=3,
        iters_per_epoch=2,
        batch_size=2,
        patch_size=(32, 32),
        progress=False,
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


def test_deep_supervision_weights():
    assert deep_supervision_weights(1) == [1.0]
    w = deep_supervision_weights(4)
    assert sum(w) == pytest.approx(1.0)
    assert [w[i] / w[i + 1] for i in range(3)] == pytest.approx([2.0, 2.0, 2.0])


def test_deep_supervised_loss_matches_reference():
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    outputs = (torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4))
    target = torch.randint(0, 3, (2, 1, 16, 16))
    dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    ref = sum(
        w * dice_ce(o, F.interpolate(target.float(), size=o.shape[2:], mode="nearest-exact"))
        for w, o in zip(deep_supervision_weights(3), outputs)
    )
    loss_fn = DeepSupervisedDiceCE()
    torch.testing.assert_close(loss_fn(outputs, target), ref)
    torch.testing.assert_close(loss_fn(outputs[0], target), dice_ce(outputs[0], target.float()))


def test_poly_lr_lambda():
    f = poly_lr_lambda(100)
    assert f(0) == 1.0 and f(100) == 0.0 and f(150) == 0.0
    assert f(50) == pytest.approx(0.5**0.9)
    used = {"t": 0.75}
    g = poly_lr_lambda(100, time_fraction=lambda: used["t"])
    assert g(10) == pytest.approx(0.25**0.9)  # the time budget is further along than the steps
    used["t"] = 0.0
    assert g(10) == pytest.approx(0.9**0.9)


def test_split_cases_is_deterministic_and_disjoint():
    cases = list(range(10))
    train_a, val_a = split_cases(cases, 0.2, seed=3)
    train_b, val_b = split_cases(cases, 0.2, seed=3)
    assert (train_a, val_a) == (train_b, val_b)
    assert len(val_a) == 2 and sorted(train_a + val_a) == cases
    assert split_cases(cases, 0.2, seed=4)[1] != val_a or split_cases(cases, 0.2, seed=5)[1] != val_a
    assert split_cases([1], 0.5, 0) == ([1], [])
    with pytest.raises(InputError):
        split_cases(cases, 1.0, 0)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(phantoms2d, tmp_path, monkeypatch):
    kw = {"val_every": 3}
    train(_config(phantoms2d, tmp_path / "full", **kw))
    # Run 1 stops cleanly after epoch 1; run 2 is killed in the middle of epoch 3; run 3 finishes.
    train(_config(phantoms2d, tmp_path / "parts", stop_after=1, **kw))
    assert load_checkpoint(tmp_path / "parts" / "last.pt")["epoch"] == 1
    real_step, calls = Trainer.train_step, []

    def dying_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # 2 steps per epoch: the 4th is the first of epoch 3
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(_config(phantoms2d, tmp_path / "parts", resume=True, **kw))
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert load_checkpoint(tmp_path / "parts" / "last.pt")["epoch"] == 2
    train(_config(phantoms2d, tmp_path / "parts", resume=True, **kw))
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "parts" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(state_a[k]["momentum_buffer"], state_b[k]["momentum_buffer"]) for k in state_a)
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    rows = list(csv.DictReader((tmp_path / "parts" / "log.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # A different seed gives different weights (the comparison above can fail).
    train(_config(phantoms2d, tmp_path / "other", seed=1, epochs=1, val_fraction=0.0))
    c = load_checkpoint(tmp_path / "other" / "last.pt")
    assert not all(torch.equal(c["state_dict"][k], a["state_dict"][k]) for k in a["state_dict"])


def test_checkpoints_save_the_run_definition_and_resume_compares_it(phantoms2d, tmp_path):
    """train_args holds the run's definition (not how one invocation ran it); a resume warns about each changed
    setting of the run only. Older checkpoints hold every setting, flat, some under old names: they resume as well."""
    from dataclasses import fields, replace

    from fusionseg.checkpoints.checkpoint import save_checkpoint
    from fusionseg.training.config import RunDefinition

    config = _config(phantoms2d, tmp_path, epochs=3, iters_per_epoch=1, val_fraction=0.0, lr=0.01, stop_after=1)
    train(config)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert list(ckpt["train_args"]) == [f.name for f in fields(RunDefinition)]
    assert ckpt["train_args"] == config.definition().plain() and ckpt["train_args"]["lr"] == 0.01
    older = {**config.plain(), "device": "cuda:1", "resume": False, "cache": "/elsewhere"}  # as written before
    older["num_workers"] = older.pop("workers")
    save_checkpoint(tmp_path / "last.pt", {**ckpt, "train_args": older})
    lines = []
    invocation = {"device": "cpu", "workers": 0, "stop_after": 1, "resume": True, "output": tmp_path}
    Trainer(replace(config, **invocation), log=lines.append).run()
    assert [line for line in lines if "warning" in line] == []
    Trainer(replace(config, **invocation, lr=0.02, seed=4, init=tmp_path / "x.pt"), log=lines.append).run()
    assert [line for line in lines if "warning" in line] == [
        "warning: resuming with lr=0.02, but the run used 0.01; results differ",
        "warning: resuming with seed=4, but the run used 0; results differ",
    ]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3


def test_checkpoint_log_and_curve(phantoms2d, tmp_path):
    best = train(_config(phantoms2d, tmp_path, deep_supervision=True, optimizer="adamw", lr=1e-3, val_every=2))
    assert best == tmp_path / "best.pt"
    ckpt = load_checkpoint(best)  # weights_only=True
    for key in (
        "format",
        "version",
        "model",
        "preprocessing",
        "state_dict",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "step",
        "best_metric",
        "rng",
        "train_args",
    ):
        assert key in ckpt, key
    assert ckpt["format"] == "fusionseg" and ckpt["model"]["name"] == "unet"
    assert ckpt["model"]["kwargs"]["fusion"] == "dff" and ckpt["model"]["kwargs"]["deep_supervision"] is True
    assert ckpt["preprocessing"]["patch_size"] == [32, 32] and ckpt["preprocessing"]["num_classes"] == 3
    assert ckpt["train_args"]["optimizer"] == "adamw"
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    model = rebuild_model(ckpt)
    x = torch.randn(1, 1, 32, 32)
    assert model(x)[0].shape == (1, 3, 32, 32)  # deep supervision → tuple, full resolution first
    rows = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))
    assert [r["val_dice"] != "" for r in rows] == [False, True, True]  # every 2 epochs + the last one
    assert 0.0 <= float(rows[-1]["val_dice"]) <= 1.0
    assert float(rows[-1]["lr"]) == 0.0  # poly schedule ends at 0
    assert (tmp_path / "learning_curve.png").stat().st_size > 5000
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == 6 and summary["out_of_time"] is False


def test_init_loads_weights(phantoms2d, tmp_path):
    first = train(_config(phantoms2d, tmp_path / "a", epochs=1, iters_per_epoch=1, val_fraction=0.0))
    # lr 0 and no weight decay: the second run must end with exactly the initial weights.
    train(
        _config(
            phantoms2d,
            tmp_path / "b",
            epochs=1,
            iters_per_epoch=1,
            val_fraction=0.0,
            init=first,
            lr=0.0,
            weight_decay=0.0,
            seed=5,
        )
    )
    a, b = load_checkpoint(first)["state_dict"], load_checkpoint(tmp_path / "b" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_training(phantoms2d, tmp_path):
    train(_config(phantoms2d, tmp_path, epochs=100, iters_per_epoch=5, time_budget=1e-3, val_fraction=0.0))
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["out_of_time"] is True and summary["steps"] == 1 and summary["epochs"] == 1
    assert (tmp_path / "best.pt").exists()  # no validation split → best = last


FAST_MODELS = {"unet": {}, "ds_transunet_small": {}}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=() if n in FAST_MODELS else pytest.mark.slow)
        for n in sorted(set(list_models()) - {"nnunet_planned"} | {"unet"})  # nnunet_planned: tests/nnunet
    ],
)
def test_every_registered_model_trains(name, phantoms2d, phantoms3d, tmp_path):
    three_d = name.startswith("dnet")
    big = "transunet" in name or "swinunetr" in name  # ≥ 2 voxels at 1/32 resolution (instance norm)
    data, patch = (phantoms3d, (32, 32, 32)) if three_d else (phantoms2d, (64, 64) if big else (32, 32))
    config = _config(
        data,
        tmp_path,
        model=name,
        fusion=None,
        model_kwargs=TINY_UNET if name == "unet" else {},
        epochs=1,
        iters_per_epoch=1,
        batch_size=1,
        patch_size=patch,
        val_fraction=0.0,
    )
    train(config)
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["model"]["name"] == name and ckpt["step"] == 1
    assert math.isfinite(ckpt["history"][0]["train_loss"])


@pytest.mark.parametrize(("fusion", "dims"), [("concat", 2), ("add", 2), ("tif", 2), ("dff", 3)])
def test_unet_with_each_fusion(fusion, dims, phantoms2d, phantoms3d, tmp_path):
    data, patch = (phantoms2d, (32, 32)) if dims == 2 else (phantoms3d, (16, 16, 16))
    train(_config(data, tmp_path, fusion=fusion, epochs=1, iters_per_epoch=1, patch_size=patch, val_fraction=0.0))
    assert load_checkpoint(tmp_path / "last.pt")["model"]["kwargs"]["fusion"] == fusion


@pytest.mark.parametrize(("native_bf16", "bf16_faster"), [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("fusion", ["concat", "tif"])
def test_amp_and_channels_last_on_cpu(fusion, native_bf16, bf16_faster, phantoms2d, tmp_path, monkeypatch, capsys):
    """--amp trains in bf16 where the CPU has native bf16 and a timed step shows bf16 is faster; else in fp32 with
    a note saying why (every branch, on any CPU: the timings are injected)."""
    monkeypatch.setattr("fusionseg.runtime.devices.cpu_has_native_bf16", lambda: native_bf16)
    timings = {None: 1.0, torch.bfloat16: 0.5 if bf16_faster else 1.2}
    timed = []
    monkeypatch.setattr(
        "fusionseg.runtime.precision.time_step",
        lambda model, shape, device, dtype, mode: timed.append((tuple(shape), mode)) or timings[dtype],
    )
    dtypes = []
    real_step = Trainer.train_step

    def step(self, batch):
        handle = self.model.heads[0].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
        try:
            return real_step(self, batch)
        finally:
            handle.remove()

    monkeypatch.setattr(Trainer, "train_step", step)
    config = _config(phantoms2d, tmp_path, fusion=fusion, amp=True, channels_last=True, deep_supervision=True, epochs=1)
    train(config)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["train_args"]["amp"] is True and math.isfinite(ckpt["history"][0]["train_loss"])
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert set(dtypes) == {torch.bfloat16 if bf16_faster else torch.float32}
    out = capsys.readouterr().out
    assert ("no native bfloat16" in out) is (not native_bf16)
    assert ("--amp: bfloat16 for train steps: 0.5 s vs 1 s in float32" in out) is bf16_faster
    kept = "--amp: float32 kept for train steps: bfloat16 1.2 s vs float32 1 s"
    assert (kept in out) is (native_bf16 and not bf16_faster)
    patch = tuple(load_checkpoint(tmp_path / "last.pt")["preprocessing"]["patch_size"])
    assert timed == ([((config.batch_size, 1, *patch), "train")] * 2 if native_bf16 else [])


def test_patch_size_is_rounded_to_size_multiple(phantoms2d, tmp_path, capsys):
    train(
        _config(
            phantoms2d,
            tmp_path,
            model_kwargs={"features": [4, 8, 16]},
            patch_size=(30, 26),
            epochs=1,
            iters_per_epoch=1,
            val_fraction=0.0,
        )
    )
    assert load_checkpoint(tmp_path / "last.pt")["preprocessing"]["patch_size"] == [32, 28]
    assert "rounded up" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model": "nope"}, "unknown model"),
        ({"model": "ds_transunet_small", "fusion": "dff", "model_kwargs": {}}, "fusion"),
        ({"epochs": 0}, "--epochs"),
        ({"time_budget": -1.0}, "--time-budget"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"fold": "first"}, "--fold must be"),
        ({"fold": 7}, "fold 7 does not exist"),
        ({"num_folds": 1}, "--num-folds"),
    ],
)
def test_bad_config_raises_input_error(changes, match, phantoms2d, tmp_path):
    with pytest.raises(InputError, match=match):
        train(_config(phantoms2d, tmp_path / "run", splits=tmp_path / "splits_final.json", **changes))


def test_bad_data_folder(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        train(_config(tmp_path / "missing", tmp_path / "run"))


def test_parser_builds_config():
    args = build_parser().parse_args(
        [
            "--data",
            "d",
            "--model",
            "unet",
            "--fusion",
            "tif",
            "--patch-size",
            "64,64",
            "--model-kwargs",
            '{"features": [8, 16]}',
            "--time-budget",
            "30",
            "--no-deep-supervision",
        ]
    )
    config = config_from_args(args)
    assert config.patch_size == (64, 64) and config.model_kwargs == {"features": [8, 16]}
    assert config.time_budget == 30.0 and config.deep_supervision is False and config.fusion == "tif"
    with pytest.raises(InputError, match="JSON"):
        config_from_args(build_parser().parse_args(["--data", "d", "--model-kwargs", "{oops"]))


def test_parser_fold_options():
    config = config_from_args(build_parser().parse_args(["--data", "d", "--fold", "all", "--num-folds", "3"]))
    assert config.fold == "all" and config.num_folds == 3 and config.splits is None
    args = build_parser().parse_args(["--data", "d", "--cross-validate", "0,2", "--splits", "s.json"])
    assert args.cross_validate == "0,2" and config_from_args(args).splits == Path("s.json")
    assert build_parser().parse_args(["--data", "d", "--cross-validate"]).cross_validate == "all"
    assert build_parser().parse_args(["--data", "d"]).cross_validate is None
    with pytest.raises(SystemExit):  # one fold or a cross-validation, not both
        build_parser().parse_args(["--data", "d", "--fold", "0", "--cross-validate"])


def test_split_follows_the_folds_of_splits_final_json(phantoms2d, tmp_path):
    """--fold N: nnU-Net folds (written beside the data, or to --splits); all: every case both ways; none: hold-out."""
    from fusionseg.data import make_splits, scan_dataset

    info = scan_dataset(phantoms2d)
    ids = [c.case_id for c in info.cases]
    splits_path = tmp_path / "splits_final.json"
    for fold, expected_val in [(1, make_splits(ids, 2)[1]["val"]), ("all", ids), (None, None)]:
        trainer = Trainer(_config(phantoms2d, tmp_path, fold=fold, num_folds=2, splits=splits_path))
        trainer.dataset = info
        train_cases, val_cases = trainer.split(list(info.cases))
        if fold is None:
            assert (train_cases, val_cases) == split_cases(list(info.cases), 0.2, 0)
            continue
        assert [c.case_id for c in val_cases] == expected_val
        expected_train = ids if fold == "all" else sorted(set(ids) - set(expected_val))
        assert [c.case_id for c in train_cases] == expected_train
    assert [f["val"] for f in json.loads(splits_path.read_text())] == [f["val"] for f in make_splits(ids, 2)]


def test_region_dataset_builds_one_output_per_region(tmp_path):
    from fusionseg.data import LabelLayout, Preprocessing
    from fusionseg.training.trainer import build_model

    labels = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}
    pre = Preprocessing.from_dict(
        {"in_channels": 4, "spatial_dims": 2, **LabelLayout.from_dataset_json(labels, [1, 2, 3]).to_preprocessing()}
    )
    assert (pre.num_classes, pre.out_channels) == (4, 3)
    model = build_model(TrainConfig(data=tmp_path, model="unet", model_kwargs=TINY_UNET), pre)
    assert model.out_channels == 3 and model.config["kwargs"]["out_channels"] == 3


def test_build_loss_is_a_hook_and_tensorboard_gets_the_scalars(phantoms2d, tmp_path):
    """A subclass's build_loss is used; event files beside log.csv hold loss, lr, mean and per-class val Dice."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from fusionseg.training.losses import DeepSupervisedDiceCE

    calls = []

    class CountingLoss(DeepSupervisedDiceCE):
        def forward(self, outputs, target):
            calls.append(1)
            return super().forward(outputs, target)

    class MyTrainer(Trainer):
        def build_loss(self):
            return CountingLoss()

    MyTrainer(_config(phantoms2d, tmp_path, epochs=2, iters_per_epoch=2)).run()
    assert len(calls) == 4
    events = event_accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    names = json.loads((phantoms2d / "dataset.json").read_text())["labels"]
    per_class = {f"val/dice_{n}" for n, v in names.items() if v != 0}
    assert tags == {"train/loss", "train/lr", "val/dice", *per_class} and len(per_class) == 2
    rows = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))
    dice = events.Scalars("val/dice")
    assert [e.step for e in dice] == [2, 4]
    assert [e.value for e in dice] == pytest.approx([float(r["val_dice"]) for r in rows], abs=1e-5)
    loss = events.Scalars("train/loss")
    assert [e.value for e in loss] == pytest.approx([float(r["train_loss"]) for r in rows], abs=1e-5)
    per_class_values = [events.Scalars(tag)[-1].value for tag in sorted(per_class)]
    assert np.mean(per_class_values) == pytest.approx(dice[-1].value, abs=1e-5)


def test_tensorboard_missing_is_one_log_line(phantoms2d, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("fusionseg.runtime.tensorboard_log.tensorboard_available", lambda: False)
    train(_config(phantoms2d, tmp_path, epochs=1, iters_per_epoch=1))
    out = capsys.readouterr().out
    assert out.count("TensorBoard logging skipped") == 1
    assert not list(tmp_path.glob("events.out.tfevents*")) and (tmp_path / "log.csv").is_file()


def test_time_budget_is_the_wall_clock_of_the_whole_run(phantoms2d, tmp_path, monkeypatch):
    """Validation and checkpoints count; the closing validation scores only the cases that fit, and says so."""
    from fusionseg.training import trainer as train_module

    real_case_scores = train_module.case_scores

    def slow_case_scores(*args, **kwargs):  # a validation case costs 1.2 s
        time.sleep(1.2)
        return real_case_scores(*args, **kwargs)

    monkeypatch.setattr(train_module, "case_scores", slow_case_scores)
    budget, slack, lines = 6.0, 2.0, []  # the closing validation of 3 cases (3.6 s) would overrun by more
    config = _config(phantoms2d, tmp_path, epochs=1000, iters_per_epoch=2, time_budget=budget, val_fraction=0.6)
    start = time.perf_counter()
    Trainer(config, log=lines.append).run()
    wall = time.perf_counter() - start
    assert wall <= budget + slack, wall
    # the closing validation of 3 cases (3.6 s) does not fit in what is kept back (a quarter of the budget)
    said = [line for line in lines if line.startswith("time budget of 6 s: ")]
    assert re.fullmatch(r"time budget of 6 s: (validated [12] of 3 cases to stay inside it|"
                        r"validation skipped \(3 cases did not fit\))", said[0]), lines  # fmt: skip
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["out_of_time"] is True and summary["run_time_s"] <= budget + slack
    curve = load_checkpoint(tmp_path / "last.pt")["curve"]
    assert len(curve) == summary["steps"]  # 2 iterations per epoch: a point per iteration


def test_a_one_epoch_run_draws_a_learning_curve(phantoms2d, tmp_path):
    from fusionseg.evaluation.report import learning_curve_points

    train(_config(phantoms2d, tmp_path, epochs=1, iters_per_epoch=30, val_fraction=0.0))
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert [p["step"] for p in ckpt["curve"]] == list(range(3, 31, 3))  # 10 points, each the mean of 3 iterations
    x_name, loss, _ = learning_curve_points(ckpt["history"], ckpt["curve"])
    assert x_name == "iteration" and len(loss) == 10  # was: one dot (one epoch)
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
