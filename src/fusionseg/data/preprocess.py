"""Preprocess a dataset once to a cache folder of memory-mappable cases (resumable, atomic per case).

Per training case, in the plan's folder ``<cache root>/<dataset>-<plan hash>/``:

- ``CASE_image.npy``: float32 (C, *S), read → reoriented → resampled to the plan → normalised →
  cropped to the box of the voxels non-zero in any channel (the same steps as prediction, plus the crop);
- ``CASE_label.npy``: int16 (*S) on the same grid;
- ``CASE_fg.npz``: up to 10,000 sampled voxel coordinates per foreground label value (``label_K``:
  int32 (n, D)), for foreground oversampling without scanning the volume;
- ``CASE.json`` — written last, so a case is complete exactly when it exists: its shape, crop box,
  the input files' size and mtime (a changed input redoes the case) and the plan hash.

Every file goes through :func:`fusionseg.files.atomic_write`; a kill at any moment leaves complete
cases and at most one incomplete one (without its ``.json``), which the next run redoes. A case that
cannot be read is reported in one line and skipped; an error while *writing* (full disk,
permissions) removes that case's files and stops with an :class:`InputError`.

The cache root is ``--cache``, else ``$FUSIONSEG_CACHE``, else ``$XDG_CACHE_HOME/fusionseg/preprocessed``
(``~/.cache/fusionseg/preprocessed``). It needs about 4 bytes per voxel and channel after resampling
and cropping, plus 2 per label voxel (a 512×512×96 CT at 0.8×0.8×2.5 mm: 120 MB per case).

Example:
    >>> plan = plan_dataset(scan_dataset("Dataset003_Liver"))
    >>> report = preprocess_dataset(scan_dataset("Dataset003_Liver"), plan, workers=2)
    >>> case = load_case(report.folder, "liver_0")   # memory-mapped arrays
    >>> case["image"].shape, case["locations"][1].shape
    ((1, 426, 426, 190), (10000, 3))
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusionseg.data.datasets import Case, DatasetInfo
from fusionseg.data.normalization import nonzero_box
from fusionseg.data.plan import CACHE_ENV, PLAN_FILE, default_cache_root, input_signature, save_plan
from fusionseg.data.workers import process_pool
from fusionseg.errors import FusionSegError, InputError
from fusionseg.faults import maybe_fail
from fusionseg.files import atomic_write, ensure_writable_dir, write_text_atomic

__all__ = [
    "CACHE_ENV",
    "MAX_LOCATIONS",
    "PreprocessReport",
    "cache_folder",
    "default_cache_root",
    "load_case",
    "preprocess_case",
    "preprocess_dataset",
]

MAX_LOCATIONS = 10_000  # sampled foreground voxels kept per label value and case


def cache_folder(plan: dict, cache: str | Path | None = None) -> Path:
    """The plan's folder: ``<cache or default root>/<dataset>-<plan hash>``."""
    root = Path(cache).expanduser() if cache else default_cache_root()
    return root / f"{plan['dataset'] or 'dataset'}-{plan['hash']}"


def _is_done(folder: Path, case: Case, plan_hash: str) -> bool:
    marker = folder / f"{case.case_id}.json"
    try:
        props = json.loads(marker.read_text())
        return props.get("plan_hash") == plan_hash and props.get("inputs") == input_signature(case)
    except (OSError, ValueError):
        return False


