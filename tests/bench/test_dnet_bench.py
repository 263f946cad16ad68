"""``fusionseg bench dnet`` on both kinds of CPU: bf16 rows timed only with native bf16 (no speed assertions)."""

from __future__ import annotations

import contextlib

import pytest

from fusionseg.bench import dnet as dnet_bench
from fusionseg.runtime.devices import cpu_has_native_bf16

_REAL_NATIVE_BF16 = cpu_has_native_bf16()

ARGS = ["--sizes", "32", "--repeats", "1", "--no-peers", "--no-train", "--out-channels", "2", "--threads", "1"]


def _rows(out: str, first_cell: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("|")]
    return [r for r in rows if r[0] == first_cell]


@pytest.mark.parametrize("native_bf16", [True, False])
def test_bf16_rows_follow_the_cpu_rule(native_bf16, monkeypatch, capsys):
    monkeypatch.setattr("fusionseg.runtime.devices.cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(dnet_bench, "gemm_gflops", lambda dtype: 100.0)  # an emulated bf16 GEMM takes minutes
    if native_bf16 and not _REAL_NATIVE_BF16:  # emulated bf16 3D convolutions take minutes: compute the row in fp32
        monkeypatch.setattr(dnet_bench, "bf16_autocast", lambda device, enabled=True: contextlib.nullcontext())
    assert dnet_bench.main(ARGS) == 0
    out = capsys.readouterr().out
    final_table = out.split("\n\n")[-2]  # the table printed after all sizes, before the agreement table
    rows = {r[1]: r for r in _rows(final_table, "32³")}
    fast = "D-Net v2 fast (channels-last)"
    assert list(rows) == ["D-Net v2 plain (original layout)", fast, "D-Net v2 fast + bf16 autocast"]
    bf16 = rows["D-Net v2 fast + bf16 autocast"]
    agreement = _rows(out, "32")[-1]
    if native_bf16:
        assert float(bf16[4]) > 0 and bf16[5].endswith("×")
        assert agreement[2].endswith("%") and float(agreement[2].rstrip("%")) > 90.0
        assert "not supported on this CPU" not in out
    else:
        assert bf16[4] == "not supported on this CPU" and bf16[5] == "–"
        assert agreement[2] == "not supported on this CPU"
        assert "bf16 rows: not supported on this CPU" in out
    assert float(rows[fast][4]) > 0
    assert float(agreement[1].rstrip("%")) >= 99.9  # the fast fp32 path computes the plain path's labels


def test_rows_report_their_share_of_the_gemm_rate(monkeypatch, capsys):
    """The last two columns: 2·MACs / time / GEMM rate, from figures printed in the same run."""
    monkeypatch.setattr("fusionseg.runtime.devices.cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(dnet_bench, "gemm_gflops", lambda dtype: 100.0)
    assert dnet_bench.main(ARGS) == 0
    out = capsys.readouterr().out
    assert "fp32 100 GFLOP/s" in out
    final_table = out.split("\n\n")[-2]
    plain = _rows(final_table, "32³")[0]
    gmacs, infer_s = float(plain[3]), float(plain[4])
    assert float(plain[10].rstrip("%")) == pytest.approx(100 * 2 * gmacs / infer_s / 100.0, rel=0.05)  # rounded cells
    assert plain[11] == "–"  # --no-train
