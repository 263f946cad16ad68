"""Distributed helpers (contract 5): single-process no-ops, and a real 2-process gloo run on localhost
that must reproduce the single-process training run (DDP gradient averaging + DistributedSampler)."""

from __future__ import annotations

import json
import os
import re
import runpy
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from fusionseg.errors import InputError
from fusionseg.runtime import distributed as D

# Trains a tiny MLP for 2 epochs × 2 steps (global batch 4) and records what each rank saw.
WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch import nn
    from fusionseg.runtime import distributed as D

    out = sys.argv[1]
    info = D.init_distributed("cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g))
    net = D.wrap_model(model, info)
    # rank r of world_size takes its share of one permutation; one process takes all of it
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=info.world_size, rank=info.rank, seed=3)
    loader = torch.utils.data.DataLoader(data, batch_size=4 // info.world_size, sampler=sampler)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses, seen = [], []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            losses.append(D.all_reduce_mean(loss, info))
        seen.append(list(iter(sampler)))
    rank_mean = D.all_reduce_mean(float(info.rank), info)
    D.barrier(info)
    result = {
        "rank": info.rank, "world": info.world_size, "enabled": info.enabled, "is_main": info.is_main,
        "wrapped": type(net).__name__, "losses": losses, "seen": seen, "rank_mean": rank_mean,
        "weights": [p.detach().flatten().tolist() for p in D.unwrap_model(net).parameters()],
    }
    with open(f"{out}/rank{info.rank}.json", "w") as f:
        json.dump(result, f)
    D.cleanup(info)
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _run(cmd: list[str], timeout: float = 180) -> None:
    proc = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _torchrun(args: list[str], timeout: float = 180) -> None:
    """``torchrun --nproc-per-node=2`` on 127.0.0.1; a new port once if another process took the free one."""
    for attempt in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
               "--master-addr=127.0.0.1", f"--master-port={_free_port()}", *args]  # fmt: skip
        proc = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
        output = proc.stdout + proc.stderr
        if proc.returncode == 0 or attempt or not re.search(r"(?i)address already in use|EADDRINUSE", output):
            break
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


# --------------------------------------------------------------------------------------------- one process
def test_single_process_defaults_are_no_ops(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = D.init_distributed("cpu")
    assert info == D.DistInfo(0, 1, 0, torch.device("cpu"), True, False)
    model = nn.Linear(2, 2)
    assert D.wrap_model(model, info) is model
    assert D.all_reduce_mean(torch.tensor([1.0, 3.0]), info) == 2.0
    assert D.all_reduce_mean(0.25, info) == 0.25
    D.barrier(info)
    D.cleanup(info)


def test_world_size_one_env_stays_single_process(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert not D.init_distributed("auto").enabled


def test_unwrap_model_removes_every_wrapper():
    model = nn.Linear(2, 2)

    class Compiled(nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    assert D.unwrap_model(Compiled(nn.DataParallel(model))) is model
    assert D.unwrap_model(model) is model


@pytest.mark.parametrize(
    ("device", "match"),
    [("tpu", "unknown device"), ("cuda", "no CUDA device"), ("cuda:3", "no CUDA device")],
)
def test_bad_device_is_an_input_error(device, match):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match=match):
        D.init_distributed(device)


def test_bad_launcher_env_is_an_input_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="WORLD_SIZE='two'"):
        D.init_distributed("cpu")


# --------------------------------------------------------------------------------------------- two processes
def _run_in_process(script: Path, out: Path, monkeypatch) -> None:
    """The worker without a launcher (saves a Python start-up): one process, WORLD_SIZE unset."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "argv", [str(script), str(out)])
    runpy.run_path(str(script), run_name="__main__")


def test_two_gloo_processes_match_single_process_training(tmp_path, monkeypatch):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    (tmp_path / "single").mkdir()
    (tmp_path / "ddp").mkdir()
    _run_in_process(script, tmp_path / "single", monkeypatch)
    _torchrun([str(script), str(tmp_path / "ddp")])
    single = json.loads((tmp_path / "single" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert not single["enabled"] and single["wrapped"] == "Sequential"
    for r, res in enumerate(ranks):
        assert res["enabled"] and res["world"] == 2 and res["rank"] == r and res["is_main"] == (r == 0)
        assert res["wrapped"] == "DistributedDataParallel"
        assert res["rank_mean"] == 0.5
    # The sampler splits each epoch's permutation into disjoint halves covering the dataset.
    for epoch in range(2):
        a, b = ranks[0]["seen"][epoch], ranks[1]["seen"][epoch]
        assert not set(a) & set(b) and sorted(a + b) == list(range(16))
        assert sorted(a + b) == sorted(single["seen"][epoch])
    assert ranks[0]["seen"][0] != ranks[0]["seen"][1]  # set_epoch reshuffles
    # Same loss curve and same final weights as one process with the whole batch (fp32 reduction order only).
    assert len(ranks[0]["losses"]) == len(single["losses"]) == 8
    torch.testing.assert_close(torch.tensor(ranks[0]["losses"]), torch.tensor(single["losses"]), rtol=1e-5, atol=1e-6)
    assert ranks[0]["losses"] == ranks[1]["losses"]
    for w0, w1, ws in zip(ranks[0]["weights"], ranks[1]["weights"], single["weights"]):
        assert w0 == w1  # DDP keeps replicas identical
        torch.testing.assert_close(torch.tensor(w0), torch.tensor(ws), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_torchrun_train_end_to_end_matches_single_process(tmp_path, tiny_phantom_2d):
    """``torchrun --nproc_per_node=2 -m fusionseg train`` vs ``fusionseg train`` with the same global batch.

    Rank r takes every other case of the same epoch order, so both runs see the same cases per
    step; losses differ only through per-rank batch statistics (batch Dice, normalisation).
    """
    pytest.importorskip("fusionseg.training.trainer")
    data = tiny_phantom_2d
    common = ["--data", str(data), "--model", "unet", "--epochs", "2", "--iters-per-epoch", "2", "--no-augment"]
    common += ["--patch-size", "32,32", "--val-fraction", "0", "--device", "cpu", "--seed", "0", "--lr", "1e-3"]
    common += ["--model-kwargs", '{"features": [4, 8]}']
    _torchrun(["-m", "fusionseg", "train", *common, "--batch-size", "1", "--output", str(tmp_path / "ddp")], 300)
    _run([sys.executable, "-m", "fusionseg", "train", *common, "--batch-size", "2", "--output", str(tmp_path / "one")])
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    assert ddp["epoch"] == one["epoch"] == 2 and ddp["step"] == one["step"] == 4
    ddp_loss = [row["train_loss"] for row in ddp["history"]]
    one_loss = [row["train_loss"] for row in one["history"]]
    print("train loss per epoch: 2 processes", ddp_loss, "| 1 process", one_loss)
    torch.testing.assert_close(torch.tensor(ddp_loss), torch.tensor(one_loss), rtol=0.01, atol=1e-3)
    # only rank 0 writes: one set of run files, no temp files left behind
    names = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert "last.pt" in names and not any(n.endswith(".tmp") or n.startswith(".") for n in names)


def test_incomplete_launcher_env_is_an_input_error(monkeypatch):
    """WORLD_SIZE set by hand without torchrun's rendezvous variables."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(InputError, match="torchrun"):
        D.init_distributed("cpu", timeout_s=5)
