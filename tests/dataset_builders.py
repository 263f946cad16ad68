"""On-disk dataset builders shared by the tests (importable: pytest puts tests/ on sys.path).

``save_any`` writes an array in any registry format with the format's own library (an independent
reference for fusionseg's readers); ``nnunet_dataset`` writes a whole nnU-Net raw dataset;
``check_written_probabilities`` reads ``fusionseg predict --probabilities`` outputs back.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "LPS",
    "OBLIQUE_3D",
    "check_written_probabilities",
    "nnunet_dataset",
    "save_any",
    "save_nifti",
    "write_dataset_json",
]


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    affine = np.eye(4) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


LPS = np.array([-1.0, -1.0, 1.0])  # RAS ↔ LPS (NRRD "left-posterior-superior", ITK)

# An oblique, anisotropic, non-RAS grid: exercises every axis of the geometry conversions.
OBLIQUE_3D = np.array(
    [[0.0, -0.9, 0.1, 12.5], [1.2, 0.0, 0.0, -30.0], [0.0, 0.05, 2.5, 7.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
)


def save_any(path: Path, data: np.ndarray, affine: np.ndarray | None = None, channels: bool = False) -> Path:
    """Write ``data`` ((C,) *S; C first with ``channels``) with the RAS ``affine`` in ``path``'s format, using
    the format's own library directly (an independent reference for fusionseg's readers)."""
    import nrrd
    import SimpleITK as sitk
    from PIL import Image

    name = path.name.lower()
    n = data.ndim - (1 if channels else 0)
    affine = np.eye(n + 1) if affine is None else np.asarray(affine, dtype=np.float64)
    if name.endswith((".nii.gz", ".nii")):
        return save_nifti(path, np.moveaxis(data, 0, -1) if channels else data, affine)
    if name.endswith((".nrrd", ".nhdr")):
        flips = LPS[:, None] if n == 3 else np.ones((n, 1))
        world = affine[:n] * flips
        directions = world[:, :n].T
        header = {"space directions": directions, "space origin": world[:, n], "kinds": ["domain"] * n}
        header.update({"space": "left-posterior-superior"} if n == 3 else {"space dimension": n})
        if channels:
            header["space directions"] = np.vstack([np.full((1, n), np.nan), directions])
            header["kinds"] = ["list", *header["kinds"]]
        nrrd.write(str(path), data, header, index_order="F", detached_header=name.endswith(".nhdr"))
        return path
    if name.endswith((".mha", ".mhd", ".gipl", ".gipl.gz")):
        flips = LPS[:, None] if n == 3 else np.ones((n, 1))
        linear = affine[:n, :n] * flips
        spacing = np.linalg.norm(linear, axis=0)
        arr = np.transpose(data, (*range(n, 0, -1), 0)) if channels else np.transpose(data)
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=channels)
        img.SetSpacing(spacing.tolist())
        img.SetDirection((linear / spacing).ravel().tolist())
        img.SetOrigin((affine[:n, n] * flips[:, 0]).tolist())
        sitk.WriteImage(img, str(path))
        return path
    Image.fromarray(np.moveaxis(data, 0, -1) if channels else data).save(path)
    return path


def write_dataset_json(root: Path, **entries) -> None:
    (root / "dataset.json").write_text(json.dumps(entries))


def nnunet_dataset(
    root: Path,
    images: dict[str, list[np.ndarray]],
    label_maps: dict[str, np.ndarray],
    ext: str,
    affine: np.ndarray | None = None,
    **dataset_json,
) -> Path:
    """An nnU-Net raw dataset: imagesTr/CASE_XXXX{ext} (one file per array), labelsTr/CASE{ext}, dataset.json.

    An image array with a leading channel axis written as one file: pass it as ``(array, True)``.
    """
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case, arrays in images.items():
        for c, array in enumerate(arrays):
            array, channels = array if isinstance(array, tuple) else (array, False)
            save_any(root / "imagesTr" / f"{case}_{c:04d}{ext}", array, affine, channels=channels)
        save_any(root / "labelsTr" / f"{case}{ext}", label_maps[case], affine)
    write_dataset_json(root, file_ending=ext, **dataset_json)
    return root


def check_written_probabilities(pred_dir: Path, pre) -> int:
    """Read every written probability file back: sums to 1 (softmax) or lies in [0, 1] (sigmoid), and its
    argmax / region painting is exactly the written label map. Returns how many were checked."""
    from fusionseg.data import read_image, read_label

    layout = pre.label_layout  # of the model's Preprocessing
    checked = 0
    for prob_path in sorted(pred_dir.glob("*_probabilities.*")):
        cid = prob_path.name.split("_probabilities")[0]
        label_path = next(p for p in pred_dir.iterdir() if p.name.split(".")[0] == cid)
        probs, _ = read_image(prob_path)
        label, _ = read_label(label_path)
        assert probs.dtype == np.float32 and probs.shape == (layout.out_channels, *label.shape)
        if layout.activation == "softmax":
            np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
        assert probs.min() >= 0.0 and probs.max() <= 1.0
        np.testing.assert_array_equal(layout.to_label_map(probs), label)
        checked += 1
    return checked
