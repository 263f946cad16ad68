"""Smoke test of ``fusionseg bench modules --quick`` (tiny sizes; no speed assertions here)."""

from __future__ import annotations

import json

import pytest

from fusionseg.bench import main as bench_main
from fusionseg.bench import modules
from fusionseg.errors import InputError


def test_quick_benchmark_prints_table_and_json(tmp_path, capsys):
    out_json = tmp_path / "modules.json"
    assert modules.main(["--quick", "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(out_json)]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| module | input | pass | plain (s) | fast (s) | speedup |")
    assert len(table) == 2 + 2 * len(modules.cases(quick=True))
    results = json.loads(out_json.read_text())
    assert {r["module"] for r in results} == {"DFF(8)", "TIF(16,16)", "TIF(12,16)"}
    assert {r["pass"] for r in results} == {"forward", "forward+backward"}
    for r in results:
        assert r["plain_s"] > 0 and r["fast_s"] > 0
        assert r["speedup"] == pytest.approx(r["plain_s"] / r["fast_s"])


def test_dispatch_through_bench_command(capsys):
    assert (
        bench_main(
            ["modules", "--quick", "--only", "dff", "--repeats", "1", "--warmup", "0", "--threads", "1"],
            "fusionseg bench",
        )
        == 0
    )
    assert "DFF(8)" in capsys.readouterr().out


def test_bad_options_exit_with_usage():
    with pytest.raises(SystemExit):
        modules.main(["--repeats", "0"])
    with pytest.raises(SystemExit):
        modules.main(["--only", "unet"])
    with pytest.raises(InputError, match="--threads"):  # one rule for --threads in every command
        modules.main(["--threads", "0"])


def test_attention_floor_counts_and_note():
    # TIF(96,128) at 128² tokens, T_l branch: 1 head, 16,385 tokens, dim_head 64
    assert modules.attention_gflop(16385, 64, 1, 7) == pytest.approx(240.6, abs=0.1)
    assert modules.attention_gflop(4097, 32, 3, 6) == pytest.approx(19.34, abs=0.01)
    assert modules.tif_floor_note([{"module": "DFF(48)", "pass": "forward+backward"}]) is None


def test_sgemm_rate_is_positive_and_finite():
    rate = modules.sgemm_gflops(257, 16, repeats=1)
    assert 0.1 < rate < 1e5
