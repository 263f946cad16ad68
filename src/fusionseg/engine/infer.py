"""Sliding-window inference: one image, a folder of cases, one checkpoint or an ensemble (``fusionseg predict``).

:func:`predict_volume` runs MONAI's Gaussian-weighted sliding window over one preprocessed image,
with optional flip test-time augmentation; the window is rounded up to the network's
``size_multiple`` and images smaller than it are padded (and cropped back) automatically. Outputs
are softmax class probabilities, or sigmoid region probabilities for region-based models
(``pre["activation"]``). :func:`load_model` rebuilds model and preprocessing from a checkpoint;
:func:`resolve_checkpoints` expands a cross-validation run folder into its ``fold_*/best.pt``;
:func:`predict_files` writes label maps (and optionally probabilities) in each input's own
geometry, averaging the probabilities of several models (an ensemble) and applying
largest-component postprocessing when asked; by default slab by slab within a memory budget
(:mod:`fusionseg.engine.slab_predict`: the whole K-class map never exists), or holding the whole map
and writing it via ``data.save_prediction`` (``whole_volume``, the reference). Mixed precision follows
:func:`fusionseg.engine.runtime.amp_dtype`.

Example:
    >>> probs = predict_volume(model, image, pre, overlap=0.5)   # image (C, *S) → probs (K, *S)
    >>> label_map = probs.argmax(0)
    >>> checkpoints, plan = resolve_checkpoints([Path("runs/cv")])   # fold_0/best.pt ... + postprocessing.json
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusionseg.data.formats import IMAGE_EXTENSIONS, probability_extension
from fusionseg.data.formats import prediction_extension as _output_ext
from fusionseg.data.formats import split_extension as _split_ext
from fusionseg.data.transforms import write_input_grid_labels, write_input_grid_probabilities
from fusionseg.engine.memory_budget import default_memory_budget
from fusionseg.engine.predictors import predictor_for
from fusionseg.engine.prefetch import CasePrefetcher
from fusionseg.engine.progress import progress_bar
from fusionseg.engine.runtime import amp_dtype, autocast
from fusionseg.engine.slab_inference import SlabPlan, window_size
from fusionseg.engine.slab_predict import predict_label_map, slab_layout
from fusionseg.errors import InputError, for_each_case
from fusionseg.faults import maybe_fail
from fusionseg.files import ResumableOutputs, atomic_write, ensure_writable_dir, removed_on_error

__all__ = [
    "check_same_preprocessing",
    "find_inputs",
    "load_model",
    "load_models",
    "predict_ensemble",
    "predict_files",
    "predict_volume",
    "resolve_checkpoints",
    "window_size",
]

# Preprocessing entries that only shape training (a model of an ensemble may differ in them).
TRAINING_ONLY_KEYS = ("patch_size", "num_samples")


def _flips(spatial_dims: int) -> list[tuple[int, ...]]:
    """Identity plus each single spatial-axis flip (dims of a (B, C, *S) tensor)."""
    return [(), *((d + 2,) for d in range(spatial_dims))]


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    image: torch.Tensor,
    pre: dict | None = None,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    tta: bool = False,
    device: str | torch.device | None = None,
    amp: bool = False,
    roi_size: Sequence[int] | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Class (softmax) or region (sigmoid) probabilities of one image.

    Args:
        model: network returning logits (B, K, *S) or a tuple of them (the first is used).
        image: preprocessed image (C, *S).
        pre: preprocessing dict (its ``patch_size`` sets the window; whole image when absent).
        overlap: window overlap fraction in [0, 1).
        sw_batch_size: windows per forward pass.
        tta: average over flips of each spatial axis (1 + spatial_dims passes).
        device: where the network runs (default: the model's device); blending happens there too.
        amp: mixed precision where it is fast (fp16 on CUDA, bf16 on CPUs with native bf16; else fp32).
        roi_size: explicit window size (overrides ``pre``); rounded up to ``model.size_multiple``.
        activation: ``"softmax"`` or ``"sigmoid"`` (default: ``pre["activation"]``, else softmax).

    Returns:
        float32 probabilities (K, *S) on the CPU.
    """
    from monai.inferers import sliding_window_inference

    if image.ndim < 3:
        raise InputError(f"predict_volume expects an image (C, *S) with 2 or 3 spatial dims, got {tuple(image.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    activation = activation or (pre or {}).get("activation") or "softmax"
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    activate = torch.sigmoid if activation == "sigmoid" else (lambda logits: torch.softmax(logits, 1))
    spatial = tuple(image.shape[1:])
    multiple = int(model.size_multiple)
    patch = roi_size if roi_size is not None else (pre or {}).get("patch_size")
    roi = window_size(spatial, patch, multiple)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    dtype = amp_dtype(device, amp)
    was_training = model.training
    model.eval()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            out = model(x)
        if isinstance(out, list | tuple):
            out = out[0]
        return activate(out.float())

    x = image[None].float().to(device)
    flips = _flips(len(spatial)) if tta else [()]
    probs = None
    try:
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            p = sliding_window_inference(
                xi, roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian", device=device, sw_device=device
            )
            p = torch.as_tensor(p)  # drop MetaTensor
            p = torch.flip(p, dims) if dims else p
            probs = p if probs is None else probs + p
    finally:
        model.train(was_training)
    return (probs / len(flips))[0].float().cpu()


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict, dict]:
    """Rebuild the network of a fusionseg checkpoint → (model in eval mode, preprocessing, checkpoint)."""
    from fusionseg.engine.checkpoint import load_checkpoint, rebuild_model

    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("format") != "fusionseg" or "model" not in ckpt or "state_dict" not in ckpt:
        raise InputError(
            f"{checkpoint} is not a fusionseg training checkpoint (needs 'model', 'preprocessing' and 'state_dict'); "
            "use the best.pt/last.pt written by `fusionseg train`, or convert with `fusionseg import-weights`"
        )
    if not isinstance(ckpt.get("preprocessing"), dict):
        raise InputError(f"{checkpoint} carries no preprocessing; it cannot be used for prediction")
    model = rebuild_model(ckpt)
    return model.to(device).eval(), ckpt["preprocessing"], ckpt


