"""Training sets built from the shipped real data (:mod:`fusionseg.resources`; provenance in its README).

- :func:`build_nuclei2d`: the 512×512 fluorescence field split into a left half (x < 256, training)
  and a right half (x ≥ 256, test) — the real-data benchmark's protocol.
- :func:`build_nuclei2d_tiles`: the same field cut into a grid of square tiles; the tiles on the
  grid's diagonal are the test set, the others the training set — the demo's protocol.
- :func:`build_brain3d`: Colin27 T1 with the AAL atlas merged into 7 hemisphere-agnostic groups
  (:data:`AAL_GROUPS`); the left hemisphere trains, the right one mirrored onto its grid tests.

Each writes a dataset folder that :func:`fusionseg.data.scan_dataset` reads (PNG ``folders`` layout
for nuclei, nnU-Net layout for the brain).

Example:
    >>> root = build_nuclei2d_tiles("/tmp/nuclei_tiles", tile=128)   # 12 training + 4 test tiles
    >>> sorted(p.name for p in (root / "test" / "images").iterdir())[:2]
    ['tile_r0_c0.png', 'tile_r1_c1.png']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import numpy as np

from fusionseg.errors import InputError
from fusionseg.resources import real_data_path

__all__ = ["AAL_GROUPS", "aal_group_table", "build_brain3d", "build_nuclei2d", "build_nuclei2d_tiles"]

# AAL region name prefixes (``aal_labels.txt``, hemisphere suffix _L/_R dropped) → merged class.
AAL_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "frontal",
        (
            "Precentral",
            "Frontal_",
            "Rolandic_Oper",
            "Supp_Motor_Area",
            "Olfactory",
            "Rectus",
            "Paracentral_Lobule",
        ),
    ),
    ("parietal", ("Postcentral", "Parietal_", "SupraMarginal", "Angular", "Precuneus")),
    ("temporal", ("Heschl", "Temporal_", "Fusiform")),
    ("occipital", ("Calcarine", "Cuneus", "Lingual", "Occipital_")),
    ("limbic_insula", ("Insula", "Cingulum_", "Hippocampus", "ParaHippocampal", "Amygdala")),
    ("deep_grey", ("Caudate", "Putamen", "Pallidum", "Thalamus")),
    ("cerebellum", ("Cerebelum_", "Vermis_")),
)

# Colin27/AAL grid (181×217×181, 1 mm, affine origin −90): voxel 90 is the midline x = 0 mm.
# Left hemisphere = voxels [11, 90) (x = −79…−1 mm), right = [91, 170) (x = +1…+79 mm); the midline
# slice is in neither. The atlas spans x voxels 17…162, so 6 mm of margin stay on the lateral side.
_MIDLINE, _HALF_WIDTH = 90, 79
_MARGIN = 6  # voxels kept around the atlas' bounding box along y and z


# ------------------------------------------------------------------------------------------ nuclei


def _read_nuclei(source: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(image uint16, mask 0/255 uint8) of the field, both (512, 512) for the shipped copy."""
    from PIL import Image

    source = Path(source) if source is not None else real_data_path("nuclei2d")
    image = np.asarray(Image.open(source / "image.png"))
    mask = np.asarray(Image.open(source / "mask.png"))
    if image.shape != mask.shape or image.ndim != 2:
        raise InputError(f"{source}: image.png {image.shape} and mask.png {mask.shape} must be equal 2D arrays")
    return image, np.where(mask > 0, 255, 0).astype(np.uint8)


def _write_nuclei_case(folder: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    from PIL import Image

    for sub, array in (("images", image), ("masks", mask)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(array)).save(folder / sub / f"{name}.png")


def _write_nuclei_json(dest: Path) -> None:
    meta = {"name": "nuclei2d", "channel_names": {"0": "fluorescence"}, "labels": {"background": 0, "nucleus": 1}}
    (dest / "dataset.json").write_text(json.dumps(meta) + "\n")


def build_nuclei2d(dest: str | Path, source: str | Path | None = None) -> Path:
    """``dest/images/left.png`` + mask (training) and ``dest/test/images/right.png`` + mask (test).

    Left = columns x < 256 of the 512×512 field, right = x ≥ 256 (not mirrored; masks 0/255).
    ``source``: a folder with ``image.png`` and ``mask.png`` (default: the shipped ``nuclei2d``).
    """
    dest = Path(dest)
    image, mask = _read_nuclei(source)
    half = image.shape[1] // 2
    for folder, name, cols in ((dest, "left", slice(0, half)), (dest / "test", "right", slice(half, None))):
        _write_nuclei_case(folder, name, image[:, cols], mask[:, cols])
    _write_nuclei_json(dest)
    return dest


def build_nuclei2d_tiles(dest: str | Path, tile: int = 128, source: str | Path | None = None) -> Path:
    """The field cut into ``tile``×``tile`` tiles ``tile_rR_cC.png``: the diagonal (R = C) tests, the rest trains.

    512×512 with ``tile=128``: a 4×4 grid → 12 training tiles in ``dest/images`` + ``dest/masks``,
    4 test tiles in ``dest/test/images`` + ``dest/test/masks`` (every test tile has training neighbours).
    """
    dest = Path(dest)
    image, mask = _read_nuclei(source)
    rows, cols = image.shape[0] // tile, image.shape[1] // tile
    if tile < 16 or min(rows, cols) < 2:
        raise ValueError(f"tile must be >= 16 and give at least a 2×2 grid of {image.shape}, got {tile}")
    for r in range(rows):
        for c in range(cols):
            window = (slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile))
            folder = dest / "test" if r == c else dest
            _write_nuclei_case(folder, f"tile_r{r}_c{c}", image[window], mask[window])
    _write_nuclei_json(dest)
    return dest


