"""Model registry: ``create_model(name, **kwargs)`` and ``list_models()``.

Network modules register their factory (class or function) with ``@register_model("name")``; the
registry imports :mod:`fusionseg.nets` lazily so every built-in model is available. ``create_model``
records ``model.config = {"name": name, "kwargs": <JSON copy of the kwargs given>}`` on every model it
builds — checkpoints store it and rebuild with ``create_model(config["name"], **config["kwargs"])`` —
and checks that the model has the attributes of :class:`fusionseg.nets.base.SegmentationNet`.

Example:
    >>> "dnet" in list_models()
    True
    >>> create_model("unet", in_channels=1, features=(8, 16)).config
    {'name': 'unet', 'kwargs': {'in_channels': 1, 'features': [8, 16]}}
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable, Mapping
from typing import Literal, get_args

from torch import nn

__all__ = [
    "MODEL_ATTRIBUTES",
    "ModelAttribute",
    "create_inference_model",
    "create_model",
    "list_models",
    "model_attribute",
    "model_config",
    "register_model",
]

ModelAttribute = Literal["spatial_dims", "in_channels", "out_channels", "size_multiple"]
MODEL_ATTRIBUTES: tuple[ModelAttribute, ...] = get_args(ModelAttribute)
_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory (class or function) under ``name``."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name.lower()
        if key in _MODELS and _MODELS[key] is not factory:
            raise ValueError(f"model {name!r} is already registered; pick another name")
        _MODELS[key] = factory
        return factory

    return deco


def _load_builtin() -> None:
    importlib.import_module("fusionseg.nets")


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    _load_builtin()
    return sorted(_MODELS)


def _json_copy(value: object, where: str) -> object:
    """A JSON-able copy of a keyword argument: tuples → lists, mappings copied, numbers as int/float."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_json_copy(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _json_copy(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(
        f"create_model argument {where}={value!r} is not JSON-able; pass numbers, strings, lists or dicts "
        "(checkpoints record the arguments to rebuild the model)"
    )


def create_model(name: str, **kwargs) -> nn.Module:
    """Build registered model ``name`` with its keyword arguments and record ``model.config``."""
    _load_builtin()
    key = str(name).lower()
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(_MODELS))}")
    config = {"name": key, "kwargs": {k: _json_copy(v, k) for k, v in kwargs.items()}}
    model = _MODELS[key](**kwargs)
    missing = [a for a in MODEL_ATTRIBUTES if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"model {key!r} ({type(model).__name__}) lacks {', '.join(missing)}; a registered model must have "
            f"{', '.join(MODEL_ATTRIBUTES)} (derive from fusionseg.nets.base.SegmentationNet or set them)"
        )
    model.config = config  # type: ignore[assignment]  # nn.Module.__setattr__ is typed Tensor | Module only
    return model


def model_attribute(model: nn.Module, name: ModelAttribute) -> int:
    """``int(model.<name>)``, one integer of the model contract (networks of other libraries get theirs set at
    runtime, so to a type checker an ``nn.Module`` attribute is only ``Tensor | Module``)."""
    return int(getattr(model, name))


def model_config(model: nn.Module) -> dict:
    """``model.config`` recorded by :func:`create_model`: ``{"name": ..., "kwargs": {...}}``."""
    config = model.config
    if not isinstance(config, dict):
        raise TypeError(
            f"{type(model).__name__}.config is not the dict create_model records; build it with create_model"
        )
    return config


def _first_output(module: nn.Module, inputs: tuple, output: object) -> object:
    return output[0] if isinstance(output, tuple | list) else output


def create_inference_model(name: str, **kwargs) -> nn.Module:
    """:func:`create_model` whose forward returns the full-resolution logits only (B, K, *S).

    Deep-supervision tuples are reduced to their first element by a forward hook, so the
    ``state_dict`` keys are those of :func:`create_model` (MONAI bundles build their network here).

    Example:
        >>> net = create_inference_model("dnet_small", in_channels=1, out_channels=2, spatial_dims=2)
        >>> net(torch.randn(1, 1, 64, 64)).shape   # a tensor, never a tuple
        torch.Size([1, 2, 64, 64])
    """
    model = create_model(name, **kwargs)
    model.register_forward_hook(_first_output)
    return model
