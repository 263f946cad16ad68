"""`fusionseg bench predict` on a tiny CT-like volume: both paths run, labels agree, the workdir is kept or removed."""

from __future__ import annotations

import json

import pytest

from fusionseg.bench.predict import main


def test_slabs_and_whole_volume_agree_and_the_rows_are_printed(tmp_path, capsys):
    argv = ["--size", "48,48,16", "--classes", "3", "--whole-volume", "--threads", "1", "--workdir", str(tmp_path)]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["path"], r["classes"]) for r in rows] == [("slabs", 3), ("whole-volume", 3)]
    assert rows[1]["agreement"] == 1.0 and all(r["peak_mib"] > 0 and r["wall_s"] > 0 for r in rows)
    assert (tmp_path / "pred_48x48x16_3_slabs" / "ct_000.nii.gz").is_file()  # --workdir is kept


def test_one_nnunet_checkpoint_by_nnunet_and_by_fusionseg(tmp_path, capsys):
    pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (install it as docs/nnunet.md says)")
    argv = ["--size", "40,40,12", "--classes", "3", "--nnunet", "--patch-size", "32,32,8", "--features", "4,8,16",
            "--threads", "1", "--workdir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["path"] for r in rows] == ["slabs", "nnU-Net", "fusionseg"]
    assert rows[2]["agreement"] >= 0.999 and all(r["peak_mib"] > 0 for r in rows)
    assert "fusionseg / nnU-Net time" in out


def test_a_workdir_of_other_files_is_refused_in_one_line(tmp_path):
    from fusionseg.errors import InputError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds files a benchmark did not write"):
        main(["--size", "40,40,12", "--classes", "3", "--workdir", str(tmp_path)])
    assert (tmp_path / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt"
    ]
