"""Training at dataset scale: ``fusionseg bench scale [--cases 4,16,64] [--size 512,512,96]``.

Generates CT-like nnU-Net datasets (int16, 0.8×0.8×2.5 mm, a body and three blob organs per case)
with N cases each, then runs, as separate processes, ``fusionseg preprocess`` and a short
``fusionseg train`` on each, and reports per size: preprocessing time and cases/s, training
s/iteration, start-up time (the training process's wall time minus its training time: reading,
planning, model set-up and the final checkpoint write) and the peak memory of the whole
process tree (sum of RssAnon + RssShmem over the process and its children, from /proc, sampled
every 50 ms: anonymous and shared memory, not page cache). When nnU-Net v2 is installed it also
times ``nnUNetv2_plan_and_preprocess -np WORKERS`` on the same data. The last lines print the ratios
of the largest to the smallest dataset (memory and s/iteration should stay near 1).

Four distinct cases are generated; larger datasets hard-link them under new names (the same work
per case for every step, much less generation time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fusionseg.cli.options import add_old_spelling

__all__ = ["build_parser", "ct_case", "main", "make_ct_dataset", "tree_memory_mb"]

SPACING = (0.8, 0.8, 2.5)
_UNIQUE = 4


def ct_case(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume (air −1000, body ~40 HU, noise) and its label map with three blob organs (1, 2, 3)."""
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    body = (xx / 0.85) ** 2 + (yy / 0.65) ** 2 < 1
    image = np.full(shape, -1000, np.int16)
    image[body] = 40
    label = np.zeros(shape, np.uint8)
    for organ, hu in zip((1, 2, 3), (60, 100, 180)):
        centre = rng.uniform(-0.4, 0.4, 3).astype(np.float32)
        radii = rng.uniform(0.12, 0.25, 3).astype(np.float32) * np.array([1, 1, 2.5], np.float32)
        d = ((xx[..., None] - centre[0]) / radii[0]) ** 2 + ((yy[..., None] - centre[1]) / radii[1]) ** 2
        blob = (d + ((z[None, None] - centre[2]) / radii[2]) ** 2) < 1
        image[blob] = hu
        label[blob] = organ
    image += rng.normal(0, 20, shape).astype(np.int16)
    return image, label


def make_ct_dataset(root: Path, num_cases: int, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """An nnU-Net raw dataset of ``num_cases`` CT-like cases (4 distinct ones, hard-linked beyond that)."""
    import nibabel as nib

    affine = np.diag([*SPACING, 1.0])
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_cases):
        image_path, label_path = root / "imagesTr" / f"ct_{i:03d}_0000.nii.gz", root / "labelsTr" / f"ct_{i:03d}.nii.gz"
        if i < _UNIQUE:
            image, label = ct_case(shape, rng)
            for data, path in ((image, image_path), (label, label_path)):
                img = nib.Nifti1Image(data, affine)
                img.set_qform(affine, code=1)
                img.set_sform(affine, code=1)
                nib.save(img, str(path))
        else:
            for path, kind in ((image_path, "images"), (label_path, "labels")):
                source = root / f"{kind}Tr" / path.name.replace(f"ct_{i:03d}", f"ct_{i % _UNIQUE:03d}")
                os.link(source, path)
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "organ1": 1, "organ2": 2, "organ3": 3},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree_memory_mb(pid: int) -> float:
    """RssAnon + RssShmem of ``pid`` and all its descendants (MiB)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(("RssAnon:", "RssShmem:")):
                        total += int(line.split()[1])
        except OSError:
            continue
        stack += _children(p)
    return total / 1024


def _run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Run ``cmd`` → (wall s, peak tree memory MiB, output); raises on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_memory_mb(proc.pid))
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output, _ = proc.communicate()
    done.set()
    thread.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-2000:]}")
    return wall, peak[0], output


WORK_MARKER = ".fusionseg-bench"  # a --workdir holding it was made by a benchmark: its files may be rewritten


@contextlib.contextmanager
def work_folder(workdir: Path | None, prefix: str) -> Iterator[Path]:
    """``workdir`` (kept), or a temporary folder removed at the end: where a benchmark writes its cases and runs.

    A given ``workdir`` must be empty or one a benchmark made before (its marker file): a benchmark rewrites
    fixed names in it, so a folder of other files is refused in one line. One benchmark at a time holds it.
    """
    from fusionseg.errors import InputError
    from fusionseg.files import folder_lock

    work = workdir or Path(tempfile.mkdtemp(prefix=prefix))
    if workdir is not None:
        work.mkdir(parents=True, exist_ok=True)
        if any(work.iterdir()) and not (work / WORK_MARKER).is_file():
            raise InputError(f"--workdir {work} holds files a benchmark did not write; give an empty or new folder")
        (work / WORK_MARKER).touch()
    try:
        with folder_lock(work, "benchmark work folder"):
            yield work
    finally:
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def subprocess_env() -> dict:
    """This environment with this checkout's ``src`` first on PYTHONPATH (the commands run fusionseg from here)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")])}  # fmt: skip