def resolve_checkpoints(paths: Sequence[str | Path]) -> tuple[list[Path], Path | None]:
    """Checkpoint files named by ``paths`` → (files, postprocessing JSON of a cross-validation run or None).

    A file is used as is. A folder stands for its ``fold_*/best.pt`` (a cross-validation run, in fold
    order; its ``postprocessing.json`` is returned when present) or else its ``best.pt``.
    """
    from fusionseg.engine.postprocess import POSTPROCESSING_FILE

    files: list[Path] = []
    plan = None
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        folds = sorted(path.glob("fold_*/best.pt"), key=lambda p: _fold_number(p.parent.name))
        if folds:
            files += folds
            if (path / POSTPROCESSING_FILE).is_file() and len(paths) == 1:
                plan = path / POSTPROCESSING_FILE
        elif (path / "best.pt").is_file():
            files.append(path / "best.pt")
        else:
            raise InputError(
                f"--checkpoint {path} is a folder without best.pt or fold_*/best.pt; "
                "pass a checkpoint file or a run folder"
            )
    return files, plan


def _fold_number(name: str) -> tuple[int, str]:
    tail = name.rpartition("_")[2]
    return (int(tail), name) if tail.isdigit() else (1 << 30, name)


def check_same_preprocessing(pres: Sequence[dict], sources: Sequence[str | Path]) -> None:
    """InputError naming the first model whose preprocessing differs from the first one's (training-only keys aside)."""
    reference = pres[0]
    for pre, source in zip(pres[1:], sources[1:]):
        keys = sorted((set(reference) | set(pre)) - set(TRAINING_ONLY_KEYS))
        differ = [k for k in keys if reference.get(k) != pre.get(k)]
        if differ:
            raise InputError(
                f"{source}: preprocessing differs from {sources[0]} ({', '.join(differ[:3])}); an ensemble needs "
                "models trained on the same dataset with the same preprocessing"
            )


def load_models(
    checkpoints: Sequence[str | Path], device: str | torch.device = "cpu"
) -> tuple[list[nn.Module], list[dict]]:
    """Rebuild every checkpoint of an ensemble → (models, their preprocessing); they must share the preprocessing."""
    if not checkpoints:
        raise InputError("--checkpoint: no checkpoint given; pass best.pt file(s) or a run folder")
    models, pres = [], []
    for path in checkpoints:
        model, pre, _ = load_model(path, device)
        models.append(model)
        pres.append(pre)
    check_same_preprocessing(pres, [str(p) for p in checkpoints])
    return models, pres


def predict_ensemble(models: Sequence[nn.Module], pres: Sequence[dict], image: torch.Tensor, **kwargs) -> torch.Tensor:
    """Mean of :func:`predict_volume` over ``models`` (each with its own window) → probabilities (K, *S)."""
    total = None
    for model, pre in zip(models, pres):
        probs = predict_volume(model, image, pre, **kwargs)
        total = probs if total is None else total.add_(probs)
    return total / len(models) if len(models) > 1 else total


