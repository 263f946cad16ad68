"""Model registry: ``create_model(name, **kwargs)`` and ``list_models()``.

Network modules register themselves with ``@register_model("name")``; the registry imports
:mod:`fusionseg.nets` lazily so every built-in model is available.

Example:
    >>> "dnet" in list_models()
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

__all__ = ["create_model", "list_models", "register_model"]

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


def create_model(name: str, **kwargs) -> nn.Module:
    """Build registered model ``name`` with its keyword arguments."""
    _load_builtin()
    key = str(name).lower()
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(_MODELS))}")
    return _MODELS[key](**kwargs)
