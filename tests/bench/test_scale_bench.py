"""`fusionseg bench scale` smoke run: tiny CT-like datasets, preprocess + train as processes, a table."""

from __future__ import annotations

import numpy as np
import pytest

from fusionseg.bench.scale import ct_case, main, make_ct_dataset, tree_memory_mb
from fusionseg.data import scan_dataset


def test_ct_case_has_a_body_and_three_organs():
    image, label = ct_case((48, 40, 12), np.random.default_rng(0))
    assert image.dtype == np.int16 and set(np.unique(label)) == {0, 1, 2, 3}
    assert image.min() < -900 and abs(float(np.median(image[label == 3])) - 180) < 10


def test_dataset_links_beyond_four_cases(tmp_path):
    root = make_ct_dataset(tmp_path / "Dataset960_Scale6", 6, (24, 20, 8))
    info = scan_dataset(root)
    assert len(info.cases) == 6 and info.channel_names == ["CT"]
    assert info.cases[5].images[0].stat().st_ino == info.cases[1].images[0].stat().st_ino


@pytest.mark.parametrize("size", ["40,40", "40,40,12,2"])
def test_size_takes_three_voxel_counts(size, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--size", size])
    assert err.value.code == 2 and "--size takes three voxel counts x,y,z" in capsys.readouterr().err


def test_tree_memory_counts_this_process():
    import os

    assert tree_memory_mb(os.getpid()) > 10


@pytest.mark.slow
def test_smoke_run_prints_the_table(tmp_path, capsys):
    argv = ["--cases", "2,4", "--size", "40,40,12", "--iters-per-epoch", "2", "--patch-size", "16,16,8",
            "--features", "4,8", "--train-workers", "0", "--workers", "0", "--no-nnunet",
            "--workdir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "preprocess_s" in out and "s_per_it" in out
    assert "train peak memory 4 vs 2 cases" in out
    assert (tmp_path / "run4" / "plans.json").exists()
