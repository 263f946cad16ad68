"""``fusionseg predict`` for checkpoints imported from nnU-Net: nnU-Net's own preprocessing, window and export.

For a preprocessing of kind ``"nnunet"`` (:class:`~fusionseg.data.preprocessing.NnunetPreprocessing`),
each case goes through the same steps as ``nnUNetv2_predict``: the configuration's preprocessor
(crop to non-zero, transpose to the plans' axis order, resample to the target spacing, normalise per
channel), ``nnUNetPredictor``'s Gaussian-weighted sliding window over the plans' patch size (mirroring
over the trained axes with ``tta``), and resampling / un-cropping / writing in the input's geometry
with the plans' reader-writer. By default the window and the export run slab by slab within a memory
budget (:mod:`fusionseg.nnunet.slabs`: the case's class map never exists whole); with ``whole_volume``,
``probabilities`` (nnU-Net's ``.npz`` holds the whole map) or plans whose resampling is not nnU-Net's
default, ``nnUNetPredictor`` and nnU-Net's export do it. Cases run one after another in this process.

Example:
    >>> written, failed = predict_nnunet_files(model, pre, [("case1", [Path("case1_0000.nii.gz")])], Path("preds"))
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from fusionseg.data.preprocessing import NnunetPreprocessing
from fusionseg.errors import InputError, for_each_case
from fusionseg.files import ResumableOutputs, atomic_write, ensure_writable_dir, removed_on_error
from fusionseg.nnunet.slabs import Resampling, predict_labels
from fusionseg.runtime.memory_budget import default_memory_budget, format_bytes

__all__ = ["make_predictor", "predict_nnunet_files"]


def make_predictor(
    model: nn.Module,
    pre: NnunetPreprocessing,
    *,
    overlap: float = 0.5,
    tta: bool = False,
    device: str | torch.device = "cpu",
) -> nnUNetPredictor:
    """An ``nnUNetPredictor`` around ``model`` for the plans in ``pre`` (tile step = 1 − overlap)."""
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    device = torch.device(device)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a note about CPU devices
        predictor = nnUNetPredictor(
            tile_step_size=1.0 - overlap,
            use_gaussian=True,
            use_mirroring=bool(tta),
            perform_everything_on_device=device.type == "cuda",
            device=device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
    plans_manager = PlansManager(dict(pre.plans))
    predictor.manual_initialization(
        model.to(device).eval(),
        plans_manager,
        plans_manager.get_configuration(pre.configuration),
        [model.state_dict()],
        dict(pre.dataset_json),
        pre.trainer,
        pre.mirror_axes,
    )
    return predictor


def predict_nnunet_files(
    model: nn.Module,
    pre: NnunetPreprocessing,
    cases: list[tuple[str, list[Path]]],
    output: Path,
    *,
    overlap: float = 0.5,
    tta: bool = False,
    probabilities: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    resumable: ResumableOutputs | None = None,
    memory: int | None = None,
    whole_volume: bool = False,
    sw_batch_size: int = 4,
    **_unused,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Predict every case like ``nnUNetv2_predict`` → (written label files, [(case_id, error)] of failed cases).

    ``tta`` is nnU-Net's mirroring over the axes the model was trained with; ``probabilities``
    also writes ``CASE_probabilities.npz`` (key ``probabilities``, (K, *S) in the input's array
    order, as nnU-Net's ``--save_probabilities``). Slabs fit ``memory`` bytes (default
    :func:`~fusionseg.runtime.memory_budget.default_memory_budget`) and run ``sw_batch_size`` windows per
    forward pass; ``amp_dtype`` does not apply (nnU-Net autocasts on CUDA itself). Cases whose files an
    interrupted run with the same model and options wrote (``resumable``) are skipped.
    """
    predictor = make_predictor(model, pre, overlap=overlap, tta=tta, device=device)
    plans_manager, cm = predictor.plans_manager, predictor.configuration_manager
    dataset_json, label_manager = predictor.dataset_json, predictor.label_manager
    ending = dataset_json["file_ending"]
    ensure_writable_dir(output, "prediction folder")
    budget = int(memory) if memory is not None else default_memory_budget()
    described: list[bool] = []

    def predict_case(cid: str, images: list[Path]) -> Path:
        out_path = output / f"{cid}{ending}"
        preprocessor = cm.preprocessor_class(verbose=False)
        data, _, props = preprocessor.run_case([str(p) for p in images], None, plans_manager, cm, dataset_json)
        resampling = Resampling.from_plans(plans_manager, cm, props, data.shape[1:])
        if resampling is not None and not probabilities and not whole_volume:
            if progress and not described:
                print(f"{cid}: memory budget {format_bytes(budget)} for nnU-Net's windows and export, slab by slab")
                described.append(True)
            segmentation = predict_labels(
                predictor,
                torch.from_numpy(data),
                props,
                resampling,
                budget,
                sw_batch_size,
                bar=cid if progress else None,
            )
            probs = None
        else:
            logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
            result = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, plans_manager, cm, label_manager, props, return_probabilities=probabilities
            )
            segmentation, probs = result if probabilities else (result, None)
        if resumable is not None:
            resumable.claim(*outputs(cid))
        with atomic_write(out_path) as tmp:
            plans_manager.image_reader_writer_class().write_seg(segmentation, str(tmp), props)
        if probs is not None:
            with removed_on_error(out_path), atomic_write(outputs(cid)[1]) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(f, probabilities=probs)
        if resumable is not None:
            resumable.record(*outputs(cid), inputs=images)
        return out_path

    def outputs(cid: str) -> list[Path]:
        return [output / f"{cid}{ending}"] + ([output / f"{cid}_probabilities.npz"] if probabilities else [])

    def already_done(cid: str, images: list[Path]) -> Path | None:
        paths = outputs(cid)
        return paths[0] if resumable is not None and resumable.done(*paths, inputs=images) else None

    if resumable is not None:
        resumable.check_outputs([p for cid, _ in cases for p in outputs(cid)], [p for _, i in cases for p in i])
    return for_each_case(cases, predict_case, progress, already_done)
