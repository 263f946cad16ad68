"""``fusionseg bench nnunet``: a one-iteration smoke run prints the table with the baseline and the ratio."""

from __future__ import annotations

import pytest

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (install it as docs/nnunet.md says)")

from fusionseg.bench import nnunet as bench
from fusionseg.errors import InputError


@pytest.mark.slow  # plans and preprocesses a dataset (~45 s); the trainers themselves are covered by tests/nnunet
def test_bench_nnunet_prints_epoch_times_against_the_default_trainer(tmp_path, capsys, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA"):
        monkeypatch.setenv(name, "unset-after-test")  # main() overwrites them; monkeypatch restores them afterwards
    args = ["--iters-per-epoch", "1", "--val-iterations", "1", "--only", "nnUNetTrainerDSTransUNetSmall"]
    assert bench.main([*args, "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| nnUNetTrainer")]
    assert [r.split(" | ")[0:2] for r in rows] == [["| nnUNetTrainer", "2d"], ["| nnUNetTrainerDSTransUNetSmall", "2d"]]
    assert rows[0].endswith("| 1.00× |") and rows[1].split(" | ")[2] == "64×64"
    seconds = float(rows[1].split(" | ")[7])
    assert seconds > 0


def test_bench_nnunet_rejects_unknown_trainers(tmp_path):
    with pytest.raises(InputError, match="--only takes trainer names among nnUNetTrainerDNetSmall"):
        bench.main(["--only", "nnUNetTrainerNope", "--workdir", str(tmp_path)])
