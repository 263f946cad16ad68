"""``fusionseg import-weights``: official D-Net / DS-TransUNet weights → a fusionseg checkpoint.

Parsing only; the work is :func:`fusionseg.checkpoints.run.run_import_weights`.
"""

from __future__ import annotations

import argparse

from fusionseg.cli.options import SizesAction, parse_json_object, path, sizes

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "fusionseg import-weights") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Convert official D-Net / DS-TransUNet weights (.pth, .model, nnU-Net checkpoints) into a "
        "fusionseg checkpoint usable by `fusionseg predict`, `export` and `train --init`. Without --model, --weights "
        "is an nnU-Net v2 checkpoint_final.pth: network, plans and preprocessing come from it (docs/nnunet.md).",
    )
    p.add_argument(
        "--model",
        default=None,
        help="registered model, e.g. dnet, dnet_v1, ds_transunet; omit for nnU-Net v2 checkpoints",
    )
    p.add_argument("--weights", required=True, type=path, help="official weights file")
    p.add_argument("--output", required=True, type=path, help="fusionseg checkpoint to write (.pt)")
    p.add_argument("--in-channels", type=int, default=None, help="input channels (default: the model's default)")
    p.add_argument("--out-channels", type=int, default=None, help="classes incl. background (default: model's)")
    p.add_argument("--spatial-dims", type=int, default=None, choices=(2, 3), help="2 or 3 (default: model's)")
    ds = p.add_mutually_exclusive_group()
    ds.add_argument("--deep-supervision", dest="deep_supervision", action="store_true", default=None)
    ds.add_argument("--no-deep-supervision", dest="deep_supervision", action="store_false")
    p.add_argument("--model-kwargs", default="{}", help="extra model arguments as JSON, e.g. '{\"dim\": 96}'")
    pre = p.add_mutually_exclusive_group()
    pre.add_argument("--preprocessing", type=path, default=None, help="JSON file with the preprocessing to embed")
    pre.add_argument("--data", type=path, default=None, help="dataset folder: embed its preprocessing (for predict)")
    p.add_argument("--patch-size", type=sizes, action=SizesAction, default=None, help="with --data: the patch size")
    p.add_argument(
        "--strict", action=argparse.BooleanOptionalAction, default=True,
        help="every tensor must match by name and shape (default); --no-strict loads what fits and reports the rest",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg import-weights") -> int:
    from fusionseg.checkpoints.run import ImportOptions, run_import_weights

    args = build_parser(prog).parse_args(argv)
    model_kwargs = parse_json_object(args.model_kwargs, "--model-kwargs", '{"dim": 96}')
    return run_import_weights(ImportOptions(**{**vars(args), "model_kwargs": model_kwargs}))
