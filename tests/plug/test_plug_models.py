"""Registered plug-in models (``fusionseg.nets.external``, ``fusionseg.nnunet.models``): contract attributes,
config rebuild, deep supervision, errors, the missing-package message, ``fusionseg train --model monai_basicunet
--fusion dff`` end to end, and the real-data benchmark's model specs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from extras import NEEDS_DNA, require
from fusionseg.errors import InputError
from fusionseg.nets.registry import create_model, list_models

pytest.importorskip("monai")
pytestmark = pytest.mark.usefixtures("one_thread")

# name → (tiny kwargs, 2D input size); widths small enough for a 1-core test
TINY = {
    "monai_basicunet": ({"features": [4, 8, 8, 16, 16, 4]}, 32),
    "monai_dynunet": ({"filters": [4, 8, 8, 16]}, 16),
    "monai_swinunetr": ({"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "norm": "batch"}, 32),
    "nnunet_plain": ({"features": [4, 8, 8, 16]}, 16),
    "nnunet_resenc": ({"features": [4, 8, 8, 16]}, 16),
}


def _needs_dna(name: str):
    if name.startswith("nnunet_"):
        require("dynamic_network_architectures", NEEDS_DNA)


@pytest.mark.parametrize("name", list(TINY))
def test_registered_model_contract_and_config_rebuild(name):
    _needs_dna(name)
    kwargs, size = TINY[name]
    net = create_model(name, in_channels=2, out_channels=3, spatial_dims=2, fusion="dff", **kwargs)
    assert (net.spatial_dims, net.in_channels, net.out_channels) == (2, 2, 3)
    assert size % net.size_multiple == 0 and net.config["name"] == name
    config = json.loads(json.dumps(net.config))  # JSON-able, as checkpoints store it
    assert config["kwargs"]["fusion"] == "dff" and "fusion_levels" not in config["kwargs"]  # the kwargs given
    assert net.fusion_plug.changes  # DFF is in the network
    rebuilt = create_model(config["name"], **config["kwargs"])
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(2, 2, size, size)
    net.eval(), rebuilt.eval()
    with torch.no_grad():
        out, again = net(x), rebuilt(x)
    if name.startswith("nnunet_"):  # deep supervision on by default (nnU-Net): a list, full resolution first
        assert len(out) == len(again) == 3
        out, again = out[0], again[0]
    assert torch.equal(again, out) and out.shape == (2, 3, size, size)


def test_fusion_levels_and_concat_default():
    net = create_model("monai_basicunet", spatial_dims=2, fusion="tif", **TINY["monai_basicunet"][0])
    assert list(net.fusion_plug.levels) == [3]  # TIF: deepest skip only
    net = create_model("monai_dynunet", spatial_dims=3, fusion="add", fusion_levels=[0], **TINY["monai_dynunet"][0])
    assert [c.name for c in net.fusion_plug.changes] == ["upsamples.2"]
    plain = create_model("monai_basicunet", spatial_dims=2, **TINY["monai_basicunet"][0])
    assert plain.fusion_plug.fusion == "concat" and not plain.fusion_plug.changes


def test_deep_supervision_returns_a_tuple_full_resolution_first():
    dyn = create_model("monai_dynunet", spatial_dims=2, deep_supervision=True, fusion="dff", filters=[4, 8, 8, 16])
    outs = dyn.train()(torch.randn(2, 1, 16, 16))
    assert isinstance(outs, tuple) and [o.shape for o in outs] == [torch.Size([2, 2, 16, 16])] * 3
    assert dyn.eval()(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_nnunet_deep_supervision_is_on_by_default():
    require("dynamic_network_architectures", NEEDS_DNA)
    net = create_model("nnunet_plain", spatial_dims=2, fusion="dff", features=[4, 8, 8, 16])  # default: on
    assert [tuple(o.shape[2:]) for o in net(torch.randn(2, 1, 16, 16))] == [(16, 16), (8, 8), (4, 4)]


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="6 features"):
        create_model("monai_basicunet", features=[8, 16])
    with pytest.raises(ValueError, match="no deep supervision"):
        create_model("monai_basicunet", deep_supervision=True)
    with pytest.raises(ValueError, match="no deep supervision"):
        create_model("monai_swinunetr", deep_supervision=True)
    with pytest.raises(ValueError, match="multiple of 12"):
        create_model("monai_swinunetr", feature_size=16)
    with pytest.raises(ValueError, match="unknown fusion"):
        create_model("monai_dynunet", fusion="sum", filters=[4, 8, 8])
    with pytest.raises(ValueError, match="levels"):
        create_model("monai_dynunet", fusion="dff", fusion_levels=[5], filters=[4, 8, 8])
    with pytest.raises(ValueError, match="deep_supr_num"):
        create_model("monai_dynunet", deep_supervision=True, deep_supr_num=2, filters=[4, 8, 8])


def test_nnunet_models_without_the_package_say_how_to_install(monkeypatch):
    for module in [m for m in sys.modules if m.startswith("dynamic_network_architectures")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures", None)
    assert {"nnunet_plain", "nnunet_resenc"} <= set(list_models())
    for name in ("nnunet_plain", "nnunet_resenc"):
        with pytest.raises(
            InputError, match=r"^\w+ needs dynamic-network-architectures .*pip install --no-deps"
        ) as err:
            create_model(name)
        assert "\n" not in str(err.value)


def test_importing_the_registry_imports_neither_monai_nor_nnunet():
    code = (
        "import sys, fusionseg.nets; "
        "print([m for m in ('monai', 'dynamic_network_architectures') if sys.modules.get(m) is not None])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_train_cli_monai_basicunet_dff_end_to_end(tiny_phantom_2d, tmp_path, capsys):
    from fusionseg.checkpoints.checkpoint import load_checkpoint, rebuild_model
    from fusionseg.cli import main

    run = tmp_path / "run"
    argv = ["train", "--data", str(tiny_phantom_2d), "--output", str(run), "--model", "monai_basicunet"]
    argv += ["--fusion", "dff", "--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "2", "--patch-size", "32,32"]
    argv += ["--model-kwargs", '{"features": [4, 8, 8, 16, 16, 4]}', "--threads", "1", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["model"]["name"] == "monai_basicunet" and ckpt["step"] == 2
    assert ckpt["model"]["kwargs"]["fusion"] == "dff"
    model = rebuild_model(ckpt)
    assert list(model.fusion_plug.levels) == [0, 1, 2, 3]
    assert sum(".fusion." in k for k in model.state_dict()) > 0


def test_train_help_lists_the_plug_in_models():
    from fusionseg.cli.train import build_parser

    text = " ".join(build_parser().format_help().split())
    for name in TINY:
        assert name in text


def test_real_data_bench_specs_use_the_registry():
    from fusionseg.bench.real_data import parse_model_spec

    peer = parse_model_spec("basicunet", [8, 16])
    assert (peer.label, peer.model, peer.fusion, peer.kwargs) == (
        "basicunet",
        "monai_basicunet",
        None,
        {"features": [8, 16, 8]},
    )
    for text in ("monai_basicunet+dff", "basicunet+dff"):
        spec = parse_model_spec(text, [8, 16])
        assert (spec.label, spec.model, spec.fusion, spec.kwargs) == (
            text,
            "monai_basicunet",
            "dff",
            {"features": [8, 16, 8]},
        )
    assert parse_model_spec("nnunet_plain+tif", [8]).kwargs == {}
    with pytest.raises(InputError, match="unknown fusion"):
        parse_model_spec("basicunet+sum", [8, 16])
    with pytest.raises(InputError, match="unknown model"):
        parse_model_spec("basic+dff", [8, 16])
