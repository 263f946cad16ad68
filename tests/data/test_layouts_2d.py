"""Public 2D datasets as they unpack: Kvasir-SEG (JPEG masks), ISIC 2018 task 1, CVC-ClinicDB (TIFF / PNG).

Small fakes in each exact layout (folder and file names, formats, licence files, JPEG noise on masks)
are scanned, trained on and predicted through the CLI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusionseg.cli import main as cli
from fusionseg.data import read_label, scan_dataset
from fusionseg.data.io import BINARY_MASK_RULE
from fusionseg.errors import InputError

SIZE = (40, 48)  # H, W


def _case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RGB image (H, W, 3) uint8 with a bright disc, and its 0/255 mask."""
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    cy, cx, r = rng.integers(14, 26), rng.integers(14, 34), rng.integers(6, 11)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8) * 255
    image = rng.normal(60, 12, (*SIZE, 3)) + (mask[..., None] > 0) * np.array([120, 60, 40])
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _kvasir(root: Path, n: int = 4) -> dict[str, np.ndarray]:
    """Kvasir-SEG: images/NAME.jpg, masks/NAME.jpg (RGB JPEG masks with compression noise), kavsir_bboxes.json."""
    rng, truth = np.random.default_rng(0), {}
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "kavsir_bboxes.json").write_text("{}")
    for i in range(n):
        name = f"cju{i}qkwl35piu0993l0dewei{i}"
        image, mask = _case(rng)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=90)
        Image.fromarray(np.repeat(mask[..., None], 3, -1)).save(root / "masks" / f"{name}.jpg", quality=60)
        truth[name] = mask
    return truth


def _isic(root: Path, n: int = 4) -> dict[str, np.ndarray]:
    """ISIC 2018 task 1: JPEG inputs, NAME_segmentation.png 0/255 masks, licence files, a validation split."""
    rng, truth = np.random.default_rng(1), {}
    folders = {
        "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
        "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    }
    for images, masks in folders.values():
        for folder in (images, masks):
            (root / folder).mkdir(parents=True)
            (root / folder / "ATTRIBUTION.txt").write_text("ISIC Archive")
            (root / folder / "LICENSE.txt").write_text("CC-BY-NC")
    for i in range(n + 1):
        split = "train" if i < n else "val"
        name = f"ISIC_{i if split == 'train' else 12255:07d}"
        image, mask = _case(rng)
        Image.fromarray(image).save(root / folders[split][0] / f"{name}.jpg", quality=90)
        Image.fromarray(mask).save(root / folders[split][1] / f"{name}_segmentation.png")
        truth[name] = mask
    return truth


def _cvc(root: Path, n: int = 4, ext: str = ".tif") -> dict[str, np.ndarray]:
    """CVC-ClinicDB: Original/N.tif (RGB) + Ground Truth/N.tif (0/255), equal names (or the PNG release)."""
    rng, truth = np.random.default_rng(2), {}
    (root / "Original").mkdir(parents=True)
    (root / "Ground Truth").mkdir()
    for i in range(1, n + 1):
        image, mask = _case(rng)
        Image.fromarray(image).save(root / "Original" / f"{i}{ext}")
        Image.fromarray(mask).save(root / "Ground Truth" / f"{i}{ext}")
        truth[str(i)] = mask
    return truth


LAYOUTS = {
    "kvasir": (_kvasir, "folders", "images"),
    "isic": (_isic, "ISIC 2018 task 1", "ISIC2018_Task1-2_Validation_Input"),
    "cvc-tif": (_cvc, "CVC-ClinicDB", "Original"),
    "cvc-png": (lambda root: _cvc(root, ext=".png"), "CVC-ClinicDB", "Original"),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layouts_scan_with_binary_masks(tmp_path, name):
    build, layout, _ = LAYOUTS[name]
    truth = build(tmp_path / name)
    info = scan_dataset(tmp_path / name)
    assert info.layout == layout and info.spatial_dims == 2 and info.channel_names == ["R", "G", "B"]
    assert info.labels == {0: "background", 1: "class1"} and info.mask_rule == BINARY_MASK_RULE
    assert len(info.cases) == 4
    assert len(info.test_cases) == (1 if name == "isic" else 0)
    for case in [*info.cases, *info.test_cases]:
        raw = np.asarray(Image.open(case.label).convert("L"))
        label, _ = read_label(case.label)
        if case.label.suffix == ".jpg":  # compression noise: values other than 0 and 255 near the edges
            assert len(np.unique(raw)) > 2
        np.testing.assert_array_equal(label, truth[case.case_id] // 255)


def test_unpaired_files_are_listed_in_one_error(tmp_path):
    root = tmp_path / "isic"
    _isic(root)
    (root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000001_segmentation.png").unlink()
    (root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000009_segmentation.png").write_bytes(
        (root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png").read_bytes()
    )
    with pytest.raises(InputError) as err:
        scan_dataset(root)
    message = str(err.value)
    assert "\n" not in message
    assert "ISIC_0000001.jpg: no mask found (expected" in message and "ISIC_0000001_segmentation.png)" in message
    assert "1 image(s) without a mask: ISIC_0000001.jpg" in message
    assert "1 mask(s) without an image: ISIC_0000009_segmentation.png" in message
    cvc = tmp_path / "cvc"
    _cvc(cvc)
    (cvc / "Ground Truth").rename(cvc / "GT")
    with pytest.raises(InputError, match=r"found Original/ but no Ground Truth/ folder"):
        scan_dataset(cvc)


@pytest.mark.parametrize("name", ["kvasir", "isic", "cvc-tif"])
def test_layouts_train_and_predict_through_the_cli(tmp_path, name, capsys):
    build, _, predict_folder = LAYOUTS[name]
    build(tmp_path / name)
    run = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path / name), "--output", str(run), "--model", "unet", "--model-kwargs",
            '{"features": [8, 16]}', "--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "2",
            "--patch-size", "32,32", "--no-progress"]  # fmt: skip
    assert cli(argv) == 0
    log = capsys.readouterr().out
    assert log.count(BINARY_MASK_RULE) == 1
    images = tmp_path / name / predict_folder
    out = tmp_path / "pred"
    assert cli(["predict", "--checkpoint", str(run / "best.pt"), "--input", str(images), "--output", str(out),
                "--no-progress"]) == 0  # fmt: skip
    inputs = sorted(p for p in images.iterdir() if p.suffix in (".jpg", ".tif", ".png"))
    written = sorted(p for p in out.iterdir() if not p.name.startswith("."))  # not the rerun marker
    assert [p.name.split(".")[0] for p in written] == [p.name.split(".")[0] for p in inputs]
    for path in written:
        mask = np.asarray(Image.open(path))
        assert mask.shape == SIZE and set(np.unique(mask)) <= {0, 255}
