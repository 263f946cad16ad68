"""``fusionseg predict``: sliding-window prediction of image files with one checkpoint or an ensemble."""

from __future__ import annotations

import argparse
import sys

from fusionseg.cli.options import add_runtime_options, path, positive_int
from fusionseg.errors import InputError
from fusionseg.files import check_output_apart, folder_lock

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
    from fusionseg.checkpoints.loading import load_models
    from fusionseg.inference.inputs import find_inputs
    from fusionseg.inference.postprocess import read_postprocessing
    from fusionseg.inference.predict_files import predict_files
    from fusionseg.inference.run_checkpoints import resolve_checkpoints
    from fusionseg.inference.sharding import choose_shard, shard_lock_name, take_shard
    from fusionseg.runtime.devices import pick_device, set_threads
    from fusionseg.runtime.memory_budget import default_memory_budget, format_bytes, parse_memory
    from fusionseg.runtime.precision import choose_inference_amp

    args = build_parser(prog).parse_args(argv)
    memory = parse_memory(args.memory) if args.memory is not None else default_memory_budget()
    shard = choose_shard(args.shard)
    if not args.checkpoint:
        raise InputError("--checkpoint is required: the best.pt written by `fusionseg train` (or import-weights)")
    if not 0.0 <= args.overlap < 1.0:
        raise InputError(f"--overlap must be in [0, 1) (a fraction of the window), got {args.overlap}")
    check_output_apart(args.output, args.input)
    checkpoints, run_plan = resolve_checkpoints(args.checkpoint)
    plan_path = args.postprocess if args.postprocess is not None else run_plan
    plan = read_postprocessing(plan_path) if plan_path else None
    threads, reason = set_threads(args.threads)
    device = pick_device(args.device)
    if args.progress and device.type == "cpu":
        print(f"CPU threads: {threads} ({reason})")
    models, pres = load_models(checkpoints, device)
    amp = choose_inference_amp(models[0], pres[0], device, args.amp, args.sw_batch_size)
    if args.progress and len(models) > 1:
        print(f"ensemble of {len(models)} models: {', '.join(map(str, checkpoints))}")
    if args.progress and plan is not None:
        kept = ", ".join(e.get("name", str(e["values"])) for e in plan["keep_largest_component"]) or "nothing"
        print(f"postprocessing from {plan_path}: keep the largest component of {kept}")
    all_cases = find_inputs(args.input, int(pres[0].get("in_channels", 1)))
    _check_output_format(args.output_format, all_cases, plan)
    cases = take_shard(all_cases, shard)
    if args.progress and shard is not None:
        print(f"shard {shard[0]}/{shard[1]}: {len(cases)} of {len(all_cases)} case(s)")
    if args.progress and not args.whole_volume:
        source = "--memory" if args.memory is not None else "default: a quarter of the available RAM, at most 1 GiB"
        print(f"memory budget {format_bytes(memory)} ({source})")
    with folder_lock(args.output, "prediction folder", name=shard_lock_name(shard)):
        written, failed = predict_files(
            models,
            pres,
            cases,
            args.output,
            overlap=args.overlap,
            sw_batch_size=args.sw_batch_size,
            tta=args.tta,
            probabilities=args.probabilities,
            postprocessing=plan,
            device=device,
            amp=amp,
            progress=args.progress,
            output_format=args.output_format,
            memory=memory,
            whole_volume=args.whole_volume,
            prefetch=args.prefetch,
        )
    print(f"wrote {len(written)} prediction(s) to {args.output}")
    if failed:
        print(f"{prog}: {len(failed)} of {len(cases)} case(s) failed:", file=sys.stderr)
        for cid, message in failed:
            print(f"  {cid}: {message}", file=sys.stderr)
        return 1
    return 0


def _check_output_format(output_format: str, cases: list, plan: dict | None) -> None:
    """One InputError line before any prediction when a case cannot be written as ``output_format``."""
    from fusionseg.data.formats import prediction_extension

    for _, images in cases:
        prediction_extension(images[0], output_format)
    if output_format == "dicom-seg":
        from fusionseg.data.backends.dicom_seg import highdicom_module

        highdicom_module()
        if plan is not None:
            raise InputError("--output-format dicom-seg writes no postprocessed maps yet; add --no-postprocess")
