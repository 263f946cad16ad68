"""The measured --amp choice: the decision rule, the cache, and a model left exactly as it was found."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fusionseg.data import Preprocessing
from fusionseg.nets.registry import create_model
from fusionseg.runtime import precision
from fusionseg.runtime.devices import NO_BF16_NOTE


def _timer(figures):
    calls = []

    def timer(model, shape, device, dtype, mode):
        calls.append((tuple(shape), dtype, mode))
        return figures[dtype]

    return timer, calls


@pytest.mark.parametrize(
    ("fp32_s", "amp_s", "pays"), [(1.0, 0.5, True), (1.0, 0.95, True), (1.0, 0.96, False), (1.0, 2.0, False)]
)
def test_amp_pays_needs_a_five_percent_gain(fp32_s, amp_s, pays):
    assert precision.amp_pays(fp32_s, amp_s) is pays


@pytest.mark.parametrize(
    ("native", "bf16_s", "expected"), [(True, 0.4, torch.bfloat16), (True, 1.5, None), (False, 0.4, None)]
)
def test_choose_amp_times_both_and_caches(native, bf16_s, expected, tmp_path, monkeypatch):
    monkeypatch.setattr("fusionseg.runtime.devices.cpu_has_native_bf16", lambda: native)
    model = create_model("unet", in_channels=1, out_channels=2, spatial_dims=2, features=[4, 8, 16])
    timer, calls = _timer({None: 1.0, torch.bfloat16: bf16_s})
    lines = []
    cache = tmp_path / "precision.json"
    args = (model, (2, 1, 32, 32), "cpu", True, "train")
    assert precision.choose_amp(*args, log=lines.append, cache=cache, timer=timer) == expected
    assert calls == ([((2, 1, 32, 32), None, "train"), ((2, 1, 32, 32), torch.bfloat16, "train")] if native else [])
    if not native:
        assert lines == [NO_BF16_NOTE] and not cache.exists()
        return
    assert "measured now" in lines[-1]
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["fp32_s"] == 1.0 and entry["amp_s"] == bf16_s and entry["mode"] == "train"
    # Second call: the cached figures decide, nothing is timed.
    assert precision.choose_amp(*args, log=lines.append, cache=cache, timer=timer) == expected
    assert len(calls) == 2 and f"cached in {cache}" in lines[-1]
    # Another shape or mode is another decision.
    precision.choose_amp(model, (2, 1, 64, 64), "cpu", True, "infer", log=lines.append, cache=cache, timer=timer)
    assert len(calls) == 4 and len(json.loads(cache.read_text())) == 2


def test_choose_amp_without_amp_times_nothing(tmp_path):
    timer, calls = _timer({})
    lines = []
    model = nn.Conv2d(1, 1, 3)
    assert precision.choose_amp(model, (1, 1, 8, 8), "cpu", False, log=lines.append, cache=False, timer=timer) is None
    assert calls == [] and lines == []


def test_choose_amp_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        precision.choose_amp(nn.Conv2d(1, 1, 3), (1, 1, 8, 8), "cpu", True, "eval", cache=False)


def test_timing_leaves_the_model_and_random_state_unchanged(monkeypatch):
    """Real timings (forward + backward in fp32 and bf16): buffers, gradients, mode and the RNG are as before."""
    monkeypatch.setattr("fusionseg.runtime.devices.cpu_has_native_bf16", lambda: True)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 2, 1))
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    precision.choose_amp(model, (2, 1, 16, 16), "cpu", True, "train", log=lambda _: None, cache=False)
    assert torch.equal(torch.rand(3), expected_next)
    assert not model.training and all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_time_step_measures_a_positive_duration():
    model = nn.Conv2d(1, 2, 3, padding=1)
    assert precision.time_step(model, (1, 1, 16, 16), torch.device("cpu"), None, "infer") > 0.0
    assert precision.time_step(model, (1, 1, 16, 16), torch.device("cpu"), None, "train") > 0.0
    assert model.weight.grad is not None  # time_step itself does not restore: choose_amp does


def test_inference_choice_uses_the_training_window(tmp_path, monkeypatch):
    monkeypatch.setattr("fusionseg.runtime.devices.cpu_has_native_bf16", lambda: True)
    timer, calls = _timer({None: 1.0, torch.bfloat16: 0.5})
    model = create_model("unet", in_channels=3, out_channels=2, spatial_dims=2, features=[4, 8, 16])
    pre = Preprocessing.from_dict({"spatial_dims": 2, "in_channels": 3, "num_classes": 2, "patch_size": [30, 33]})
    dtype = precision.choose_inference_amp(model, pre, "cpu", True, 2, log=lambda _: None, cache=False, timer=timer)
    assert dtype is torch.bfloat16
    multiple = model.size_multiple
    window = tuple(-(-p // multiple) * multiple for p in (30, 33))
    assert calls[0] == ((2, 3, *window), None, "infer")


@pytest.mark.parametrize(("native", "requested", "expected"), [(True, True, torch.bfloat16), (False, True, None),
                                                               (True, False, None)])  # fmt: skip
def test_inference_choice_without_a_window_is_the_untimed_rule(native, requested, expected, monkeypatch):
    """Whole-image windows (no training patch): the dtype of the device rule, nothing timed."""
    monkeypatch.setattr("fusionseg.runtime.devices.cpu_has_native_bf16", lambda: native)
    model = create_model("unet", in_channels=1, out_channels=2, spatial_dims=2, features=[4, 8])
    timer, calls = _timer({None: 1.0, torch.bfloat16: 0.5})
    pre = Preprocessing.from_dict({"spatial_dims": 2, "in_channels": 1, "num_classes": 2})  # no patch_size
    dtype = precision.choose_inference_amp(model, pre, "cpu", requested, log=lambda _: None, timer=timer)
    assert dtype is expected and calls == []
