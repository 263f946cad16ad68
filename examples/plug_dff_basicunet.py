"""Plug DFF into a MONAI BasicUNet and train it a few iterations on the real nuclei image shipped with fusionseg.

``plug_fusion(net, "dff")`` replaces every decoder skip concatenation of the MONAI network by a DFF
block, in place; the network then trains with any loop — here plain PyTorch with MONAI's DiceCE loss on
random crops of the left half of the 512×512 fluorescence field, scored by the Dice of the right half.

    python examples/plug_dff_basicunet.py                      # 20 iterations on 96×96 crops (seconds)
    python examples/plug_dff_basicunet.py --small              # 3 iterations, small widths (a smoke run)
    python examples/plug_dff_basicunet.py --iterations 200     # longer
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from PIL import Image

from fusionseg.plug import describe_plug, plug_fusion
from fusionseg.resources import real_data_path
from fusionseg.runtime.devices import set_threads


def load_nuclei() -> tuple[torch.Tensor, torch.Tensor]:
    """(image (1, 512, 512) z-scored float, mask (1, 512, 512) 0/1 float) of the shipped field."""
    folder = real_data_path("nuclei2d")
    image = np.asarray(Image.open(folder / "image.png")).astype(np.float32)
    mask = (np.asarray(Image.open(folder / "mask.png")) > 0).astype(np.float32)
    image = (image - image.mean()) / image.std()
    return torch.from_numpy(image)[None], torch.from_numpy(mask)[None]


def random_crops(image, mask, size: int, batch: int, generator: torch.Generator):
    """``batch`` random ``size``² crops of (1, H, W) tensors → (batch, 1, size, size) each."""
    h, w = image.shape[-2:]
    ys = torch.randint(0, h - size + 1, (batch,), generator=generator).tolist()
    xs = torch.randint(0, w - size + 1, (batch,), generator=generator).tolist()
    pick = lambda t: torch.stack([t[:, y : y + size, x : x + size] for y, x in zip(ys, xs)])  # noqa: E731
    return pick(image), pick(mask)


def dice(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return float(2 * (prediction * target).sum() / (prediction.sum() + target.sum()).clamp_min(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="3 iterations, 64×64 crops, widths 8…32")
    parser.add_argument("--iterations", type=int, help="training iterations (default 20; --small: 3)")
    parser.add_argument("--threads", default="auto", help="CPU threads: auto (the idle cores) or a number")
    args = parser.parse_args(argv)
    threads, reason = set_threads(args.threads)  # more threads than idle cores slows training down many times
    print(f"CPU threads: {threads} ({reason})")
    torch.manual_seed(0)
    features = (8, 8, 16, 16, 32, 8) if args.small else (16, 16, 32, 64, 128, 16)
    crop, batch = (64, 2) if args.small else (96, 4)
    iterations = args.iterations or (3 if args.small else 20)

    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=features)
    plug_fusion(net, "dff")
    print(describe_plug(net).splitlines()[0])

    image, mask = load_nuclei()
    half = image.shape[-1] // 2
    train_image, train_mask = image[..., :half], mask[..., :half]  # left half trains
    test_image, test_mask = image[..., half:], mask[..., half:]  # right half tests
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    net.train()
    for step in range(1, iterations + 1):
        x, y = random_crops(train_image, train_mask, crop, batch, generator)
        loss = loss_fn(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % 5 == 0 or step == iterations:
            print(f"iteration {step}/{iterations}: loss {loss.item():.4f}")

    net.eval()
    with torch.no_grad():
        prediction = net(test_image[None]).argmax(1).float()  # 512×256: both sides multiples of 16
    score = dice(prediction, test_mask)
    print(f"right-half Dice after {iterations} iterations: {score:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
