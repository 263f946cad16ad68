"""Cross-validation folds: nnU-Net's recipe (compared with scikit-learn itself), splits_final.json, get_fold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionseg.data import Case, DatasetInfo, get_fold, load_or_create_splits, make_splits
from fusionseg.data.splits import SPLITS_FILE, read_splits
from fusionseg.errors import InputError


def _info(root, ids) -> DatasetInfo:
    cases = [Case(case_id=c, images=[root / f"{c}_0000.nii.gz"]) for c in ids]
    return DatasetInfo("nnunet", 3, cases, [], ["CT"], {0: "background", 1: "x"}, 2, "CT", root=root)


@pytest.mark.parametrize("n", [5, 7, 23, 101])
def test_make_splits_equals_nnunet_recipe_with_sklearn(n):
    """nnU-Net v2: sorted ids, KFold(n_splits=5, shuffle=True, random_state=12345), train/val as index lists."""
    kfold = pytest.importorskip("sklearn.model_selection").KFold
    ids = [f"case_{(i * 37) % 1000:03d}" for i in range(n)]  # unsorted input
    keys = np.sort(ids)
    expected = [
        {"train": list(keys[tr]), "val": list(keys[va])}
        for tr, va in kfold(n_splits=5, shuffle=True, random_state=12345).split(keys)
    ]
    assert make_splits(ids) == expected
    folds = make_splits(ids)
    assert sorted(c for f in folds for c in f["val"]) == sorted(ids)  # every case validated exactly once
    assert all(not set(f["train"]) & set(f["val"]) for f in folds)


def test_get_fold_writes_then_reads_splits_final(tmp_path):
    ids = [f"c{i:02d}" for i in range(12)]
    info = _info(tmp_path, ids)
    train, val = get_fold(info, 2)
    path = tmp_path / SPLITS_FILE
    written = json.loads(path.read_text())
    assert written == make_splits(ids) and (train, val) == (written[2]["train"], written[2]["val"])
    assert not list(tmp_path.glob(f".{SPLITS_FILE}*"))  # no temporary file left behind
    custom = [{"train": ids[:6], "val": ids[6:]}, {"train": ids[6:], "val": ids[:6]}]
    path.write_text(json.dumps(custom))  # a file that is there is used as is
    assert get_fold(info, 1) == (ids[6:], ids[:6]) and get_fold(info, "1") == (ids[6:], ids[:6])
    assert get_fold(info, "all") == (ids, ids)
    other = tmp_path / "elsewhere" / "splits.json"
    other.parent.mkdir()
    assert get_fold(info, 0, path=other) == (make_splits(ids)[0]["train"], make_splits(ids)[0]["val"])
    assert load_or_create_splits(info, other) == make_splits(ids)


def test_fold_errors(tmp_path):
    info = _info(tmp_path, [f"c{i}" for i in range(6)])
    with pytest.raises(
        InputError, match=r"fold 5 does not exist: .*splits_final\.json has 5 folds; use 0\.\.4 or 'all'"
    ):
        get_fold(info, 5)
    with pytest.raises(InputError, match=r"fold must be a number 0\.\.4 or 'all', got 'first'"):
        get_fold(info, "first")
    (tmp_path / SPLITS_FILE).write_text(json.dumps([{"train": ["c0", "zz", "yy"], "val": ["c1"]}]))
    with pytest.raises(InputError, match=r"fold 0 lists 2 case id\(s\) not in the dataset \(yy, zz\)"):
        get_fold(info, 0)
    (tmp_path / SPLITS_FILE).write_text(json.dumps({"train": []}))
    with pytest.raises(InputError, match=r'expected a list of \{"train": \[case ids\], "val": \[case ids\]\}'):
        read_splits(tmp_path / SPLITS_FILE)
    with pytest.raises(InputError, match=r"3 training case\(s\) cannot make 5 folds"):
        make_splits(["a", "b", "c"])


def test_unwritable_dataset_folder_names_the_fix(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    info = _info(tmp_path / "file" / "ds", [f"c{i}" for i in range(5)])
    with pytest.raises(InputError, match=r"cannot write the splits .*; pass a writable splits path"):
        get_fold(info, 0)
