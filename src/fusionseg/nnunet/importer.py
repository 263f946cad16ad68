"""``fusionseg import-weights`` for nnU-Net v2 checkpoints (``checkpoint_final.pth``).

An nnU-Net checkpoint carries everything needed: ``network_weights``, ``trainer_name`` and
``init_args`` (plans, configuration, dataset.json). The network is rebuilt by the trainer's own
``build_network_architecture`` (exactly what ``nnUNetPredictor`` does) and the fusionseg
checkpoint gets a preprocessing of kind ``"nnunet"`` holding plans, configuration, dataset.json and
the mirroring axes; ``fusionseg predict`` then runs nnU-Net's own preprocessing, sliding window and
export with it (:mod:`fusionseg.nnunet.predict`), so its labels equal ``nnUNetv2_predict``'s.

Networks that are fusionseg models (D-Net, DS-TransUNet trainers) are stored under their
registry name (e.g. ``dnet_small``), the others as ``nnunet_planned`` (rebuilt through the trainer).

Example:
    >>> import_nnunet_checkpoint("fold_0/checkpoint_final.pth", "dnet.pt")
    wrote dnet.pt (model dnet_small from nnUNetTrainerDNetSmall, 3d_fullres, fold 0, ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from fusionseg.checkpoints.checkpoint import build_checkpoint, save_checkpoint
from fusionseg.data.preprocessing import NnunetPreprocessing
from fusionseg.errors import InputError
from fusionseg.nets.registry import create_model
from fusionseg.nets.weights import LoadReport, load_pretrained, read_weights_file

__all__ = ["NNUNET_KEYS", "import_nnunet_checkpoint", "is_nnunet_checkpoint", "nnunet_preprocessing"]

NNUNET_KEYS = ("network_weights", "trainer_name", "init_args")


def is_nnunet_checkpoint(obj: Any) -> bool:
    """True for a loaded nnU-Net v2 training checkpoint (``network_weights``, ``trainer_name``, ``init_args``)."""
    return isinstance(obj, Mapping) and all(k in obj for k in NNUNET_KEYS)


def nnunet_preprocessing(
    plans: dict, configuration: str, dataset_json: dict, trainer: str, mirror_axes: Any = None
) -> NnunetPreprocessing:
    """The preprocessing of kind ``"nnunet"`` of an imported checkpoint (read by ``fusionseg predict``)."""
    plans_manager = PlansManager(plans)
    cm = plans_manager.get_configuration(configuration)
    if cm.previous_stage_name is not None:
        raise InputError(
            f"configuration {configuration!r} is a cascade stage (it needs {cm.previous_stage_name}'s predictions); "
            "fusionseg predicts single-stage configurations only — use nnUNetv2_predict for cascades"
        )
    return NnunetPreprocessing(
        trainer=trainer,
        configuration=configuration,
        plans=plans,
        dataset_json=dataset_json,
        mirror_axes=None if mirror_axes is None else tuple(int(a) for a in mirror_axes),
        in_channels=int(determine_num_input_channels(plans_manager, cm, dataset_json)),
        num_classes=int(plans_manager.get_label_manager(dataset_json).num_segmentation_heads),
        spatial_dims=len(cm.patch_size),
        patch_size=tuple(int(s) for s in cm.patch_size),
    )


def import_nnunet_checkpoint(
    weights: str | Path | Mapping, output: str | Path, strict: bool = True
) -> tuple[Path, LoadReport, dict]:
    """Convert an nnU-Net v2 checkpoint into a fusionseg checkpoint at ``output`` → (path, report, model config)."""
    ckpt = weights if isinstance(weights, Mapping) else read_weights_file(weights, allow_numpy=True, what="checkpoint")
    if not is_nnunet_checkpoint(ckpt):
        raise InputError(
            f"{weights} is not an nnU-Net v2 checkpoint (no {', '.join(NNUNET_KEYS)}); "
            "pass fold_N/checkpoint_final.pth of an nnUNetv2_train run, or give --model for official weights"
        )
    init = ckpt["init_args"]
    trainer, configuration = str(ckpt["trainer_name"]), str(init["configuration"])
    pre = nnunet_preprocessing(
        init["plans"], configuration, init["dataset_json"], trainer, ckpt.get("inference_allowed_mirroring_axes")
    )
    from fusionseg.nnunet.trainers import network_from_trainer

    kwargs = dict(plans=init["plans"], configuration=configuration, in_channels=pre.in_channels)
    kwargs["out_channels"] = pre.num_classes
    model = network_from_trainer(trainer, **kwargs)
    # not a fusionseg network: rebuilt through the trainer (config: recorded by create_model)
    if model.config["name"] == "nnunet_planned":  # type: ignore[index]
        model = create_model("nnunet_planned", trainer=trainer, **kwargs)
    report = load_pretrained(model, ckpt["network_weights"], strict=strict)
    train_args = {"imported_from": str(weights) if not isinstance(weights, Mapping) else "nnU-Net checkpoint"}
    train_args.update(nnunet_trainer=trainer, nnunet_configuration=configuration, nnunet_fold=str(init.get("fold")))
    state = build_checkpoint(model, preprocessing=pre, rng=False, train_args=train_args)
    state["epoch"] = int(ckpt.get("current_epoch") or 0)
    return save_checkpoint(output, state), report, state["model"]
