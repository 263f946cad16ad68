"""Data identified by content, nothing written outside the cache, one line for every broken input:
cache keys and slugs, integrity of cached cases, the preprocess lock, JPEG class-index masks, JSON limits,
empty folds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusionseg.cli import main as cli_main
from fusionseg.data import find_input_error, get_fold, read_label, scan_dataset
from fusionseg.data.identity import slug
from fusionseg.data.io import LOSSY_CLASS_RULE
from fusionseg.data.json_input import read_json_file
from fusionseg.data.plan import plan_dataset
from fusionseg.data.preprocess import cache_folder, load_case, preprocess_dataset
from fusionseg.data.streaming import patch_dataset
from fusionseg.errors import InputError
from fusionseg.files import folder_lock


def _folders_2d(root: Path, seed: int, mask_ext: str = ".png", values=(0, 1), num_cases: int = 3, meta=None) -> Path:
    """``root/images/*.png`` (RGB) + ``root/masks/*<mask_ext>`` with the label ``values`` in blocks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(num_cases):
        image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        for k, value in enumerate(values[1:]):
            mask[4 + 8 * k : 10 + 8 * k, 4 : 12 + 4 * i] = value
        Image.fromarray(image).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i}{mask_ext}")
    if meta is not None:
        (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _preprocess(root: Path, cache: Path, lines: list | None = None):
    info = scan_dataset(root)
    plan = plan_dataset(info, size_multiple=8, cache=cache)
    log = lines.append if lines is not None else (lambda line: None)
    return info, plan, preprocess_dataset(info, plan, cache, progress=False, log=log)


def _files(folder: Path, skip: Path | None = None) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and (skip is None or skip not in p.parents)}


def _one_line_error(capsys, argv: list[str], match: str) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and match in err, err
    return err


# ------------------------------------------------------------------------------------ cache identity


@pytest.mark.parametrize("name", ["../../escaped", "/abs/outside", "..", "a/../../b\\c"])
def test_dataset_name_never_leaves_the_cache_root(tmp_path, capsys, name):
    root = _folders_2d(tmp_path / "ds", 0, meta={"name": name, "labels": {"background": 0, "fg": 1}})
    cache = tmp_path / "a" / "b"
    before = _files(tmp_path)
    assert cli_main(["preprocess", "--data", str(root), "--cache", str(cache), "--no-progress"]) == 0
    capsys.readouterr()
    assert _files(tmp_path, skip=cache) == before  # nothing written outside --cache
    (folder,) = [p for p in cache.iterdir() if p.name != "fingerprints"]
    assert folder.parent == cache and not folder.name.startswith((".", "-")) and "/" not in folder.name
    assert len(list(folder.glob("*_image.npy"))) == 3


def test_slug_keeps_safe_characters_only():
    assert slug("../../x y") == "x_y" and slug("Dataset002_Heart") == "Dataset002_Heart"
    assert slug("") == "dataset" and slug("..") == "dataset" and slug("/") == "dataset"
    assert len(slug("a" * 500)) == 40 and slug("é/ü") == "dataset"


def test_same_data_through_another_path_shares_the_cache(tmp_path, monkeypatch):
    root = _folders_2d(tmp_path / "data", 0)
    cache = tmp_path / "cache"
    _, _, first = _preprocess(root, cache)
    assert first.done and not first.reused
    link = tmp_path / "elsewhere"
    link.symlink_to(root)
    monkeypatch.chdir(tmp_path)
    for spelling in ("data", "./data/", str(root), str(link)):
        _, _, report = _preprocess(Path(spelling), cache)
        assert report.folder == first.folder and not report.done and len(report.reused) == 3, spelling
    monkeypatch.chdir(root)
    _, _, report = _preprocess(Path("."), cache)  # the folder's own name, not "" or "."
    assert report.folder == first.folder and report.folder.name.startswith("data-")


def test_different_data_with_the_same_name_never_shares_the_cache(tmp_path):
    a = _folders_2d(tmp_path / "one" / "data", 0)
    b = _folders_2d(tmp_path / "two" / "data", 1)
    cache = tmp_path / "cache"
    _, plan_a, report_a = _preprocess(a, cache)
    voxels_a = np.array(load_case(report_a.folder, "case0")["image"])
    _, plan_b, report_b = _preprocess(b, cache)
    assert plan_a.hash == plan_b.hash and plan_a.data_key != plan_b.data_key
    assert report_a.folder != report_b.folder and report_b.done and not report_b.reused
    # a training on A reading its cache after B was preprocessed still sees A's voxels
    np.testing.assert_array_equal(load_case(cache_folder(plan_a, cache), "case0")["image"], voxels_a)
    assert not np.array_equal(load_case(report_b.folder, "case0")["image"], voxels_a)


def test_a_changed_file_after_planning_is_refused(tmp_path):
    root = _folders_2d(tmp_path / "data", 0)
    info = scan_dataset(root)
    plan = plan_dataset(info, size_multiple=8, cache=tmp_path / "cache")
    image = np.asarray(Image.open(info.cases[0].images[0])).copy()
    image[0, 0] = 255 - image[0, 0]
    Image.fromarray(image).save(info.cases[0].images[0])
    with pytest.raises(InputError, match="changed since the dataset was planned; plan it again"):
        preprocess_dataset(info, plan, tmp_path / "cache", progress=False, log=lambda line: None)


# ------------------------------------------------------------------------------------- cache integrity


@pytest.mark.parametrize("damage", ["truncate", "replace", "delete", "json"])
def test_a_damaged_cache_array_is_reported_then_redone(tmp_path, damage):
    root = _folders_2d(tmp_path / "data", 0)
    cache = tmp_path / "cache"
    info, plan, report = _preprocess(root, cache)
    good = np.array(load_case(report.folder, "case1")["image"])
    path = report.folder / "case1_image.npy"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "replace":  # same size, other voxels, written by someone else
        other = report.folder / "case2_image.npy"
        shutil.copyfile(other, path)
    elif damage == "delete":
        path.unlink()
    else:
        (report.folder / "case1.json").write_text("{not json")
    with pytest.raises(InputError, match=r"case case1 in .*(damaged|cannot be read).*run `fusionseg preprocess`"):
        load_case(report.folder, "case1")
    ds = patch_dataset(report.folder, ["case1"], plan.preprocessing, augment=False)
    with pytest.raises(Exception) as raised:  # MONAI wraps it; the CLI prints the InputError as one line
        ds[0]  # a training reading the case stops instead of using other voxels
    assert "case case1" in str(find_input_error(raised.value))
    lines: list[str] = []
    again = preprocess_dataset(info, plan, cache, progress=False, log=lines.append)
    assert again.done == ["case1"] and sorted(again.reused) == ["case0", "case2"]
    assert damage == "json" or any("case case1 in the cache is redone" in line for line in lines)
    np.testing.assert_array_equal(load_case(report.folder, "case1")["image"], good)


def test_a_small_array_is_checksummed_on_every_open(tmp_path):
    root = _folders_2d(tmp_path / "data", 0)
    _, _, report = _preprocess(root, tmp_path / "cache")
    assert (report.folder / "case0_image.npy").stat().st_size < 2**20
    props = json.loads((report.folder / "case0.json").read_text())
    props["files"]["_image.npy"]["crc32"] ^= 1  # as if the bytes changed while size, shape and mtime stayed
    (report.folder / "case0.json").write_text(json.dumps(props))
    with pytest.raises(InputError, match="CRC-32 differs"):
        load_case(report.folder, "case0")


def test_a_large_array_rewritten_in_place_is_caught(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(1, 255, (400, 400, 3), dtype=np.uint8)).save(root / "images" / "big.png")
    mask = np.zeros((400, 400), np.uint8)
    mask[100:200, 100:200] = 1
    Image.fromarray(mask).save(root / "masks" / "big.png")
    _, _, report = _preprocess(root, tmp_path / "cache")
    path = report.folder / "big_image.npy"
    assert path.stat().st_size > 2**20 and load_case(report.folder, "big")["image"].shape == (3, 400, 400)
    before = path.stat().st_mtime_ns
    with open(path, "r+b") as f:  # same size and header, other voxels
        f.seek(-64, os.SEEK_END)
        f.write(bytes(64))
    os.utime(path, ns=(before + 10**9, before + 10**9))
    with pytest.raises(InputError, match=r"big_image\.npy changed after it was written"):
        load_case(report.folder, "big")


def test_preprocess_holds_the_cache_lock(tmp_path, capsys):
    root = _folders_2d(tmp_path / "data", 0)
    cache = tmp_path / "cache"
    info = scan_dataset(root)
    plan = plan_dataset(info, size_multiple=8, cache=cache)
    folder = cache_folder(plan, cache)
    with folder_lock(folder, "preprocessed cache"):
        _one_line_error(
            capsys,
            ["preprocess", "--data", str(root), "--cache", str(cache), "--no-progress"],
            f"preprocessed cache {folder} is in use by another fusionseg process (pid {os.getpid()}",
        )
    assert not list(folder.glob("*.npy"))
    report = preprocess_dataset(info, plan, cache, progress=False, log=lambda line: None)
    assert len(report.done) == 3
    with folder_lock(folder, "preprocessed cache"):  # a complete cache is read without the lock
        again = preprocess_dataset(info, plan, cache, progress=False, log=lambda line: None)
        assert len(again.reused) == 3


# ------------------------------------------------------------------------------------------- labels


def test_jpeg_class_index_masks_with_three_declared_classes_are_class_indices(tmp_path):
    meta = {"labels": {"background": 0, "a": 1, "b": 2}}
    root = _folders_2d(tmp_path / "data", 0, ".jpg", values=(0, 1, 2), meta=meta)
    info = scan_dataset(root)
    assert info.num_classes == 3 and info.mask_rule == LOSSY_CLASS_RULE
    truth = np.zeros((32, 32), np.uint8)
    truth[4:10, 4:12], truth[12:18, 4:12] = 1, 2
    label, _ = read_label(info.cases[0].label, [0, 1, 2])
    assert set(np.unique(label)) == {0, 1, 2} and (label == truth).mean() > 0.85
    _, _, report = _preprocess(root, tmp_path / "cache")
    assert not report.failed
    assert sorted(load_case(report.folder, "case0")["locations"]) == [1, 2]


def test_jpeg_class_index_masks_without_declared_classes_are_refused(tmp_path, capsys):
    root = _folders_2d(tmp_path / "data", 0, ".jpg", values=(0, 1, 2))
    mask = root / "masks" / "case0.jpg"
    with pytest.raises(InputError, match=r"case0.jpg: the mask holds values up to \d but reads as all background"):
        read_label(mask)
    _one_line_error(capsys, ["plan", "--data", str(root), "--cache", str(tmp_path / "c")], "case0.jpg")


def test_jpeg_masks_scaled_for_viewing_are_refused_with_three_classes(tmp_path):
    meta = {"labels": {"background": 0, "a": 1, "b": 2}}
    root = _folders_2d(tmp_path / "data", 0, ".jpg", values=(0, 127, 255), meta=meta)
    with pytest.raises(InputError, match="not near the declared label values"):
        read_label(root / "masks" / "case0.jpg", [0, 1, 2])


def test_binary_jpeg_masks_keep_the_threshold(tmp_path):
    root = _folders_2d(tmp_path / "data", 0, ".jpg", values=(0, 255))
    info = scan_dataset(root)
    assert info.num_classes == 2 and "binary" in info.mask_rule
    label, _ = read_label(info.cases[0].label, [0, 1])
    assert set(np.unique(label)) == {0, 1} and label[4:10, 4:12].all()


# --------------------------------------------------------------------------------- JSON and folds


def test_deep_json_is_one_line(tmp_path, capsys):
    root = _folders_2d(tmp_path / "data", 0)
    (root / "dataset.json").write_text("[" * 100_000 + "]" * 100_000)
    _one_line_error(capsys, ["plan", "--data", str(root)], "dataset.json: nested too deeply to read")


def test_non_utf8_json_is_one_line(tmp_path, capsys):
    root = _folders_2d(tmp_path / "data", 0)
    (root / "dataset.json").write_bytes(b'{"name": "caf\xe9"}')
    _one_line_error(capsys, ["plan", "--data", str(root)], "not UTF-8 text (byte 0xe9 at offset 13); save it as UTF-8")


def test_oversized_json_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 1000 + "0]")
    with pytest.raises(InputError, match="more than the 100 a JSON file here may have"):
        read_json_file(path, "shrink it", max_bytes=100)
    assert read_json_file(path, "shrink it")[-1] == 0


@pytest.mark.parametrize("empty", ["train", "val"])
def test_a_fold_without_cases_is_refused(tmp_path, empty):
    root = _folders_2d(tmp_path / "data", 0)
    info = scan_dataset(root)
    fold = {"train": ["case0", "case1"], "val": ["case2"]}
    fold[empty] = []
    (root / "splits_final.json").write_text(json.dumps([fold]))
    what = "training" if empty == "train" else "validation"
    with pytest.raises(InputError, match=f"fold 0 of .*splits_final.json has no {what} cases"):
        get_fold(info, 0)
    with pytest.raises(InputError, match="no training cases to cut patches from"):
        patch_dataset(tmp_path, [], {"patch_size": [8, 8]})


def test_tampered_remembered_statistics_are_measured_again(tmp_path):
    import hashlib

    from dataset_builders import nnunet_dataset

    rng = np.random.default_rng(0)
    images = {f"c{i}": [rng.normal(40, 20, (12, 10, 8)).astype(np.float32)] for i in range(2)}
    labels = {f"c{i}": (rng.random((12, 10, 8)) > 0.7).astype(np.uint8) for i in range(2)}
    root = nnunet_dataset(tmp_path / "ct", images, labels, ".nii.gz",
                          channel_names={"0": "CT"}, labels={"background": 0, "organ": 1})  # fmt: skip
    info = scan_dataset(root)
    first = plan_dataset(info, size_multiple=4, cache=tmp_path / "cache")
    (stored,) = (tmp_path / "cache" / "fingerprints").glob("statistics-*.json")
    bad = [{"0": {"scheme": "ct", "clip": "abc", "mean": 0, "std": 1}}, []]
    checksum = hashlib.sha256(json.dumps(bad, sort_keys=True).encode()).hexdigest()
    for text in ("{", "[" * 50_000, json.dumps({"value": bad, "sha256": checksum}), json.dumps({"value": 1})):
        stored.write_text(text)
        assert plan_dataset(info, size_multiple=4, cache=tmp_path / "cache") == first


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"channel_names": {}}', '"channel_names" must name at least one channel'),
        ('{"labels": {"background": 0, "a": ' + "9" * 5000 + "}}", "dataset.json: cannot parse"),
    ],
)
def test_malformed_dataset_json_fields_are_one_line(tmp_path, capsys, text, match):
    root = _folders_2d(tmp_path / "data", 0)
    (root / "dataset.json").write_text(text)
    _one_line_error(capsys, ["plan", "--data", str(root), "--cache", str(tmp_path / "c")], match)