def find_inputs(source: Path, in_channels: int = 1) -> list[tuple[str, list[Path]]]:
    """Cases to predict: a file, or every image file in a folder → [(case_id, [channel files])].

    With ``in_channels > 1``, nnU-Net style names ``CASE_0000.nii.gz, CASE_0001.nii.gz, ...`` are grouped
    into one case; otherwise each file is a case (e.g. an RGB PNG carries its channels itself).
    DICOM series count as files: ``source`` may be a series folder, and a folder's sub-folders holding
    series are cases (named by the sub-folder, or by the series UID where it holds several).
    """
    from fusionseg.data import dicom_series

    source = Path(source)
    own_series = dicom_series(source) if source.is_dir() else []
    if source.is_file():
        files = [source]
    elif own_series:
        files = own_series
    elif source.is_dir():
        visible = sorted(p for p in source.iterdir() if not p.name.startswith("."))
        files = [p for p in visible if p.is_file() and _split_ext(p)[1] in IMAGE_EXTENSIONS]
        for folder in (p for p in visible if p.is_dir()):
            # a folder of .dcm files that hold no readable series is a case that fails in one line, not skipped
            files += dicom_series(folder) or ([folder] if _has_dicom_names(folder) else [])
        if not files:
            raise InputError(
                f"{source} holds no image files ({', '.join(IMAGE_EXTENSIONS)}) and no folders of DICOM slices"
            )
    else:
        raise InputError(f"input {source} does not exist; pass an image file or a folder of images")
    if in_channels == 1:
        return [(_case_id(path, strip_any_channel=False), [path]) for path in files]
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(_case_id(path, strip_any_channel=True), []).append(path)
    for cid, paths in groups.items():
        if len(paths) not in (1, in_channels):  # one file may carry every channel (RGB PNG, 4-D NIfTI)
            raise InputError(
                f"case {cid!r} has {len(paths)} channel files but the model expects {in_channels}; "
                f"name them {cid}_0000 ... {cid}_{in_channels - 1:04d}"
            )
    return list(groups.items())


def _has_dicom_names(folder: Path) -> bool:
    """Whether ``folder`` holds a visible file named like a DICOM slice (``.dcm``, ``.dicom``, ``.ima``)."""
    return any(p.suffix.lower() in (".dcm", ".dicom", ".ima") and not p.name.startswith(".") for p in folder.iterdir())


def _case_id(path: Path, strip_any_channel: bool) -> str:
    """File name without extension and without an nnU-Net channel suffix (``_0000`` only, unless grouping)."""
    stem, _ = _split_ext(path)
    base, _, idx = stem.rpartition("_")
    if base and len(idx) == 4 and idx.isdigit() and (strip_any_channel or idx == "0000"):
        return base
    return stem


def _save_label_map(probs: torch.Tensor, meta: dict, out_path: Path, plan: dict | None, binary_as_255: bool) -> Path:
    """Label map of ``probs`` on the input grid (``data.save_prediction``), postprocessed, in the dataset's
    original label values (``meta["original_labels"]``, after ``fusionseg relabel``), written atomically."""
    from fusionseg.data import save_prediction

    with atomic_write(out_path) as tmp:
        save_prediction(probs, meta, tmp)
        _finish_label_file(tmp, meta, plan, binary_as_255)
    return out_path


def _finish_label_file(path: Path, meta: dict, plan: dict | None, binary_as_255: bool) -> None:
    """Postprocess a written label file with ``plan`` (when given), then map it back to the dataset's original
    label values (``meta["original_labels"]``, after ``fusionseg relabel``)."""
    if plan is not None:
        from fusionseg.engine.postprocess import postprocess_label_file

        postprocess_label_file(path, plan, binary_as_255=binary_as_255)
    if meta.get("original_labels"):
        from fusionseg.data.relabel import restore_original_label_file

        restore_original_label_file(path, meta["original_labels"])


