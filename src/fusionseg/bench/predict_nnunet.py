"""``fusionseg bench predict --nnunet``: one nnU-Net checkpoint predicted by nnU-Net v2 and by fusionseg.

Per volume and class count: an nnU-Net model folder (``plans.json``, ``dataset.json``,
``fold_0/checkpoint_final.pth``) of nnU-Net's default ``PlainConvUNet`` at the plan spacing, CT
normalisation, random weights with the segmentation head scaled ×20 (class margins closer to a
trained network's, so that the labels compared are not mostly near-ties); the checkpoint is imported
with ``fusionseg import-weights`` and the case predicted by ``nnUNetv2_predict_from_modelfolder``
(``-device cpu -npp 1 -nps 1``, no TTA: the same windows as ``fusionseg predict`` without ``--tta``) and
by ``fusionseg predict``, each a separate process tree sampled for peak memory. Reported: wall time,
peak memory and the share of voxels whose labels agree.

Example:
    fusionseg bench predict --nnunet --size 288,288,160 --classes 4,64
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from fusionseg.bench.scale import _run, print_row

__all__ = ["NNUNET_COMMAND", "nnunet_model_folder", "nnunet_rows", "read_labels"]

NNUNET_COMMAND = "nnUNetv2_predict_from_modelfolder"
CT_INTENSITIES = {"max": 200.0, "mean": 60.0, "median": 50.0, "min": -1000.0, "percentile_00_5": -1000.0,
                  "percentile_99_5": 180.0, "std": 60.0}  # fmt: skip


def nnunet_model_folder(
    folder: Path, classes: int, spacing: tuple[float, ...], patch: tuple[int, ...], features: tuple[int, ...]
) -> Path:
    """An nnU-Net v2 training output folder with a random-weight ``3d_fullres`` checkpoint → ``fold_0``'s checkpoint.

    ``spacing`` and ``patch`` in x, y, z (NIfTI order); nnU-Net's plans hold them as z, y, x.
    """
    import torch

    from fusionseg.files import atomic_write
    from fusionseg.nnunet.phantoms import make_plans
    from fusionseg.nnunet.trainers import network_from_trainer

    plans = make_plans(patch[::-1], patch[:2][::-1], features, spacing[::-1], "CTNormalization", CT_INTENSITIES)
    labels = {"background": 0, **{f"class{k}": k for k in range(1, classes)}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    torch.manual_seed(0)
    net = network_from_trainer("nnUNetTrainer", plans, "3d_fullres", 1, classes)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv3d) and m.out_channels == classes:
                m.weight *= 20
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    init = {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset, "device": "cpu"}
    checkpoint = {"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer", "init_args": init,
                  "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 0}  # fmt: skip
    path = folder / "fold_0" / "checkpoint_final.pth"
    with atomic_write(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def _nnunet_command() -> str | None:
    script = Path(sys.executable).parent / NNUNET_COMMAND
    return str(script) if script.exists() else shutil.which(NNUNET_COMMAND)


def read_labels(path: Path) -> np.ndarray:
    """The label array of a NIfTI prediction."""
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)  # type: ignore[attr-defined]  # load is typed FileBasedImage


def nnunet_rows(
    work: Path,
    name: str,
    images: Path,
    classes: int,
    model: dict,
    overlap: float,
    predict_options: list[str],
    env: dict,
) -> list[dict]:
    """Predict the case in ``images`` with nnU-Net and fusionseg on one checkpoint of ``classes`` → two result rows.

    ``model``: :func:`nnunet_model_folder`'s ``spacing``, ``patch`` and ``features``; ``overlap``: of the windows
    (nnU-Net's step is 1 − overlap); ``predict_options``: the options of ``fusionseg predict`` (its ``--overlap`` too).
    """
    command = _nnunet_command()
    if command is None:
        raise SystemExit(f"{NNUNET_COMMAND} is not installed: install the nnunet extra (docs/nnunet.md)")
    folder = work / f"nnunet_{name}_{classes}"
    checkpoint = nnunet_model_folder(folder, classes, **model)
    imported = work / f"imported_{name}_{classes}.pt"
    fusionseg = [sys.executable, "-m", "fusionseg"]
    _run([*fusionseg, "import-weights", "--weights", str(checkpoint), "--output", str(imported)], env)
    runs = {
        "nnU-Net": [command, "-i", str(images), "-o", str(work / f"pred_{name}_{classes}_nnunet"), "-m", str(folder),
                    "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta", "-step_size",
                    str(1 - overlap),
                    "--disable_progress_bar"],
        "fusionseg": [*fusionseg, "predict", "--checkpoint", str(imported), "--input", str(images), "--output",
                      str(work / f"pred_{name}_{classes}_fusionseg"), *predict_options],
    }  # fmt: skip
    rows = []
    for predictor, cmd in runs.items():
        wall, peak, _ = _run(cmd, env)
        rows.append({"size": name, "classes": classes, "path": predictor, "wall_s": wall, "peak_mib": peak})
    theirs = read_labels(work / f"pred_{name}_{classes}_nnunet" / "ct_000.nii.gz")
    ours = read_labels(work / f"pred_{name}_{classes}_fusionseg" / "ct_000.nii.gz")
    rows[1]["agreement"] = float(np.mean(theirs == ours)) if theirs.shape == ours.shape else 0.0
    for row in rows:
        print_row(row, 5)
    return rows
