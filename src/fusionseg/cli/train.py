"""``fusionseg train``: train a registered model on a dataset folder.

One option per field of :class:`~fusionseg.training.config.RunDefinition` and
:class:`~fusionseg.training.config.Invocation` (same name; tests/test_cli_options.py checks), plus ``--config``
and ``--cross-validate``; :func:`main` parses them and calls
:func:`~fusionseg.workflows.training_run.run_training`.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from fusionseg.cli.options import (
    add_old_spelling,
    add_runtime_options,
    parse_json_object,
    path,
    positive_float,
    positive_int,
)
from fusionseg.cli.plan import add_plan_options
from fusionseg.nets.swin_pretrained import parse_pretrained
from fusionseg.training.config import TrainConfig

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser(prog: str = "fusionseg train", skip: tuple[str, ...] = (), **defaults) -> argparse.ArgumentParser:
    """Options of ``fusionseg train``; ``skip`` leaves options out, ``defaults`` overrides defaults (shown in help)."""
    from fusionseg.fusion import list_fusions
    from fusionseg.nets.registry import list_models

    d = {f.name: f.default for f in fields(TrainConfig) if f.name != "model_kwargs"}
    d["output"] = Path("runs/fusionseg")
    d.update(defaults)
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False, description="Train a segmentation model on a dataset folder."
    )

    def add(name: str, *args, **kwargs) -> None:
        if name not in skip:
            p.add_argument(*args, **kwargs)

    add(
        "config", "--config", type=path, default=None,
        help="run config (YAML or JSON) of option: value; options given here override it. Each run folder gets "
        "config.yaml: --config RUN/config.yaml repeats the run",
    )  # fmt: skip
    p.add_argument(
        "--data", required=True, type=path,
        help="dataset folder: nnU-Net/MSD layout, images/ + masks/ (Kvasir-SEG), ISIC 2018 or CVC-ClinicDB as unpacked",
    )  # fmt: skip
    p.add_argument("--output", type=path, default=d["output"], help=f"run folder (default {d['output']})")
    p.add_argument(
        "--model", default=d["model"], help=f"registered model (default {d['model']}): {', '.join(list_models())}"
    )
    add(
        "fusion",
        "--fusion",
        default=None,
        help=f"skip fusion ({' | '.join(list_fusions())}) of the models that take one: unet, monai_*, nnunet_*",
    )
    p.add_argument(
        "--model-kwargs", default="{}", help="extra model arguments as JSON, e.g. '{\"features\": [16, 32, 64]}'"
    )
    ds = p.add_mutually_exclusive_group()
    ds.add_argument("--deep-supervision", dest="deep_supervision", action="store_true", default=None)
    ds.add_argument("--no-deep-supervision", dest="deep_supervision", action="store_false")
    p.add_argument("--epochs", type=positive_int, default=d["epochs"], help=f"default {d['epochs']}")
    p.add_argument(
        "--iters-per-epoch", type=positive_int, default=d["iters_per_epoch"], help=f"default {d['iters_per_epoch']}"
    )
    add(
        "time_budget", "--time-budget", type=positive_float, default=None,
        help="wall-clock seconds of the whole run, validation and checkpoints included "
        "(the closing validation scores the cases that fit)",
    )  # fmt: skip
    add("stop_after", "--stop-after", type=positive_int, default=None, help="run this many epochs now, then exit")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=d["batch_size"],
        help=f"patches per iteration (default {d['batch_size']})",
    )
    add_plan_options(p)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=d["optimizer"], help="sgd (poly, nnU-Net) or adamw")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-2 sgd, 1e-3 adamw)")
    p.add_argument("--weight-decay", type=float, default=None, help="default 3e-5 sgd, 1e-2 adamw")
    p.add_argument(
        "--grad-clip",
        type=float,
        default=d["grad_clip"],
        help=f"gradient-norm clip, 0 = off (default {d['grad_clip']:g})",
    )
    p.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no data augmentation")
    p.add_argument(
        "--val-every",
        type=positive_int,
        default=d["val_every"],
        help=f"validate every N epochs (default {d['val_every']})",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d["val_fraction"],
        help=f"cases held out for validation{'' if 'fold' in skip else ' when no --fold is given'} "
        f"(default {d['val_fraction']})",
    )
    if "fold" not in skip:
        folds = p.add_mutually_exclusive_group()
        folds.add_argument(
            "--fold",
            default=None,
            help="train one fold of nnU-Net's splits_final.json: 0, 1, ... (validate on its val cases), "
            "or all (train and validate on every case)",
        )
        folds.add_argument(
            "--cross-validate",
            nargs="?",
            const="all",
            default=None,
            metavar="FOLDS",
            help="cross-validation: train every fold (or FOLDS, e.g. 0,1,2) into OUTPUT/fold_N, then write "
            "crossval_summary.json (Dice mean ± std over folds) and postprocessing.json",
        )
        p.add_argument(
            "--num-folds", type=positive_int, default=d["num_folds"],
            help=f"folds made when splits_final.json does not exist yet (default {d['num_folds']})",
        )  # fmt: skip
        p.add_argument(
            "--splits", type=path, default=None,
            help="splits_final.json to read, or to write when absent (default: DATA/splits_final.json)",
        )  # fmt: skip
    p.add_argument("--seed", type=int, default=d["seed"], help=f"random seed (default {d['seed']})")
    add("resume", "--resume", action="store_true", help="continue the run in --output from its newest checkpoint")
    add(
        "overwrite", "--overwrite", action="store_true",
        help="replace the run already in --output (its checkpoints are deleted first); without it train refuses",
    )  # fmt: skip
    add("init", "--init", type=path, default=None, help="start from these weights (e.g. from import-weights)")
    add(
        "pretrained", "--pretrained", type=parse_pretrained, default=None, metavar="MAIN[,SECOND]",
        help="local ImageNet Swin checkpoint(s) (official/timm layout) for DS-TransUNet's encoders: Swin-B, then "
        "optionally Swin-T for the second branch",
    )  # fmt: skip
    p.add_argument(
        "--workers", type=int, default=d["workers"],
        help=f"processes that load patches and preprocess the cases the cache lacks (default {d['workers']}: this one)",
    )  # fmt: skip
    add_old_spelling(p, "--num-workers", "--workers")
    p.add_argument(
        "--cache",
        type=path,
        default=None,
        help="cache root for preprocessed data (default $FUSIONSEG_CACHE or ~/.cache/fusionseg/preprocessed)",
    )
    add_runtime_options(p)
    p.set_defaults(**{k: v for k, v in defaults.items() if k in ("progress",)})
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` described by parsed ``fusionseg train`` options."""
    model_kwargs = parse_json_object(args.model_kwargs, "--model-kwargs", '{"features": [16, 32]}')
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and k != "model_kwargs"}
    return TrainConfig(model_kwargs=model_kwargs, **values)


def main(argv: list[str] | None = None, prog: str = "fusionseg train") -> int:
    from fusionseg.cli.run_config import parse_with_config, recorded_options
    from fusionseg.workflows.training_run import run_training

    parser = build_parser(prog)
    args = parse_with_config(parser, argv)
    config = config_from_args(args)
    run_config = recorded_options(parser, args)  # config.yaml: repeats the run
    return run_training(config, cross_validate=args.cross_validate, run_config=run_config)
