"""A folder of cases with one checkpoint or an ensemble → label maps (and probabilities) in each input's geometry.

:func:`predict_files` averages the probabilities of several models (an ensemble), applies
largest-component postprocessing when asked and writes label maps in the dataset's original label
values; by default slab by slab within a memory budget (:mod:`fusionseg.inference.slab_predict`: the
whole K-class map never exists), or holding the whole map from
:func:`fusionseg.inference.sliding_window.predict_ensemble` and writing it via ``data.save_prediction``
(``whole_volume``, the reference). Finished cases are skipped on a rerun with the same models and
options; checkpoints of another framework go to its registered predictor
(:mod:`fusionseg.inference.predictors`). ``amp_dtype`` is the autocast dtype of the windows (None:
float32), as :func:`fusionseg.runtime.precision.choose_inference_amp` chose it.

Example:
    >>> written, failed = predict_files(models, pres, [("case1", [Path("case1.nii.gz")])], Path("preds"))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fusionseg.data.formats import prediction_extension as _output_ext
from fusionseg.data.formats import probability_extension
from fusionseg.data.transforms import settings_of, write_input_grid_labels, write_input_grid_probabilities
from fusionseg.errors import for_each_case
from fusionseg.faults import maybe_fail
from fusionseg.files import ResumableOutputs, atomic_write, ensure_writable_dir, removed_on_error
from fusionseg.inference.predictors import predictor_for
from fusionseg.inference.prefetch import CasePrefetcher
from fusionseg.inference.slab_inference import SlabPlan, windows_bar
from fusionseg.inference.slab_predict import predict_label_map, slab_layout
from fusionseg.inference.sliding_window import predict_ensemble
from fusionseg.runtime.memory_budget import default_memory_budget

if TYPE_CHECKING:
    from fusionseg.data.preprocessing import AnyPreprocessing

__all__ = ["predict_files"]


def _save_label_map(probs: torch.Tensor, meta: dict, out_path: Path, plan: dict | None, binary_as_255: bool) -> Path:
    """Label map of ``probs`` on the input grid (``data.save_prediction``), postprocessed, in the dataset's
    original label values (the preprocessing's ``original_labels``, after ``fusionseg relabel``), written atomically."""
    from fusionseg.data import save_prediction

    with atomic_write(out_path) as tmp:
        save_prediction(probs, meta, tmp)
        _finish_label_file(tmp, meta, plan, binary_as_255)
    return out_path


def _finish_label_file(path: Path, meta: dict, plan: dict | None, binary_as_255: bool) -> None:
    """Postprocess a written label file with ``plan`` (when given), then map it back to the dataset's original
    label values (the preprocessing's ``original_labels``, after ``fusionseg relabel``)."""
    if plan is not None:
        from fusionseg.inference.postprocess import postprocess_label_file

        postprocess_label_file(path, plan, binary_as_255=binary_as_255)
    original = settings_of(meta).original_labels
    if original:
        from fusionseg.data.relabel import restore_original_label_file

        restore_original_label_file(path, list(original))


def predict_files(
    model: nn.Module | Sequence[nn.Module],
    pre: AnyPreprocessing | Sequence[AnyPreprocessing],
    cases: list[tuple[str, list[Path]]],
    output: Path,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    tta: bool = False,
    probabilities: bool = False,
    postprocessing: dict | None = None,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    output_format: str = "auto",
    original_labels: bool = True,
    memory: int | None = None,
    whole_volume: bool = False,
    prefetch: bool = True,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Predict every case → (written label files, [(case_id, error message)] of the cases that failed).

    A model trained on a relabelled dataset (``pre.original_labels``) writes label maps in the
    original values unless ``original_labels`` is False (probabilities keep the class order).

    ``model``/``pre``: one model and its preprocessing, or lists of them (an ensemble: probabilities are
    averaged). ``output_format``: ``"auto"`` (the input's format), ``"nifti"`` or ``"dicom-seg"`` (DICOM
    series inputs; ``data.formats.OUTPUT_FORMATS``). The label map is computed from the probabilities on
    the input grid (argmax, or regions painted in ``regions_class_order``), so it equals that of the
    written probabilities; a ``postprocessing`` plan (:mod:`fusionseg.inference.postprocess`) then cleans the
    label map only.

    Cases are predicted slab by slab within ``memory`` bytes (default
    :func:`~fusionseg.runtime.memory_budget.default_memory_budget`; :mod:`fusionseg.inference.slab_predict`);
    ``whole_volume`` holds each case's whole class map instead (the reference the slabs are tested against).
    With ``prefetch`` the next case is read and preprocessed in a background thread while one is predicted
    (:class:`~fusionseg.inference.prefetch.CasePrefetcher`; two images in memory).
    """
    from fusionseg.data import load_for_inference
    from fusionseg.data.preprocessing import own_preprocessing

    models = list(model) if isinstance(model, Sequence) else [model]
    pres = list(pre) if isinstance(pre, Sequence) else [pre] * len(models)
    if len(pres) != len(models):
        raise ValueError(f"{len(models)} models but {len(pres)} preprocessings")
    foreign = predictor_for(pres[0].kind)
    if foreign is not None:  # e.g. imported from nnU-Net: its own preprocessing, sliding window and export
        ensure_writable_dir(output, "prediction folder")
        resumable = ResumableOutputs(output, _fingerprint(models, pres, {"overlap": overlap, "tta": tta}))
        return foreign(
            models, pres, cases, output, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta,
            probabilities=probabilities, postprocessing=postprocessing, device=device, amp_dtype=amp_dtype,
            progress=progress, resumable=resumable, memory=memory, whole_volume=whole_volume,
        )  # fmt: skip
    own = [own_preprocessing(p) for p in pres]  # fusionseg's own sliding window from here on
    ensure_writable_dir(output, "prediction folder")
    options = {"overlap": overlap, "tta": tta, "postprocessing": postprocessing, "format": output_format}
    options["amp"] = amp_dtype is not None  # a bool: the fingerprint does not depend on the device's dtype
    if not original_labels:
        options["original_labels"] = False
    resumable = ResumableOutputs(output, _fingerprint(models, own, options))

    def outputs(cid: str, images: list[Path]) -> list[Path]:
        label = output / f"{cid}{_output_ext(images[0], output_format)}"
        return [label, output / f"{cid}_probabilities{probability_extension(images[0])}"] if probabilities else [label]

    budget = int(memory) if memory is not None else default_memory_budget()
    stats = {"windows": 0, "described": False}

    def predict_case(cid: str, images: list[Path]) -> Path:
        out_path, *prob_path = outputs(cid, images)
        image, meta = loader.get(cid, images)
        if not original_labels:
            meta["preprocessing"] = replace(settings_of(meta), original_labels=None)
        binary_as_255 = own[0].binary_as_255
        if whole_volume:
            probs = predict_ensemble(
                models, own, torch.as_tensor(image), overlap=overlap, sw_batch_size=sw_batch_size, tta=tta,
                device=device, amp_dtype=amp_dtype,
            )  # fmt: skip
            resumable.claim(out_path, *prob_path)
            _save_label_map(probs, meta, out_path, postprocessing, binary_as_255)
            if prob_path:
                maybe_fail("predict.probabilities")  # between the two files of a case
                with removed_on_error(out_path):
                    _save_probabilities(probs, meta, prob_path[0])
            resumable.record(out_path, *prob_path, inputs=images)
            return out_path
        plan = SlabPlan.build(
            models, own, image.shape[1:], overlap=overlap, tta=tta, sw_batch_size=sw_batch_size, device=device,
            amp_dtype=amp_dtype,
        )  # fmt: skip
        plan.fit_batch(budget)
        layout = slab_layout(plan, meta, budget)
        if progress and not stats["described"]:
            print(
                f"{cid}: {layout.describe(tuple(meta['original_shape']))}, {plan.windows} windows "
                f"({plan.sw_batch_size} per pass)"
            )
            stats["described"] = True
        with windows_bar(plan, cid, progress), _scratch(output, cid, plan, meta, bool(prob_path)) as scratch:
            labels = predict_label_map(plan, image, meta, layout, scratch)
            stats["windows"] += plan.windows
            resumable.claim(out_path, *prob_path)
            _save_input_grid_labels(labels, meta, out_path, postprocessing, binary_as_255)
            if prob_path:
                assert scratch is not None  # _scratch gives the array whenever probabilities are wanted
                maybe_fail("predict.probabilities")  # between the two files of a case
                with removed_on_error(out_path), atomic_write(prob_path[0]) as tmp:
                    write_input_grid_probabilities(scratch, meta, tmp)
        resumable.record(out_path, *prob_path, inputs=images)
        return out_path

    def already_done(cid: str, images: list[Path]) -> Path | None:
        paths = outputs(cid, images)
        return paths[0] if resumable.done(*paths, inputs=images) else None

    resumable.check_outputs([p for c, i in cases for p in outputs(c, i)], [p for _, i in cases for p in i])
    start = time.perf_counter()
    loader = CasePrefetcher(
        cases if prefetch else [],
        lambda cid, images: load_for_inference(list(images), own[0]),
        skip=lambda cid, images: already_done(cid, images) is not None,
    )
    with loader:
        written, failed = for_each_case(cases, predict_case, progress, already_done)
    elapsed = time.perf_counter() - start
    if progress and stats["windows"]:
        ran = len(cases) - len(failed)
        print(
            f"predicted {ran} case(s) in {elapsed:.1f} s: {ran / elapsed:.3g} cases/s, "
            f"{stats['windows'] / elapsed:.3g} windows/s"
        )
    return written, failed


@contextlib.contextmanager
def _scratch(output: Path, cid: str, plan: SlabPlan, meta: dict, wanted: bool) -> Iterator[np.ndarray | None]:
    """An on-disk float32 array (K, *input shape) the case's probabilities go into slab by slab (None unless wanted)."""
    if not wanted:
        yield None
        return
    path = output / f".{cid}.probabilities.tmp-{os.getpid()}"
    shape = (plan.num_classes, *(int(s) for s in meta["original_shape"]))
    try:
        yield np.memmap(path, dtype=np.float32, mode="w+", shape=shape)
    finally:
        path.unlink(missing_ok=True)


def _save_input_grid_labels(
    labels: np.ndarray, meta: dict, out_path: Path, plan: dict | None, binary_as_255: bool
) -> Path:
    """Write a label map on the input grid atomically, postprocessed with ``plan`` when given."""
    with atomic_write(out_path) as tmp:
        write_input_grid_labels(labels, meta, tmp)
        _finish_label_file(tmp, meta, plan, binary_as_255)
    return out_path


def _fingerprint(models: Sequence[nn.Module], pres: Sequence[AnyPreprocessing], options: dict) -> str:
    """Hash of the models' configs and weights, their preprocessing and ``options``: what makes a prediction."""
    stored = [p.to_dict() for p in pres]
    digest = hashlib.sha256(
        json.dumps(
            [[getattr(m, "config", None) for m in models], stored, options], sort_keys=True, default=str
        ).encode()
    )
    for model in models:
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _save_probabilities(probs: torch.Tensor, meta: dict, out_path: Path) -> Path:
    """Float probabilities (K, *S) on the input's grid and geometry (``data.save_probabilities``), atomically."""
    from fusionseg.data import save_probabilities

    with atomic_write(out_path) as tmp:
        save_probabilities(probs, meta, tmp)
    return out_path
