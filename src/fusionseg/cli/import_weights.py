"""``fusionseg import-weights``: official D-Net / DS-TransUNet weights → a fusionseg checkpoint."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fusionseg.cli.options import SizesAction, parse_json_object, path, sizes
from fusionseg.errors import InputError

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
    from fusionseg.checkpoints.checkpoint import check_fields, import_weights
    from fusionseg.files import ensure_file

    args = build_parser(prog).parse_args(argv)
    if os.path.realpath(args.output) == os.path.realpath(args.weights):
        raise InputError(f"--output {args.output} would replace --weights {args.weights}; choose another output file")
    if args.output.is_dir():
        example = args.output / "best.pt"
        raise InputError(f"--output {args.output} is a folder; pass the checkpoint file to write, e.g. {example}")
    check_replaceable(args.output)
    if args.model is None:  # an nnU-Net v2 checkpoint_final.pth carries network, plans and preprocessing itself
        return _import_nnunet(args)
    kwargs = parse_json_object(args.model_kwargs, "--model-kwargs", '{"dim": 96}')
    for key in ("in_channels", "out_channels", "spatial_dims", "deep_supervision"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    preprocessing = None
    if args.preprocessing is not None:
        try:
            preprocessing = json.loads(ensure_file(args.preprocessing, "preprocessing file").read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"preprocessing file {args.preprocessing} is not valid JSON ({err.msg})") from None
        except (RecursionError, UnicodeDecodeError):
            raise InputError(f"preprocessing file {args.preprocessing} is not a plain UTF-8 JSON object") from None
        check_fields({"preprocessing": preprocessing}, f"preprocessing file {args.preprocessing}")
    if args.data is not None:
        from fusionseg.data import build_preprocessing, scan_dataset

        patch = list(args.patch_size) if args.patch_size else None
        preprocessing = build_preprocessing(scan_dataset(args.data), patch_size=patch)
    model, report = import_weights(args.model, args.weights, args.output, kwargs, preprocessing, strict=args.strict)
    print(report.summary())
    print(f"wrote {args.output} (model {args.model}, {sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


def check_replaceable(output: Path) -> None:
    """:class:`InputError` when ``output`` exists and is not a checkpoint import-weights wrote (a trained
    checkpoint, dataset.json, ...): import-weights replaces only its own output."""
    from fusionseg.checkpoints.checkpoint import load_checkpoint

    if not output.is_file():
        return
    try:
        imported = "imported_from" in (load_checkpoint(output).get("train_args") or {})
    except (InputError, AttributeError, TypeError):
        imported = False
    if not imported:
        raise InputError(
            f"--output {output} exists and was not written by import-weights (a trained checkpoint or another "
            "file); choose a new file name"
        )


def _import_nnunet(args: argparse.Namespace) -> int:
    from fusionseg.nnunet import require_nnunetv2

    require_nnunetv2("import-weights without --model (an nnU-Net v2 checkpoint)")
    from fusionseg.nnunet.importer import import_nnunet_checkpoint

    path, report, model = import_nnunet_checkpoint(args.weights, args.output, strict=args.strict)
    print(report.summary())
    print(f"wrote {path} (model {model['name']}, nnU-Net preprocessing): fusionseg predict --checkpoint {path}")
    return 0