def predict_files(
    model: nn.Module | Sequence[nn.Module],
    pre: dict | Sequence[dict],
    cases: list[tuple[str, list[Path]]],
    output: Path,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    tta: bool = False,
    probabilities: bool = False,
    postprocessing: dict | None = None,
    device: str | torch.device = "cpu",
    amp: bool = False,
    progress: bool = True,
    output_format: str = "auto",
    original_labels: bool = True,
    memory: int | None = None,
    whole_volume: bool = False,
    prefetch: bool = True,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Predict every case → (written label files, [(case_id, error message)] of the cases that failed).

    A model trained on a relabelled dataset (``pre["original_labels"]``) writes label maps in the
    original values unless ``original_labels`` is False (probabilities keep the class order).

    ``model``/``pre``: one model and its preprocessing, or lists of them (an ensemble: probabilities are
    averaged). ``output_format``: ``"auto"`` (the input's format), ``"nifti"`` or ``"dicom-seg"`` (DICOM
    series inputs; ``data.formats.OUTPUT_FORMATS``). The label map is computed from the probabilities on
    the input grid (argmax, or regions painted in ``regions_class_order``), so it equals that of the
    written probabilities; a ``postprocessing`` plan (:mod:`fusionseg.engine.postprocess`) then cleans the
    label map only.

    Cases are predicted slab by slab within ``memory`` bytes (default
    :func:`~fusionseg.engine.memory_budget.default_memory_budget`; :mod:`fusionseg.engine.slab_predict`);
    ``whole_volume`` holds each case's whole class map instead (the reference the slabs are tested against).
    With ``prefetch`` the next case is read and preprocessed in a background thread while one is predicted
    (:class:`~fusionseg.engine.prefetch.CasePrefetcher`; two images in memory).
    """
    from fusionseg.data import load_for_inference

    models = list(model) if isinstance(model, Sequence) else [model]
    pres = list(pre) if not isinstance(pre, dict) else [pre] * len(models)
    if len(pres) != len(models):
        raise ValueError(f"{len(models)} models but {len(pres)} preprocessing dicts")
    foreign = predictor_for(pres[0].get("kind"))
    if foreign is not None:  # e.g. imported from nnU-Net: its own preprocessing, sliding window and export
        ensure_writable_dir(output, "prediction folder")
        resumable = ResumableOutputs(output, _fingerprint(models, pres, {"overlap": overlap, "tta": tta}))
        return foreign(
            models, pres, cases, output, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta,
            probabilities=probabilities, postprocessing=postprocessing, device=device, amp=amp, progress=progress,
            resumable=resumable, memory=memory, whole_volume=whole_volume,
        )  # fmt: skip
    ensure_writable_dir(output, "prediction folder")
    options = {"overlap": overlap, "tta": tta, "amp": amp, "postprocessing": postprocessing, "format": output_format}
    if not original_labels:
        options["original_labels"] = False
    resumable = ResumableOutputs(output, _fingerprint(models, pres, options))

    def outputs(cid: str, images: list[Path]) -> list[Path]:
        label = output / f"{cid}{_output_ext(images[0], output_format)}"
        return [label, output / f"{cid}_probabilities{probability_extension(images[0])}"] if probabilities else [label]

    budget = int(memory) if memory is not None else default_memory_budget()
    stats = {"windows": 0, "described": False}

    def predict_case(cid: str, images: list[Path]) -> Path:
        out_path, *prob_path = outputs(cid, images)
        image, meta = loader.get(cid, images)
        if not original_labels:
            meta["original_labels"] = None
        binary_as_255 = bool(pres[0].get("binary_as_255", False))
        if whole_volume:
            probs = predict_ensemble(
                models, pres, torch.as_tensor(image), overlap=overlap, sw_batch_size=sw_batch_size, tta=tta,
                device=device, amp=amp,
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
            models, pres, image.shape[1:], overlap=overlap, tta=tta, sw_batch_size=sw_batch_size, device=device, amp=amp
        )
        plan.fit_batch(budget)
        layout = slab_layout(plan, meta, budget)
        if progress and not stats["described"]:
            print(
                f"{cid}: {layout.describe(tuple(meta['original_shape']))}, {plan.windows} windows "
                f"({plan.sw_batch_size} per pass)"
            )
            stats["described"] = True
        with _case_bar(plan, cid, progress), _scratch(output, cid, plan, meta, bool(prob_path)) as scratch:
            labels = predict_label_map(plan, image, meta, layout, scratch)
            stats["windows"] += plan.windows
            resumable.claim(out_path, *prob_path)
            _save_input_grid_labels(labels, meta, out_path, postprocessing, binary_as_255)
            if prob_path:
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
        lambda cid, images: load_for_inference(list(images), pres[0]),
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
def _case_bar(plan: SlabPlan, cid: str, progress: bool) -> Iterator[None]:
    """A terminal bar of the case's windows (done / total, ETA) while it is predicted; nothing in logs."""
    bar = progress_bar(plan.windows, desc=cid, enabled=progress)
    plan.on_windows = bar.update if bar is not None else None
    try:
        yield
    finally:
        plan.on_windows = None
        if bar is not None:
            bar.close()


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


def _fingerprint(models: Sequence[nn.Module], pres: Sequence[dict], options: dict) -> str:
    """Hash of the models' configs and weights, their preprocessing and ``options``: what makes a prediction."""
    digest = hashlib.sha256(
        json.dumps(
            [[getattr(m, "config", None) for m in models], list(pres), options], sort_keys=True, default=str
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
