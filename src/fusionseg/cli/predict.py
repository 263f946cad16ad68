"""``fusionseg predict``: sliding-window prediction of image files with one checkpoint or an ensemble.

Parsing only; the work is :func:`fusionseg.inference.run.run_prediction`.
"""

from __future__ import annotations

import argparse

from fusionseg.cli.options import add_runtime_options, path, positive_int

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "fusionseg predict") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False, description="Sliding-window prediction with fusionseg checkpoints."
    )
    p.add_argument(
        "--checkpoint", type=path, nargs="+", metavar="CKPT",
        help="checkpoint(s) written by `fusionseg train` (best.pt) or import-weights; several, or a "
        "cross-validation run folder (its fold_*/best.pt), are ensembled by averaging their probabilities",
    )  # fmt: skip
    p.add_argument(
        "--input", required=True, type=path,
        help="an image file, a folder of images, or a DICOM series (a folder of slices; a folder of such folders)",
    )  # fmt: skip
    p.add_argument(
        "--output-format", choices=("auto", "nifti", "dicom-seg"), default="auto",
        help="label maps as the input's own format (auto; DICOM series: NIfTI), NIfTI, or one DICOM "
        'Segmentation per DICOM series that references it (dicom-seg; pip install "fusionseg[dicom]")',
    )  # fmt: skip
    p.add_argument("--output", required=True, type=path, help="folder for the label maps")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    p.add_argument("--sw-batch-size", type=positive_int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (1 + spatial_dims passes)")
    p.add_argument(
        "--probabilities", action="store_true",
        help="also write the float class (softmax) or region (sigmoid) probabilities, CASE_probabilities.*",
    )  # fmt: skip
    post = p.add_mutually_exclusive_group()
    post.add_argument(
        "--postprocess", type=path, default=None, metavar="JSON",
        help="apply this postprocessing.json (largest connected components, chosen by `train --cross-validate`); "
        "default: the one of a cross-validation run folder given as --checkpoint",
    )  # fmt: skip
    post.add_argument(
        "--no-postprocess", dest="postprocess", action="store_const", const=False,
        help="do not apply the postprocessing of a cross-validation run folder",
    )  # fmt: skip
    p.add_argument(
        "--memory", default=None, metavar="SIZE",
        help="memory budget of the slabs a case is predicted in, e.g. 2G or 512M (default: a quarter of the "
        "available RAM, at most 1 GiB); the log names the budget and the slab size",
    )  # fmt: skip
    p.add_argument(
        "--shard", default=None, metavar="I/N",
        help="predict only shard I of N of the sorted cases (0-based; job arrays); under torchrun each rank "
        "takes shard RANK/WORLD_SIZE. Finished cases are skipped, so reruns pick up those of a killed process",
    )  # fmt: skip
    p.add_argument(
        "--no-prefetch", dest="prefetch", action="store_false",
        help="read the next case only after the current one is written (lowest peak memory; default: read it "
        "in the background while the current one is predicted)",
    )  # fmt: skip
    p.add_argument(
        "--whole-volume", action="store_true",
        help="hold each case's whole class map instead of slabs (the reference path; needs much more memory)",
    )  # fmt: skip
    add_runtime_options(p)
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg predict") -> int:
    from fusionseg.inference.run import PredictionOptions, run_prediction

    args = build_parser(prog).parse_args(argv)
    return run_prediction(PredictionOptions(**vars(args)))
