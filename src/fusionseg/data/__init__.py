"""Data layer: dataset discovery, file I/O with geometry, MONAI preprocessing, phantoms, input checks.

Example:
    >>> from fusionseg.data import make_phantom_dataset, scan_dataset, build_preprocessing, train_transforms
    >>> info = scan_dataset(make_phantom_dataset("/tmp/phantom2d", spatial_dims=2))
    >>> pre = build_preprocessing(info)
    >>> batch = train_transforms(pre)(case_dict(info.cases[0]))   # list of num_samples patch dicts
"""

from fusionseg.data.datasets import Case, DatasetInfo, infer_modality, scan_dataset
from fusionseg.data.io import read_header, read_image, read_label, write_label
from fusionseg.data.phantoms import make_phantom_dataset, phantom
from fusionseg.data.transforms import (
    build_preprocessing,
    case_dict,
    eval_transforms,
    load_for_inference,
    save_prediction,
    train_transforms,
)
from fusionseg.data.validation import find_input_error, load_checked, validate_case, validate_dataset

__all__ = [
    "Case",
    "DatasetInfo",
    "build_preprocessing",
    "case_dict",
    "eval_transforms",
    "find_input_error",
    "infer_modality",
    "load_checked",
    "load_for_inference",
    "make_phantom_dataset",
    "phantom",
    "read_header",
    "read_image",
    "read_label",
    "save_prediction",
    "scan_dataset",
    "train_transforms",
    "validate_case",
    "validate_dataset",
    "write_label",
]