# ------------------------------------------------------------------------------------------ brain


def aal_group_table(labels_txt: str | Path) -> dict[int, int]:
    """AAL id → merged class (1 … len(AAL_GROUPS)) from ``aal_labels.txt`` (``id name code`` lines)."""
    table = {}
    for line in Path(labels_txt).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        region_id, name = int(parts[0]), parts[1]
        group = next((k for k, (_, prefixes) in enumerate(AAL_GROUPS, 1) if name.startswith(prefixes)), None)
        if group is None:
            raise InputError(f"{labels_txt}: AAL region {name!r} is not in any merged group; extend AAL_GROUPS")
        table[region_id] = group
    return table


def build_brain3d(dest: str | Path, source: str | Path | None = None) -> Path:
    """nnU-Net layout: left hemisphere → ``imagesTr``/``labelsTr``, mirrored right → ``imagesTs``/``labelsTs``.

    Image = ``t1.nii.gz`` (with skull); label = AAL merged by :func:`aal_group_table`. Both halves are
    cropped to the atlas' y/z bounding box (+6 mm) and share one grid (the right half mirrored in x):
    (79, 192, 158) voxels at 1 mm. ``source``: default the shipped ``brain3d``.
    """
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

    dest = Path(dest)
    source = Path(source) if source is not None else real_data_path("brain3d")
    # nib.load is typed FileBasedImage; NIfTI loads as SpatialImage
    t1 = cast(SpatialImage, nib.load(str(source / "t1.nii.gz")))
    aal = cast(SpatialImage, nib.load(str(source / "aal.nii.gz")))
    image, atlas = np.asarray(t1.dataobj), np.asarray(aal.dataobj).astype(np.int64)
    affine = np.asarray(t1.affine, dtype=np.float64)
    if image.shape != (181, 217, 181) or not np.allclose(affine[:3, :3], np.eye(3)) or affine[0, 3] != -_MIDLINE:
        raise InputError(f"{source}: expected the Colin27/AAL 181×217×181 1 mm grid with x origin −90 mm")
    lut = np.zeros(int(atlas.max()) + 1, dtype=np.uint8)
    for region_id, group in aal_group_table(source / "aal_labels.txt").items():
        if region_id < lut.size:
            lut[region_id] = group
    label = lut[atlas]
    ys, zs = (np.nonzero(label.any(axis=a))[0] for a in ((0, 2), (0, 1)))
    y0, y1 = max(ys[0] - _MARGIN, 0), min(ys[-1] + 1 + _MARGIN, image.shape[1])
    z0, z1 = max(zs[0] - _MARGIN, 0), min(zs[-1] + 1 + _MARGIN, image.shape[2])
    left = slice(_MIDLINE - _HALF_WIDTH, _MIDLINE)
    right_mirrored = slice(_MIDLINE + _HALF_WIDTH, _MIDLINE, -1)  # x = +79 … +1 mm → mirrored to −79 … −1 mm
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ np.array([left.start, y0, z0]) + affine[:3, 3]
    for split, case, xs in (("Tr", "left", left), ("Ts", "right_mirrored", right_mirrored)):
        (dest / f"images{split}").mkdir(parents=True, exist_ok=True)
        (dest / f"labels{split}").mkdir(parents=True, exist_ok=True)
        img = np.ascontiguousarray(image[xs, y0:y1, z0:z1])
        lab = np.ascontiguousarray(label[xs, y0:y1, z0:z1])
        nib.save(nib.Nifti1Image(img, crop_affine), str(dest / f"images{split}" / f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, crop_affine), str(dest / f"labels{split}" / f"{case}.nii.gz"))
    labels = {"background": 0, **{name: k for k, (name, _) in enumerate(AAL_GROUPS, 1)}}
    meta = {"name": "brain3d", "channel_names": {"0": "T1"}, "labels": labels, "file_ending": ".nii.gz"}
    (dest / "dataset.json").write_text(json.dumps({**meta, "numTraining": 1}, indent=2))
    return dest
