"""``fusionseg predict`` as one call: checkpoints, device, precision, cases and shard → label maps, one report.

:func:`run_prediction` takes the command's options (:class:`PredictionOptions`, one field per option of
``fusionseg predict``), checks them, loads the checkpoint(s), picks threads, device and the measured
``--amp`` dtype (:func:`fusionseg.runtime.precision.choose_inference_amp`), finds the cases of this
process's shard, predicts them under the output folder's lock
(:func:`fusionseg.inference.predict_files.predict_files`) and prints what it wrote; its return value is
the command's exit status (1 when a case failed).

Example:
    >>> run_prediction(PredictionOptions(checkpoint=(Path("runs/cv"),), input=Path("imagesTs"), output=Path("pred")))
    wrote 10 prediction(s) to pred
    0
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fusionseg.errors import InputError

__all__ = ["PredictionOptions", "run_prediction"]


@dataclass(frozen=True)
class PredictionOptions:
    """The options of ``fusionseg predict`` (docs/cli.md), named as its parser's destinations.

    ``postprocess``: a postprocessing.json, None for that of a cross-validation run folder given as
    checkpoint, False for none (``--no-postprocess``). ``memory``: a size like ``2G`` (None: the default
    budget). ``shard``: ``"I/N"`` (None: torchrun's rank, or every case).
    """

    input: Path
    output: Path
    checkpoint: Sequence[Path] | None = None
    output_format: str = "auto"
    overlap: float = 0.5
    sw_batch_size: int = 4
    tta: bool = False
    probabilities: bool = False
    postprocess: Path | Literal[False] | None = None
    memory: str | None = None
    shard: str | None = None
    prefetch: bool = True
    whole_volume: bool = False
    threads: str | int = "auto"
    device: str = "auto"
    amp: bool = False
    progress: bool = True


def run_prediction(options: PredictionOptions) -> int:
    """Predict the cases of ``options.input`` into ``options.output`` → exit status (0, or 1 when a case failed)."""
    from fusionseg.checkpoints.loading import load_models
    from fusionseg.files import check_output_apart, folder_lock
    from fusionseg.inference.checkpoint_files import resolve_checkpoints
    from fusionseg.inference.inputs import find_inputs
    from fusionseg.inference.postprocess import read_postprocessing
    from fusionseg.inference.predict_files import predict_files
    from fusionseg.inference.sharding import choose_shard, shard_lock_name, take_shard
    from fusionseg.runtime.devices import pick_device, set_threads
    from fusionseg.runtime.memory_budget import default_memory_budget, format_bytes, parse_memory
    from fusionseg.runtime.precision import choose_inference_amp

    o = options
    memory = parse_memory(o.memory) if o.memory is not None else default_memory_budget()
    shard = choose_shard(o.shard)
    if not o.checkpoint:
        raise InputError("--checkpoint is required: the best.pt written by `fusionseg train` (or import-weights)")
    if not 0.0 <= o.overlap < 1.0:
        raise InputError(f"--overlap must be in [0, 1) (a fraction of the window), got {o.overlap}")
    check_output_apart(o.output, o.input)
    checkpoints, run_postprocessing = resolve_checkpoints(o.checkpoint)
    postprocessing_file = o.postprocess if o.postprocess is not None else run_postprocessing
    postprocessing = read_postprocessing(postprocessing_file) if postprocessing_file else None
    threads, reason = set_threads(o.threads)
    device = pick_device(o.device)
    if o.progress and device.type == "cpu":
        print(f"CPU threads: {threads} ({reason})")
    models, pres = load_models(checkpoints, device)
    amp_dtype = choose_inference_amp(models[0], pres[0], device, o.amp, o.sw_batch_size)
    if o.progress and len(models) > 1:
        print(f"ensemble of {len(models)} models: {', '.join(map(str, checkpoints))}")
    if o.progress and postprocessing is not None:
        kept = ", ".join(e.get("name", str(e["values"])) for e in postprocessing["keep_largest_component"])
        print(f"postprocessing from {postprocessing_file}: keep the largest component of {kept or 'nothing'}")
    all_cases = find_inputs(o.input, pres[0].in_channels)
    check_output_format(o.output_format, all_cases, postprocessing)
    cases = take_shard(all_cases, shard)
    if o.progress and shard is not None:
        print(f"shard {shard[0]}/{shard[1]}: {len(cases)} of {len(all_cases)} case(s)")
    if o.progress and not o.whole_volume:
        source = "--memory" if o.memory is not None else "default: a quarter of the available RAM, at most 1 GiB"
        print(f"memory budget {format_bytes(memory)} ({source})")
    with folder_lock(o.output, "prediction folder", name=shard_lock_name(shard)):
        written, failed = predict_files(
            models, pres, cases, o.output, overlap=o.overlap, sw_batch_size=o.sw_batch_size, tta=o.tta,
            probabilities=o.probabilities, postprocessing=postprocessing, device=device, amp_dtype=amp_dtype,
            progress=o.progress, output_format=o.output_format, memory=memory, whole_volume=o.whole_volume,
            prefetch=o.prefetch,
        )  # fmt: skip
    print(f"wrote {len(written)} prediction(s) to {o.output}")
    if failed:
        print(f"fusionseg predict: {len(failed)} of {len(cases)} case(s) failed:", file=sys.stderr)
        for cid, message in failed:
            print(f"  {cid}: {message}", file=sys.stderr)
        return 1
    return 0


def check_output_format(output_format: str, cases: list, postprocessing: dict | None) -> None:
    """One InputError line before any prediction when a case cannot be written as ``output_format``."""
    from fusionseg.data.formats import prediction_extension

    for _, images in cases:
        prediction_extension(images[0], output_format)
    if output_format == "dicom-seg":
        from fusionseg.data.backends.dicom_seg import highdicom_module

        highdicom_module()
        if postprocessing is not None:
            raise InputError("--output-format dicom-seg writes no postprocessed maps yet; add --no-postprocess")