def print_row(row: dict, digits: int) -> None:
    """One result row as a JSON line (floats rounded to ``digits``), flushed at once."""
    print(json.dumps({k: round(v, digits) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


def build_parser(prog: str = "fusionseg bench scale") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="4,16,64", help="dataset sizes in cases (default 4,16,64)")
    p.add_argument("--size", default="512,512,96", help="voxels per case, x,y,z (default 512,512,96)")
    p.add_argument("--workers", type=int, default=2, help="preprocessing processes, ours and nnU-Net's (default 2)")
    p.add_argument("--train-workers", type=int, default=1, help="--workers of the training runs (default 1)")
    add_old_spelling(p, "--num-workers", "--train-workers")
    p.add_argument("--iters-per-epoch", type=int, default=10, help="training iterations per size (default 10)")
    p.add_argument("--patch-size", default="64,64,32", help="training patch (default 64,64,32: CPU-sized)")
    p.add_argument("--features", default="8,16,32,64", help="U-Net features per level (default 8,16,32,64)")
    p.add_argument("--no-nnunet", dest="nnunet", action="store_false", help="skip nnUNetv2_plan_and_preprocess")
    p.add_argument("--workdir", type=Path, default=None, help="where datasets and caches go (default: a temp folder)")
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg bench scale") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.cases.split(",") if n.strip()]
    shape = tuple(int(v) for v in args.size.split(","))
    if len(shape) != 3:
        parser.error(f"--size takes three voxel counts x,y,z, got {args.size}")
    nnunet = args.nnunet and shutil.which("nnUNetv2_plan_and_preprocess") is not None
    env = subprocess_env()
    python = [sys.executable, "-m", "fusionseg"]
    features = json.dumps({"features": [int(f) for f in args.features.split(",")]})
    rows = []
    with work_folder(args.workdir, "fusionseg-bench-scale-") as work:
        for i, n in enumerate(sizes):
            name = f"Dataset{960 + i}_Scale{n}"
            root = make_ct_dataset(work / "nnUNet_raw" / name, n, shape)
            cache = work / "cache"
            pre_wall, pre_peak, _ = _run(
                [*python, "preprocess", "--data", str(root), "--cache", str(cache), "--workers", str(args.workers),
                 "--no-progress", "--patch-size", args.patch_size], env)  # fmt: skip
            out = work / f"run{n}"
            train_wall, train_peak, _ = _run(
                [*python, "train", "--data", str(root), "--cache", str(cache), "--output", str(out), "--epochs", "1",
                 "--iters-per-epoch", str(args.iters_per_epoch), "--val-fraction", "0", "--patch-size", args.patch_size,
                 "--model-kwargs", features, "--workers", str(args.train_workers), "--no-progress", "--device",
                 "cpu"], env)  # fmt: skip
            summary = json.loads((out / "train_summary.json").read_text())
            s_per_it = summary["train_time_s"] / max(summary["steps"], 1)
            startup = train_wall - summary["train_time_s"]  # process start to first iteration, + the final save
            row = {"cases": n, "preprocess_s": pre_wall, "cases_per_s": n / pre_wall, "preprocess_peak_mb": pre_peak,
                   "train_peak_mb": train_peak, "s_per_it": s_per_it, "startup_s": startup}  # fmt: skip
            if nnunet:
                nn_env = {**env, "nnUNet_raw": str(work / "nnUNet_raw"),
                          "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
                          "nnUNet_results": str(work / "nnUNet_results")}  # fmt: skip
                nn_wall, nn_peak, _ = _run(["nnUNetv2_plan_and_preprocess", "-d", str(960 + i), "-c", "3d_fullres",
                                            "-np", str(args.workers), "-npfp", str(args.workers)], nn_env)  # fmt: skip
                row.update(nnunet_preprocess_s=nn_wall, nnunet_preprocess_peak_mb=nn_peak)
            rows.append(row)
            print_row(row, 3)
    _print_table(rows)
    return 0


def _print_table(rows: list[dict]) -> None:
    from fusionseg.evaluation.report import format_table

    columns = ["cases", "preprocess_s", "cases_per_s", "nnunet_preprocess_s", "preprocess_peak_mb",
               "train_peak_mb", "s_per_it", "startup_s"]  # fmt: skip
    table = [[r.get(c, "") if not isinstance(r.get(c), float) else f"{r[c]:.2f}" for c in columns] for r in rows]
    print(format_table(columns, table))
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"train peak memory {last['cases']} vs {first['cases']} cases: "
              f"{last['train_peak_mb'] / first['train_peak_mb']:.2f}×; "
              f"s/iteration: {last['s_per_it'] / first['s_per_it']:.2f}×")  # fmt: skip
        if "nnunet_preprocess_s" in last:
            print(f"preprocessing time vs nnU-Net ({last['cases']} cases): "
                  f"{last['preprocess_s'] / last['nnunet_preprocess_s']:.2f}×")  # fmt: skip
