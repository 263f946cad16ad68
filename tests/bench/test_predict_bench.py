"""`fusionseg bench predict` on a tiny CT-like volume: both paths run, labels agree, the workdir is kept or removed."""

from __future__ import annotations

import json

from fusionseg.bench.predict import main


def test_slabs_and_whole_volume_agree_and_the_rows_are_printed(tmp_path, capsys):
    argv = ["--size", "48,48,16", "--classes", "3", "--whole-volume", "--threads", "1", "--workdir", str(tmp_path)]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["path"], r["classes"]) for r in rows] == [("slabs", 3), ("whole-volume", 3)]
    assert rows[1]["agreement"] == 1.0 and all(r["peak_mib"] > 0 and r["wall_s"] > 0 for r in rows)
    assert (tmp_path / "pred_48x48x16_3_slabs" / "ct_000.nii.gz").is_file()  # --workdir is kept
