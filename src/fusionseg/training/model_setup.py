"""The model of a training run: the registered network for the data, and the weights a fresh run starts from.

Example:
    >>> model = build_model(config, pre)              # config.model for pre's channels, classes and dims
    >>> load_initial_weights(model, config, log=print)   # config.pretrained encoders, then config.init
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from fusionseg.data.preprocessing import Preprocessing
from fusionseg.errors import InputError
from fusionseg.training.config import RunDefinition

__all__ = ["build_model", "load_initial_weights"]


def build_model(config: RunDefinition, pre: Preprocessing) -> nn.Module:
    """The registered model ``config.model`` for the data described by ``pre`` (``model.config`` records it)."""
    from fusionseg.nets.registry import create_model, list_models

    kwargs: dict[str, Any] = {
        "in_channels": pre.in_channels,
        "out_channels": pre.out_channels,  # one per region for region datasets
        "spatial_dims": pre.spatial_dims,
    }
    if config.deep_supervision is not None:
        kwargs["deep_supervision"] = bool(config.deep_supervision)
    if config.fusion is not None:
        kwargs["fusion"] = config.fusion
    for key in ("in_channels", "out_channels", "spatial_dims"):
        given = config.model_kwargs.get(key, kwargs[key])
        if given != kwargs[key]:
            raise InputError(
                f"--model-kwargs {key}={given!r} does not match the data ({key}={kwargs[key]}); leave {key} out: "
                "it comes from the dataset"
            )
    kwargs.update(config.model_kwargs)
    if config.model.lower() not in list_models():
        raise InputError(f"unknown model {config.model!r}; choose one of {', '.join(list_models())}")
    try:
        return create_model(config.model, **kwargs)
    except TypeError as err:
        hint = (
            " (--fusion is not an option of this model)" if config.fusion is not None and "fusion" in str(err) else ""
        )
        raise InputError(f"model {config.model!r} rejected its arguments: {err}{hint}") from None
    except ValueError as err:
        raise InputError(f"model {config.model!r}: {err}") from None


def load_initial_weights(model: nn.Module, config: RunDefinition, log: Callable[..., None]) -> None:
    """The first weights of a run that starts afresh: pretrained encoders (``config.pretrained``), then
    ``config.init`` (where names and shapes fit; InputError when most of the model would stay untouched)."""
    if config.pretrained:
        from fusionseg.nets.swin_pretrained import load_pretrained_encoders

        log(load_pretrained_encoders(model, config.pretrained))
    if config.init is None:
        return
    from fusionseg.nets.weights import load_pretrained

    report = load_pretrained(model, config.init, strict=False)
    total = len(model.state_dict())
    if 2 * len(report.loaded) < total:  # mostly a run from scratch that claims to start from --init
        raise InputError(
            f"--init {config.init}: only {len(report.loaded)} of the {total} tensors of {config.model} "
            "fit (another model or size); pass weights of this model with the same --model-kwargs"
        )
    log(
        f"initialised {len(report.loaded)} tensors from {config.init}" + ("" if report.ok else f"; {report.problems()}")
    )
