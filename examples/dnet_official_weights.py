"""Build D-Net and load a state_dict in the official layout (an nnU-Net checkpoint's ``network_weights``).

fusionseg's D-Net uses the official parameter names (``encoder.downsample_layers.0.weight``, ...,
``decoder.steps.0.conv_atten.0.weight``, ...), so official weights load strictly with
``fusionseg.nets.weights.load_pretrained``. No download here: a second, freshly built D-Net stands in
for the official network, saved the way nnU-Net saves checkpoints (``{"network_weights": ...}``, keys
prefixed ``module.`` as after DistributedDataParallel training). Pass ``--key-list FILE`` (lines
``key<TAB>[shape]``, e.g. the official list of the 485 D-Net v2 tensors) to check the names and
shapes against it.

    python examples/dnet_official_weights.py            # official sizes: 39.3 M parameters (a few seconds)
    python examples/dnet_official_weights.py --small    # dims 8…128, a smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from fusionseg import create_model
from fusionseg.nets.weights import load_pretrained


def read_key_list(path: Path) -> dict[str, tuple[int, ...]]:
    """``key<TAB>[shape]`` lines (``#`` comments skipped) → {key: shape}."""
    shapes = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            shapes[key] = tuple(json.loads(shape))
    return shapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="dims 8, 16, 32, 64, 128 instead of 48 … 768")
    parser.add_argument("--key-list", type=Path, help="official key list to compare with (key<TAB>[shape] lines)")
    args = parser.parse_args(argv)
    kwargs = {"in_channels": 1, "out_channels": 16, "spatial_dims": 3}
    if args.small:
        kwargs["dims"] = (8, 16, 32, 64, 128)

    torch.manual_seed(1)
    official = create_model("dnet", **kwargs)  # stands in for the network the official code trained
    state = {f"module.{k}": v for k, v in official.state_dict().items()}
    print(f"official-layout state_dict: {len(state)} tensors, {sum(v.numel() for v in state.values()):,} values; "
          f"first keys: {', '.join(k.removeprefix('module.') for k in list(state)[:2])}")  # fmt: skip
    if args.key_list is not None:
        expected = read_key_list(args.key_list)
        ours = {k.removeprefix("module."): tuple(v.shape) for k, v in state.items()}
        assert ours == expected, f"{len(set(ours) ^ set(expected))} names differ from {args.key_list}"
        print(f"names and shapes equal {args.key_list} ({len(expected)} tensors)")

    torch.manual_seed(2)
    model = create_model("dnet", **kwargs).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint_final.pth"
        torch.save({"network_weights": state, "trainer_name": "nnUNetTrainer_DNet"}, path)
        report = load_pretrained(model, path)  # strict: any missing, unexpected or mis-shaped key raises
    print(report.summary())
    for key, value in official.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    size = 32 if args.small else 64  # multiples of model.size_multiple (32)
    with torch.no_grad():
        outputs = model(torch.randn(1, 1, size, size, size))
    print(f"forward on (1, 1, {size}, {size}, {size}): deep-supervision outputs "
          f"{[tuple(o.shape) for o in outputs]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
