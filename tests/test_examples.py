"""The scripts in examples/ run (their --small settings) and print what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), "--small", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_fusion_modules_match_the_reference_steps():
    out = _run("fusion_modules.py")
    assert "DFF(8): x (1, 8, 8, 8, 8) + skip (1, 8, 8, 8, 8) -> (1, 8, 8, 8, 8); 402 parameters" in out
    assert "TIF(8, 8): e (1, 8, 16, 16) + r (1, 8, 16, 16) -> (1, 8, 16, 16)" in out
    assert "-> (1, 8, 16, 16), (1, 6, 8, 8)" in out
    diffs = [float(v) for v in re.findall(r"max \|fast - reference\| (\S+)", out)]
    assert len(diffs) == 3 and max(diffs) < 1e-4


def test_dnet_loads_official_layout_strictly():
    out = _run("dnet_official_weights.py")
    assert "first keys: encoder.downsample_layers.0.weight, encoder.downsample_layers.0.bias" in out
    assert "loaded 483/483 tensors from checkpoint_final.pth" in out
    assert "[(1, 16, 32, 32, 32), (1, 16, 16, 16, 16), (1, 16, 8, 8, 8)" in out


def test_plug_dff_into_basicunet_trains_on_nuclei():
    out = _run("plug_dff_basicunet.py", "--threads", "1")
    assert "BasicUNet + dff at skip levels (0, 1, 2, 3): 4 of 4 skips fused" in out
    losses = [float(v) for v in re.findall(r"iteration \d+/3: loss (\S+)", out)]
    assert len(losses) == 2 and losses[-1] < losses[0]
    dice = float(re.search(r"right-half Dice after 3 iterations: (\S+)", out).group(1))
    assert 0.4 < dice <= 1.0  # all background scores 0, all foreground 0.33
