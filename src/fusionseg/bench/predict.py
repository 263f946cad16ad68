"""Prediction memory and time at CT scale: ``fusionseg bench predict [--size 288,288,160] [--classes 4,64]``.

Writes one CT-like volume per size (int16 HU, ``--spacing`` mm, a body and three blob organs), a
preprocessing planned at ``--target-spacing`` (CT normalisation; the case is resampled to the plan and
the prediction back), and per class count a checkpoint of a small U-Net with DFF skips (random
weights: only memory, time and agreement are measured). Each prediction runs as a separate
``fusionseg predict`` process; its peak memory is that of the whole process tree (RssAnon + RssShmem,
sampled every 50 ms, as ``bench scale``). With ``--whole-volume`` the same case is also predicted by the
whole-volume path (the K-class map held) and the share of equal labels is reported; with ``--nnunet`` one
nnU-Net checkpoint per class count is predicted by nnU-Net's own predictor and by ``fusionseg predict``
(:mod:`fusionseg.bench.predict_nnunet`). The last lines print the ratio of the largest to the smallest
class count's peak (slabs), and fusionseg's time and memory against nnU-Net's.

Example:
    fusionseg bench predict --size 288,288,160 --classes 4,64 --whole-volume --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from fusionseg.bench.predict_nnunet import nnunet_rows, read_labels
from fusionseg.bench.scale import _run, ct_case, print_row, subprocess_env, work_folder
from fusionseg.cli.options import add_old_spelling

__all__ = ["build_parser", "main", "write_ct_case"]


def write_ct_case(folder: Path, shape: tuple[int, int, int], spacing: tuple[float, ...], seed: int = 0) -> Path:
    """A one-case nnU-Net raw dataset (``imagesTr/ct_000_0000.nii.gz``, CT channel) at ``spacing`` → its root."""
    import nibabel as nib

    image, label = ct_case(shape, np.random.default_rng(seed))
    affine = np.diag([*spacing, 1.0])
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), str(folder / "imagesTr" / "ct_000_0000.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(folder / "labelsTr" / "ct_000.nii.gz"))
    labels = {"background": 0, "organ1": 1, "organ2": 2, "organ3": 3}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


def _checkpoint(root: Path, classes: int, args: argparse.Namespace, path: Path) -> Path:
    """A fusionseg checkpoint of a small DFF U-Net with ``classes`` outputs and the dataset's CT preprocessing."""
    from dataclasses import replace

    from fusionseg.checkpoints.checkpoint import build_checkpoint, save_checkpoint
    from fusionseg.data import build_preprocessing, scan_dataset
    from fusionseg.data.labels import LabelLayout
    from fusionseg.nets.registry import create_model

    pre = build_preprocessing(
        scan_dataset(root), target_spacing=_floats(args.target_spacing), patch_size=_ints(args.patch_size)
    )
    names = {"background": 0, **{f"class{k}": k for k in range(1, classes)}}
    pre = replace(pre, label_layout=LabelLayout.from_dataset_json(names))
    kwargs = {"features": _ints(args.features)}
    if args.fusion != "none":
        kwargs["fusion"] = args.fusion
    model = create_model("unet", in_channels=1, out_channels=classes, spatial_dims=3, **kwargs)
    return save_checkpoint(path, build_checkpoint(model, preprocessing=pre, rng=False))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def build_parser(prog: str = "fusionseg bench predict") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument(
        "--size", default="288,288,160", help="volumes x,y,z; several separated by ';' (default 288,288,160)"
    )
    p.add_argument("--classes", default="4,64", help="class counts (default 4,64)")
    p.add_argument("--spacing", default="0.7,0.7,2", help="voxel size of the volumes in mm (default 0.7,0.7,2)")
    p.add_argument("--target-spacing", default="0.8,0.8,2.5", help="the model's spacing in mm (default 0.8,0.8,2.5)")
    p.add_argument("--patch-size", default="128,128,32", help="sliding window (default 128,128,32)")
    p.add_argument("--features", default="8,16,32,64", help="U-Net features per level (default 8,16,32,64)")
    p.add_argument("--fusion", default="dff", help="skip fusion of the U-Net, or none (default dff)")
    p.add_argument("--overlap", default="0.5", help="--overlap of fusionseg predict (default 0.5)")
    p.add_argument("--memory", default=None, help="--memory of fusionseg predict (default: its default)")
    p.add_argument("--threads", default="auto", help="--threads of fusionseg predict (default auto)")
    p.add_argument("--whole-volume", action="store_true", help="also run the whole-volume path; report agreement")
    p.add_argument(
        "--nnunet", action="store_true", help="also predict one nnU-Net checkpoint with nnU-Net's predictor and ours"
    )
    p.add_argument("--workdir", type=Path, default=None, help="where volumes and predictions go (default: temp)")
    add_old_spelling(p, "--plan-spacing", "--target-spacing")
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg bench predict") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    sizes: list[tuple[int, int, int]] = []
    for text in (s for s in args.size.split(";") if s.strip()):
        shape = _ints(text)
        if len(shape) != 3:
            parser.error(f"--size takes volumes of three voxel counts x,y,z (separated by ';'), got {text}")
        sizes.append(shape)
    classes = _ints(args.classes)
    env = subprocess_env()
    options = ["--threads", args.threads, "--overlap", args.overlap]
    memory = ["--memory", args.memory] if args.memory else []
    nnunet_model = {"spacing": _floats(args.target_spacing), "patch": _ints(args.patch_size),
                    "features": _ints(args.features)}  # fmt: skip
    rows = []
    with work_folder(args.workdir, "fusionseg-bench-predict-") as work:
        for shape in sizes:
            name = "x".join(map(str, shape))
            root = write_ct_case(work / f"ct_{name}", shape, _floats(args.spacing))
            image = root / "imagesTr" / "ct_000_0000.nii.gz"
            for k in classes:
                ckpt = _checkpoint(root, k, args, work / f"ck_{name}_{k}.pt")
                paths: list[tuple[str, list[str]]] = [("slabs", [])]
                paths += [("whole-volume", ["--whole-volume"])] if args.whole_volume else []
                outputs = {}
                for path, extra in paths:
                    out = work / f"pred_{name}_{k}_{path}"
                    cmd = [sys.executable, "-m", "fusionseg", "predict", "--checkpoint", str(ckpt), "--input",
                           str(image), "--output", str(out), *options, *extra]  # fmt: skip
                    if path == "slabs":
                        cmd += memory
                    wall, peak, log = _run(cmd, env)
                    outputs[path] = out / "ct_000.nii.gz"
                    slab_line = next((line for line in log.splitlines() if "slab(s)" in line), "")
                    row = {"size": name, "classes": k, "path": path, "wall_s": wall, "peak_mib": peak,
                           "slabs": slab_line.partition(": ")[2]}  # fmt: skip
                    if path == "whole-volume":
                        same = read_labels(outputs["slabs"]) == read_labels(out / "ct_000.nii.gz")
                        row["agreement"] = float(np.mean(same))
                    rows.append(row)
                    print_row(row, 5)
                if args.nnunet:
                    rows += nnunet_rows(
                        work, name, image.parent, k, nnunet_model, float(args.overlap), options + memory, env
                    )
    _print_table(rows)
    return 0


def _print_table(rows: list[dict]) -> None:
    from fusionseg.evaluation.report import format_table

    columns = ["size", "classes", "path", "wall_s", "peak_mib", "agreement"]
    cells = [[f"{r[c]:.5f}" if c == "agreement" and c in r else r.get(c, "") for c in columns] for r in rows]
    print(format_table(columns, cells))
    for size in dict.fromkeys(r["size"] for r in rows):
        slabs = [r for r in rows if r["size"] == size and r["path"] == "slabs"]
        if len(slabs) > 1:
            ratio = slabs[-1]["peak_mib"] / slabs[0]["peak_mib"]
            print(f"{size}: peak with {slabs[-1]['classes']} classes / {slabs[0]['classes']} classes = {ratio:.2f}")
    for theirs, ours in zip(*([r for r in rows if r["path"] == p] for p in ("nnU-Net", "fusionseg"))):
        time_ratio, memory_ratio = ours["wall_s"] / theirs["wall_s"], ours["peak_mib"] / theirs["peak_mib"]
        print(
            f"{ours['size']}, {ours['classes']} classes: fusionseg / nnU-Net time {time_ratio:.2f}, "
            f"peak memory {memory_ratio:.2f}, labels equal {ours['agreement']:.5f}"
        )