def preprocess_case(case: Case, pre: dict) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read, check, reorient, resample, normalise, crop one case → (image (C, *S) float32, label (*S) int16, props)."""
    from fusionseg.data.transforms import NormalizeChannelsd, geometry_pipeline

    d = geometry_pipeline(pre, with_label=case.label is not None)(
        {"image": [str(p) for p in case.images], **({"label": str(case.label)} if case.label else {})}
    )
    raw = d["image"].as_tensor().numpy()
    box = nonzero_box(raw)
    spacing = [float(s) for s in d["image"].pixdim[: int(pre["spatial_dims"])]]
    image = NormalizeChannelsd(pre)(d)["image"].as_tensor().numpy()
    image = np.ascontiguousarray(image[(slice(None), *box)], dtype=np.float32)
    label = None
    if "label" in d:
        label = np.ascontiguousarray(np.rint(d["label"].as_tensor().numpy()[0][box]), dtype=np.int16)
    props = {
        "case_id": case.case_id,
        "shape": list(image.shape[1:]),
        "shape_before_crop": list(raw.shape[1:]),
        "crop_box": [[b.start, b.stop] for b in box],
        "spacing": spacing,
    }
    return image, label, props


def _locations(label: np.ndarray, ignore: int | None, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for value in np.unique(label):
        if value <= 0 or (ignore is not None and value == ignore):
            continue
        coords = np.argwhere(label == value).astype(np.int32)
        if len(coords) > MAX_LOCATIONS:
            coords = coords[np.sort(rng.choice(len(coords), MAX_LOCATIONS, replace=False))]
        out[f"label_{int(value)}"] = coords
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _write_case(folder: Path, case: Case, pre: dict, plan_hash: str) -> dict:
    """Preprocess ``case`` and write its files (``.json`` last) → its properties."""
    inputs = input_signature(case)
    image, label, props = preprocess_case(case, pre)
    paths = [folder / f"{case.case_id}{suffix}" for suffix in ("_image.npy", "_label.npy", "_fg.npz", ".json")]
    paths[3].unlink(missing_ok=True)  # not complete from here on
    try:
        _save_npy(paths[0], image)
        maybe_fail("preprocess.mid_case")
        if label is not None:
            _save_npy(paths[1], label)
            locations = _locations(label, pre.get("ignore_label"), zlib.crc32(case.case_id.encode()))
            with atomic_write(paths[2]) as tmp, open(tmp, "wb") as f:
                np.savez(f, **locations)
            props["labels_present"] = sorted(int(k.split("_")[1]) for k in locations)
        props.update(plan_hash=plan_hash, inputs=inputs)
        write_text_atomic(paths[3], json.dumps(props))
    except (OSError, InputError) as err:
        for path in paths:
            path.unlink(missing_ok=True)
        raise _WriteError(f"could not write case {case.case_id} to {folder}: {err}") from None
    maybe_fail("preprocess.case_written")
    return props


class _WriteError(InputError):
    """Writing the cache failed (full disk, permissions): stops the whole run."""


def _run_one(case: Case, pre: dict, folder: Path, plan_hash: str) -> tuple[str, str | None]:
    """(case id, None) on success, (case id, one-line reason) when the case cannot be read."""
    try:
        _write_case(folder, case, pre, plan_hash)
        return case.case_id, None
    except _WriteError:
        raise
    except FusionSegError as err:
        return case.case_id, str(err)
    except Exception as err:  # a reader's own exception
        from fusionseg.data.validation import find_input_error

        user = find_input_error(err)
        if user is None:
            raise
        return case.case_id, str(user)


@dataclass
class PreprocessReport:
    """What :func:`preprocess_dataset` did: the folder, and which cases were done now, before, or failed."""

    folder: Path
    done: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def check_complete(self, case_ids: list[str]) -> None:
        """InputError naming the first of ``case_ids`` that could not be preprocessed."""
        for case_id in case_ids:
            if case_id in self.failed:
                raise InputError(f"case {case_id} could not be preprocessed: {self.failed[case_id]}; fix or remove it")


def preprocess_dataset(
    info: DatasetInfo,
    plan: dict,
    cache: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> PreprocessReport:
    """Preprocess every training case of ``info`` for ``plan`` that is not already complete and unchanged.

    ``workers`` > 1 uses that many processes (0 or 1: this process). Writes ``plans.json`` beside
    the cases. Returns a :class:`PreprocessReport`.
    """
    start = time.perf_counter()
    folder = ensure_writable_dir(cache_folder(plan, cache), "cache folder")
    pre, plan_hash = plan["preprocessing"], plan["hash"]
    save_plan(plan, folder / PLAN_FILE)
    report = PreprocessReport(folder)
    todo_cases = []
    for case in info.cases:
        if _is_done(folder, case, plan_hash):
            report.reused.append(case.case_id)
        else:
            todo_cases.append(case)
    if not todo_cases:
        log(f"preprocess: nothing to do, all {len(info.cases)} cases are in {folder}")
        report.seconds = time.perf_counter() - start
        return report
    log(
        f"preprocess: {len(todo_cases)} of {len(info.cases)} cases → {folder}"
        + (f" ({len(report.reused)} already done)" if report.reused else "")
    )
    bar = _bar(len(todo_cases), progress)

    def finished(case_id: str, error: str | None) -> None:
        if error is None:
            report.done.append(case_id)
        else:
            report.failed[case_id] = error
            log(f"preprocess: skipped case {case_id}: {error}")
        if bar is not None:
            bar.update(1)
        elif progress:
            n = len(report.done) + len(report.failed)
            log(f"preprocess: {n}/{len(todo_cases)} {case_id} ({time.perf_counter() - start:.1f} s)")

    try:
        if workers > 1 and len(todo_cases) > 1:
            with process_pool(min(workers, len(todo_cases))) as pool:
                jobs = [pool.submit(_run_one, case, pre, folder, plan_hash) for case in todo_cases]
                for job in as_completed(jobs):
                    finished(*job.result())
        else:
            for case in todo_cases:
                finished(*_run_one(case, pre, folder, plan_hash))
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - start
    log(
        f"preprocess: {len(report.done)} cases in {report.seconds:.1f} s"
        + (f", {len(report.failed)} skipped" if report.failed else "")
    )
    return report


def _bar(total: int, progress: bool):
    if not (progress and sys.stdout.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="preprocess", unit="case", dynamic_ncols=True)


def load_case(folder: str | Path, case_id: str, mmap: bool = True) -> dict:
    """A preprocessed case: ``{"image": (C, *S) float32, "label": (*S) int16 or None, "locations": {K: (n, D)},
    "props": dict}`` — the arrays memory-mapped (read-only) unless ``mmap`` is False."""
    folder = Path(folder)
    marker = folder / f"{case_id}.json"
    if not marker.exists():
        raise InputError(f"case {case_id} is not preprocessed in {folder}; run `fusionseg preprocess` again")
    props = json.loads(marker.read_text())
    mode = "r" if mmap else None
    image = np.load(folder / f"{case_id}_image.npy", mmap_mode=mode)
    label_path = folder / f"{case_id}_label.npy"
    label = np.load(label_path, mmap_mode=mode) if label_path.exists() else None
    locations = {}
    fg = folder / f"{case_id}_fg.npz"
    if fg.exists():
        with np.load(fg) as z:
            locations = {int(k.split("_")[1]): z[k] for k in z.files}
    return {"image": image, "label": label, "locations": locations, "props": props}
