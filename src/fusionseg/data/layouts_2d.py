"""2D dataset folder layouts: fusionseg's ``images/`` + ``masks/`` and public datasets as they unpack.

Each :class:`Layout2D` names the folder of training images, of masks, the mask-name suffix and the
folders of test images (+ masks) searched in order. Masks pair with images by name
(``NAME``, ``NAME_mask``, ``NAME_segmentation``, ...; any 2D format, JPEG included).

    ==================  ===================================  =========================================
    layout              images                               masks
    ==================  ===================================  =========================================
    folders, Kvasir-SEG images/NAME.png|jpg|tif             masks/ (or labels/) NAME.png|jpg|tif
    ISIC 2018 task 1    ISIC2018_Task1-2_Training_Input/     ISIC2018_Task1_Training_GroundTruth/
                        ISIC_0000000.jpg                     ISIC_0000000_segmentation.png
    CVC-ClinicDB        Original/1.tif (or .png)             Ground Truth/1.tif (or .png)
    ==================  ===================================  =========================================

Example:
    >>> find_layout(Path("data/ISIC2018")).name
    'ISIC 2018 task 1'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CVC_CLINICDB",
    "DOCUMENT_EXTENSIONS",
    "FOLDERS",
    "ISIC_2018",
    "LAYOUTS",
    "Layout2D",
    "find_layout",
    "held_out_folders",
    "mask_folder",
]


@dataclass(frozen=True)
class Layout2D:
    """Where a 2D dataset keeps its images and masks (paths relative to the dataset folder)."""

    name: str
    images: str
    masks: tuple[str, ...]  # the first existing folder holds the masks
    test: tuple[tuple[str, str], ...] = ()  # (images, masks) folders of test cases, the first existing one is used
    skip_documents: bool = False  # the download puts LICENSE.txt / ATTRIBUTION.txt beside the images
    mask_suffix: str = ""  # how the layout names a mask (NAME + suffix + .png), for error messages


FOLDERS = Layout2D("folders", "images", ("masks", "labels"), (("test/images", "test/masks"),))
ISIC_2018 = Layout2D(
    "ISIC 2018 task 1",
    "ISIC2018_Task1-2_Training_Input",
    ("ISIC2018_Task1_Training_GroundTruth",),
    (
        ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
        ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    ),
    skip_documents=True,
    mask_suffix="_segmentation",
)
CVC_CLINICDB = Layout2D("CVC-ClinicDB", "Original", ("Ground Truth",), skip_documents=True)
LAYOUTS = (FOLDERS, ISIC_2018, CVC_CLINICDB)

# Files a download keeps beside its images (licence, attribution, read-me, tables): not cases.
DOCUMENT_EXTENSIONS = (".txt", ".md", ".pdf", ".csv", ".json", ".html", ".xlsx")


def find_layout(root: Path) -> Layout2D | None:
    """The 2D layout whose image folder exists in ``root`` (None: not a 2D folder layout)."""
    return next((layout for layout in LAYOUTS if (root / layout.images).is_dir()), None)


def mask_folder(root: Path, layout: Layout2D) -> Path | None:
    """The existing mask folder of ``layout`` in ``root``, or None."""
    return next((root / name for name in layout.masks if (root / name).is_dir()), None)


def held_out_folders(root: Path, layout: Layout2D) -> tuple[Path, Path] | None:
    """(test images, test masks) folders of ``layout`` in ``root`` (the masks may be absent), or None."""
    return next(((root / i, root / m) for i, m in layout.test if (root / i).is_dir()), None)
