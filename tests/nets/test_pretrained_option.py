"""``--pretrained MAIN[,SECOND]``: local ImageNet Swin checkpoints into DS-TransUNet's encoders from the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from fusionseg.cli import main as cli
from fusionseg.errors import InputError
from fusionseg.nets import create_model
from fusionseg.nets.swin_pretrained import load_pretrained_encoders, parse_pretrained

TINY = {"dim": 16, "embed_dim2": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "depths2": [1, 1, 1, 1],
        "num_heads2": [1, 1, 1, 1], "decoder_heads": [2, 1, 1], "window_size": 4,
        "tif": {"heads_s": 2, "dim_head_s": 8, "mlp_s": 16, "heads_l": 1, "dim_head_l": 8, "mlp_l": 16}}  # fmt: skip


class Payload:
    """A pickled Python object: code, not tensors (refused by weights_only=True)."""


def _model():
    return create_model("ds_transunet", in_channels=1, out_channels=3, spatial_dims=2, **TINY)


def _swin_file(path, encoder, seed):
    """An official-layout Swin checkpoint {"model": ...} for ``encoder``: random values, a classifier head and norm."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in encoder.state_dict().items()
             if not k.endswith(("relative_position_index", "attn_mask"))}  # fmt: skip
    state["head.weight"], state["norm.weight"] = torch.randn(1000, 8, generator=gen), torch.ones(8)
    torch.save({"model": state}, path)
    return state


def test_load_pretrained_encoders_copies_every_matching_tensor(tmp_path):
    model = _model()
    main = _swin_file(tmp_path / "swin_main.pth", model.encoder, 0)
    second = _swin_file(tmp_path / "swin_second.pth", model.encoder2, 1)
    line = load_pretrained_encoders(
        model, parse_pretrained(f"{tmp_path / 'swin_main.pth'},{tmp_path / 'swin_second.pth'}")
    )
    assert "\n" not in line
    loaded = model.encoder.state_dict()
    matched = [k for k in main if k in loaded and loaded[k].shape == main[k].shape]
    assert len(matched) == len(main) - 2  # all but the classifier head and norm
    for key in matched:
        torch.testing.assert_close(loaded[key], main[key], rtol=0, atol=0)
    torch.testing.assert_close(model.encoder2.state_dict()[next(iter(second))], second[next(iter(second))])
    assert f"pretrained encoder ← swin_main.pth: {len(matched)} matched (0 adapted)" in line
    assert "2 skipped" in line and "pretrained encoder2 ← swin_second.pth" in line


def test_pretrained_is_refused_for_other_networks_and_pickled_code(tmp_path):
    unet = create_model("unet", in_channels=1, out_channels=2, spatial_dims=2, features=[8, 16])
    with pytest.raises(InputError, match="unet has none"):
        load_pretrained_encoders(unet, parse_pretrained("x.pth"))
    torch.save({"model": Payload()}, tmp_path / "pickled.pth")  # a Python object, not tensors
    with pytest.raises(InputError, match=r"cannot read Swin checkpoint .*weights_only=True"):
        load_pretrained_encoders(_model(), parse_pretrained(str(tmp_path / "pickled.pth")))


def test_train_cli_loads_pretrained_encoders(tmp_path, tiny_phantom_2d, capsys):
    _swin_file(tmp_path / "swin_main.pth", _model().encoder, 0)
    argv = ["train", "--data", str(tiny_phantom_2d), "--output", str(tmp_path / "run"), "--model", "ds_transunet",
            "--model-kwargs", json.dumps(TINY), "--epochs", "1", "--iters-per-epoch", "1", "--batch-size", "1",
            "--patch-size", "64,64", "--no-progress", "--pretrained", str(tmp_path / "swin_main.pth")]  # fmt: skip
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert "pretrained encoder ← swin_main.pth:" in out and "(0 adapted)" in out
    torch.save({"model": Payload()}, tmp_path / "pickled.pth")
    argv[argv.index("--pretrained") + 1] = str(tmp_path / "pickled.pth")
    argv[argv.index("--output") + 1] = str(tmp_path / "run2")
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "weights_only=True" in err and len(err.strip().splitlines()) == 1
