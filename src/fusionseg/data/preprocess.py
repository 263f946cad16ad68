"""Preprocess a dataset once to a cache folder of memory-mappable cases (resumable, atomic per case).

The plan's folder is ``<cache root>/<slug>-<plan hash>-<data key>/``: the slug is the dataset's name
reduced to safe characters (:func:`fusionseg.data.identity.slug`; it cannot leave the cache root),
the plan hash names the preprocessing and the data key the training cases' content
(:mod:`fusionseg.data.identity`). The same files reached through another path share the folder;
other files never do, whatever their name. Per training case:

- ``CASE_image.npy``: float32 (C, *S), read → reoriented → resampled to the plan → normalised →
  cropped to the box of the voxels non-zero in any channel (the same steps as prediction, plus the crop);
- ``CASE_label.npy``: int16 (*S) on the same grid;
- ``CASE_fg.npz``: up to 10,000 sampled voxel coordinates per foreground label value (``label_K``:
  int32 (n, D)), for foreground oversampling without scanning the volume;
- ``CASE.json`` — written last, so a case is complete exactly when it exists: its shape, crop box,
  the case's content key, the plan hash, and a record (size, mtime, CRC-32, shape, dtype) of each
  file above, checked whenever the case is opened (:mod:`fusionseg.data.cache_records`).

Every file goes through :func:`fusionseg.files.atomic_write`; a kill at any moment leaves complete
cases and at most one incomplete one (without its ``.json``), which the next run redoes. A case whose
files no longer match their records (truncated, replaced, missing) is redone by the next run and
refused in one line by :func:`load_case`. While it writes, :func:`preprocess_dataset` holds
:func:`fusionseg.files.folder_lock` on the folder (a second writer gets one line naming the holder);
a complete case is only ever rewritten with the same content, so readers need no lock. Unchanged
cases of an edited dataset are hard-linked from the folder of its earlier content (same plan hash)
instead of being preprocessed again. A case that cannot be read is reported in one line and
skipped; an error while *writing* (full disk, permissions) removes that case's files and stops with
an :class:`InputError`.

The cache root is ``--cache``, else ``$FUSIONSEG_CACHE``, else ``$XDG_CACHE_HOME/fusionseg/preprocessed``
(``~/.cache/fusionseg/preprocessed``). It needs about 4 bytes per voxel and channel after resampling
and cropping, plus 2 per label voxel (a 512×512×96 CT at 0.8×0.8×2.5 mm: 120 MB per case).

Example:
    >>> plan = plan_dataset(scan_dataset("Dataset003_Liver"))
    >>> report = preprocess_dataset(scan_dataset("Dataset003_Liver"), plan, workers=2)
    >>> case = load_case(report.folder, "liver_0")   # memory-mapped arrays, checked against their records
    >>> case["image"].shape, case["locations"][1].shape
    ((1, 426, 426, 190), (10000, 3))
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from fusionseg.data.cache_records import CASE_FILES, CrcWriter, check_case_files, file_record
from fusionseg.data.datasets import Case, DatasetInfo
from fusionseg.data.fingerprint import CACHE_ENV, default_cache_root, training_case_keys
from fusionseg.data.identity import case_key, data_key, slug
from fusionseg.data.normalization import nonzero_box
from fusionseg.data.plan_record import PLAN_FILE, Plan, save_plan
from fusionseg.data.preprocessing import Preprocessing
from fusionseg.data.workers import process_pool
from fusionseg.errors import FusionSegError, InputError
from fusionseg.faults import maybe_fail
from fusionseg.files import atomic_write, folder_lock, write_text_atomic

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
_HEX12 = re.compile(r"^[0-9a-f]{12}$")


def cache_folder(plan: Plan, cache: str | Path | None = None) -> Path:
    """The plan's folder: ``<cache or default root>/<slug of the dataset name>-<plan hash>-<data key>``.

    Always directly inside the cache root; InputError for a plan without a valid ``hash`` and ``data_key``.
    """
    root = Path(cache).expanduser() if cache else default_cache_root()
    plan_hash, key = plan.hash, plan.data_key
    if not (isinstance(plan_hash, str) and _HEX12.match(plan_hash) and isinstance(key, str) and _HEX12.match(key)):
        raise InputError("the plan has no valid hash and data_key (an older fusionseg's?); plan the dataset again")
    return root / f"{slug(plan.dataset)}-{plan_hash}-{key}"


def _read_props(folder: Path, case_id: str) -> dict | None:
    try:
        props = json.loads((folder / f"{case_id}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return props if isinstance(props, dict) else None


def _cached_state(folder: Path, case_id: str, key: str, plan_hash: str) -> tuple[dict | None, str | None]:
    """(props, None) when the case is complete and intact in ``folder`` for ``key``; (None, why not) else
    (why not is None when the case was never written there)."""
    props = _read_props(folder, case_id)
    if props is None:
        exists = (folder / f"{case_id}.json").exists()
        return None, "its CASE.json cannot be read" if exists else None
    if props.get("plan_hash") != plan_hash or props.get("case_key") != key:
        return None, "it was made from other input files"
    problem = check_case_files(folder, case_id, props)
    return (None, problem) if problem else (props, None)


def _link_from_sibling(folder: Path, case_id: str, key: str, plan_hash: str) -> Path | None:
    """Hard-link an intact copy of the case (same content key and plan) from another folder of the cache
    root into ``folder`` → the source folder, or None when there is none (or links are not supported)."""
    for sibling in sorted(folder.parent.glob(f"*-{plan_hash}-*")):
        if sibling == folder or not sibling.is_dir():
            continue
        props, _ = _cached_state(sibling, case_id, key, plan_hash)
        if props is None:
            continue
        made = []
        try:
            (folder / f"{case_id}.json").unlink(missing_ok=True)
            for suffix in CASE_FILES:
                if suffix in props["files"]:
                    tmp = folder / f".{case_id}{suffix}.link-{os.getpid()}"
                    tmp.unlink(missing_ok=True)
                    os.link(sibling / f"{case_id}{suffix}", tmp)
                    made.append(tmp)
                    os.replace(tmp, folder / f"{case_id}{suffix}")
            write_text_atomic(folder / f"{case_id}.json", json.dumps(props))
            return sibling
        except (OSError, InputError):
            for tmp in made:
                tmp.unlink(missing_ok=True)
            return None
    return None


def preprocess_case(case: Case, pre: Preprocessing) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read, check, reorient, resample, normalise, crop one case → (image (C, *S) float32, label (*S) int16, props)."""
    from fusionseg.data.transforms import NormalizeChannelsd, geometry_pipeline

    d = geometry_pipeline(pre, with_label=case.label is not None)(
        {"image": [str(p) for p in case.images], **({"label": str(case.label)} if case.label else {})}
    )
    raw = d["image"].as_tensor().numpy()
    box = nonzero_box(raw)
    spacing = [float(s) for s in d["image"].pixdim[: pre.spatial_dims]]
    image = NormalizeChannelsd(pre)(d)["image"].as_tensor().numpy()
    channels_box = (slice(None), *box)
    image = np.ascontiguousarray(image[channels_box], dtype=np.float32)
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


