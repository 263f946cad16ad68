"""Data layer: dataset discovery, file formats and I/O with geometry, labels (regions, ignore label),
normalisation, cross-validation splits, MONAI preprocessing, phantoms, training sets built from the shipped
real data (``fusionseg.data.real``), input checks.

Example (a labelled case read whole, then a new image read and its labels written back as ``fusionseg predict`` does):
    >>> from fusionseg import data
    >>> info = data.scan_dataset(data.make_phantom_dataset("/tmp/phantom2d", spatial_dims=2))
    >>> pre = data.build_preprocessing(info)          # a frozen Preprocessing; checkpoints store pre.to_dict()
    >>> sample = data.eval_transforms(pre)(data.case_dict(info.cases[0]))  # a labelled case, whole
    >>> sample["image"].shape, sample["label"].shape
    (torch.Size([1, 96, 96]), torch.Size([1, 96, 96]))
    >>> image, meta = data.load_for_inference(info.cases[0].images, pre)   # a new image: (C, *S) float32
    >>> data.save_prediction(sample["label"][0], meta, "/tmp/pred.png")    # labels or (K, *S) scores → input grid
    PosixPath('/tmp/pred.png')
"""

from fusionseg.data.backends.dicom_io import series_paths as dicom_series
from fusionseg.data.backends.dicom_seg import read_seg as read_dicom_seg
from fusionseg.data.datasets import Case, DatasetInfo, infer_modality, scan_dataset
from fusionseg.data.formats import FORMATS, FileFormat, format_of, prediction_extension, probability_extension
from fusionseg.data.io import read_header, read_image, read_label, write_label, write_probabilities
from fusionseg.data.labels import LabelLayout, labels_to_regions, regions_to_labels, valid_mask
from fusionseg.data.phantoms import make_phantom_dataset, phantom
from fusionseg.data.preprocessing import NnunetPreprocessing, Preprocessing, preprocessing_from_dict
from fusionseg.data.splits import get_fold, load_or_create_splits, make_splits
from fusionseg.data.transforms import (
    build_preprocessing,
    case_dict,
    eval_transforms,
    load_for_inference,
    plain_tensor,
    save_prediction,
    save_probabilities,
)
from fusionseg.data.validation import find_input_error, load_checked, validate_case, validate_dataset

__all__ = [
    "FORMATS",
    "Case",
    "DatasetInfo",
    "FileFormat",
    "LabelLayout",
    "NnunetPreprocessing",
    "Preprocessing",
    "build_preprocessing",
    "case_dict",
    "dicom_series",
    "eval_transforms",
    "find_input_error",
    "format_of",
    "get_fold",
    "infer_modality",
    "labels_to_regions",
    "load_checked",
    "load_for_inference",
    "load_or_create_splits",
    "make_phantom_dataset",
    "make_splits",
    "phantom",
    "plain_tensor",
    "prediction_extension",
    "preprocessing_from_dict",
    "probability_extension",
    "read_dicom_seg",
    "read_header",
    "read_image",
    "read_label",
    "regions_to_labels",
    "save_prediction",
    "save_probabilities",
    "scan_dataset",
    "valid_mask",
    "validate_case",
    "validate_dataset",
    "write_label",
    "write_probabilities",
]