def _save_npy(path: Path, array: np.ndarray) -> dict:
    """Write ``array`` to ``path`` atomically → its integrity record."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        out = CrcWriter(f)
        np.save(out, array)
    return file_record(path, out.crc, array)


def _write_case(folder: Path, case: Case, pre: Preprocessing, plan_hash: str, key: str, root: Path | None) -> dict:
    """Preprocess ``case`` and write its files (``.json`` last) → its properties.

    ``key`` is the content key the case had when the run started: a case whose files change while it
    is read is refused (InputError), never cached under the old key.
    """
    image, label, props = preprocess_case(case, pre)
    try:
        unchanged = case_key(case, root) == key
    except OSError:
        unchanged = False
    if not unchanged:
        raise InputError(f"{case.images[0]}: the case changed while it was preprocessed; run again when it is stable")
    paths = [folder / f"{case.case_id}{suffix}" for suffix in (*CASE_FILES, ".json")]
    paths[3].unlink(missing_ok=True)  # not complete from here on
    try:
        records = {CASE_FILES[0]: _save_npy(paths[0], image)}
        maybe_fail("preprocess.mid_case")
        if label is not None:
            records[CASE_FILES[1]] = _save_npy(paths[1], label)
            locations = _locations(label, pre.label_layout.ignore_label, zlib.crc32(case.case_id.encode()))
            with atomic_write(paths[2]) as tmp, open(tmp, "wb") as f:
                np.savez(f, **locations)  # type: ignore[arg-type]  # numpy's stub: a ** dict could fill allow_pickle
            records[CASE_FILES[2]] = file_record(paths[2])
            props["labels_present"] = sorted(int(k.split("_")[1]) for k in locations)
        props.update(plan_hash=plan_hash, case_key=key, files=records)
        write_text_atomic(paths[3], json.dumps(props))
    except (OSError, InputError) as err:
        for path in paths:
            path.unlink(missing_ok=True)
        raise _WriteError(f"could not write case {case.case_id} to {folder}: {err}") from None
    maybe_fail("preprocess.case_written")
    return props


class _WriteError(InputError):
    """Writing the cache failed (full disk, permissions): stops the whole run."""


def _run_one(
    case: Case, pre: Preprocessing, folder: Path, plan_hash: str, key: str, root: Path | None
) -> tuple[str, str | None]:
    """(case id, None) on success, (case id, one-line reason) when the case cannot be read."""
    try:
        _write_case(folder, case, pre, plan_hash, key, root)
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
    plan: Plan,
    cache: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> PreprocessReport:
    """Preprocess every training case of ``info`` for ``plan`` that is not already complete and intact.

    ``workers`` > 1 uses that many processes (0 or 1: this process). Holds the folder's lock while it
    writes (InputError naming the holder if another process writes there); writes ``plans.json``
    beside the cases. InputError if the training files changed since ``plan`` was made. Returns a
    :class:`PreprocessReport`.
    """
    start = time.perf_counter()
    folder = cache_folder(plan, cache)
    pre, plan_hash = plan.preprocessing, plan.hash
    keys = training_case_keys(info)
    if data_key(keys) != plan.data_key:
        raise InputError(f"{info.root}: the training files changed since the dataset was planned; plan it again")
    report = PreprocessReport(folder)
    if not _todo(info, folder, keys, plan_hash, report, log=None):
        if not (folder / PLAN_FILE).exists():
            save_plan(plan, folder / PLAN_FILE)
        log(f"preprocess: nothing to do, all {len(info.cases)} cases are in {folder}")
        report.seconds = time.perf_counter() - start
        _check_some_foreground(info, folder)
        return report
    with folder_lock(folder, "preprocessed cache"):
        save_plan(plan, folder / PLAN_FILE)
        report.reused.clear()
        todo_cases = _todo(info, folder, keys, plan_hash, report, log)  # again: another writer may have done some
        if todo_cases:
            _write_cases(info, todo_cases, folder, pre, plan_hash, keys, workers, progress, log, report, start)
        else:
            log(f"preprocess: nothing to do, all {len(info.cases)} cases are in {folder}")
    report.seconds = time.perf_counter() - start
    _check_some_foreground(info, folder)
    if todo_cases:
        log(
            f"preprocess: {len(report.done)} cases in {report.seconds:.1f} s"
            + (f", {len(report.failed)} skipped" if report.failed else "")
        )
    return report


def _check_some_foreground(info: DatasetInfo, folder: Path) -> None:
    """InputError when every preprocessed training label is all background: nothing to learn, and Dice would
    score the empty prediction as perfect (a misread mask format, or the wrong label folder)."""
    present = [_read_props(folder, c.case_id) for c in info.cases if c.label is not None]
    if not present or any(p is None or p.get("labels_present", [1]) for p in present):
        return
    raise InputError(
        f"{info.root}: all {len(present)} training labels hold no foreground class after reading; check the label "
        "files (values, colour or alpha channel, the right labelsTr/masks folder) and the labels in dataset.json"
    )


def _todo(
    info: DatasetInfo,
    folder: Path,
    keys: dict[str, str],
    plan_hash: str,
    report: PreprocessReport,
    log: Callable[[str], None] | None,
) -> list[Case]:
    """The cases of ``info`` not intact in ``folder``; the others go to ``report.reused``. With ``log``
    (the lock held), damaged cases are named and unchanged ones are linked from earlier folders first."""
    todo = []
    linked: dict[Path, int] = {}
    for case in info.cases:
        props, problem = _cached_state(folder, case.case_id, keys[case.case_id], plan_hash)
        if props is None and log is not None:
            if problem:
                log(f"preprocess: case {case.case_id} in the cache is redone: {problem}")
            source = _link_from_sibling(folder, case.case_id, keys[case.case_id], plan_hash)
            if source is not None:
                linked[source] = linked.get(source, 0) + 1
                props = {}
        if props is None:
            todo.append(case)
        else:
            report.reused.append(case.case_id)
    if log is not None:  # cases are linked only with a log
        for source, count in linked.items():
            log(f"preprocess: {count} unchanged case(s) linked from {source}")
    return todo


def _write_cases(
    info: DatasetInfo,
    todo_cases: list[Case],
    folder: Path,
    pre: Preprocessing,
    plan_hash: str,
    keys: dict[str, str],
    workers: int,
    progress: bool,
    log: Callable[[str], None],
    report: PreprocessReport,
    start: float,
) -> None:
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
                jobs = [
                    pool.submit(_run_one, case, pre, folder, plan_hash, keys[case.case_id], info.root)
                    for case in todo_cases
                ]
                for job in as_completed(jobs):
                    finished(*job.result())
        else:
            for case in todo_cases:
                finished(*_run_one(case, pre, folder, plan_hash, keys[case.case_id], info.root))
    finally:
        if bar is not None:
            bar.close()


def _bar(total: int, progress: bool):
    if not (progress and sys.stdout.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="preprocess", unit="case", dynamic_ncols=True)


def load_case(folder: str | Path, case_id: str, mmap: bool = True) -> dict:
    """A preprocessed case: ``{"image": (C, *S) float32, "label": (*S) int16 or None, "locations": {K: (n, D)},
    "props": dict}`` — the arrays memory-mapped (read-only) unless ``mmap`` is False.

    The files are checked against the records written with them (size, shape, dtype, CRC-32 of small or
    changed files): a missing, truncated or replaced file is an InputError, never other voxels.
    """
    folder = Path(folder)
    redo = "run `fusionseg preprocess` (or train) again to redo it"
    props = _read_props(folder, case_id)
    if props is None:
        if (folder / f"{case_id}.json").exists():
            raise InputError(f"case {case_id} in {folder}: its CASE.json cannot be read; {redo}")
        raise InputError(f"case {case_id} is not preprocessed in {folder}; run `fusionseg preprocess` again")
    problem = check_case_files(folder, case_id, props)
    if problem:
        raise InputError(f"case {case_id} in {folder} is damaged: {problem}; {redo}")
    mode: Literal["r"] | None = "r" if mmap else None
    try:
        image = np.load(folder / f"{case_id}_image.npy", mmap_mode=mode, allow_pickle=False)
        label, locations = None, {}
        if CASE_FILES[1] in props["files"]:
            label = np.load(folder / f"{case_id}_label.npy", mmap_mode=mode, allow_pickle=False)
        if CASE_FILES[2] in props["files"]:
            with np.load(folder / f"{case_id}_fg.npz", allow_pickle=False) as z:
                locations = {int(k.split("_")[1]): z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"case {case_id} in {folder} cannot be read ({err}); {redo}") from None
    return {"image": image, "label": label, "locations": locations, "props": props}
