"""Registry of model presets: ``@register_model`` names a function returning a ModelConfig."""

from __future__ import annotations

from typing import Callable

from ..config import ModelConfig
from ..errors import UnknownNameError

_PRESETS: dict[str, Callable[[], ModelConfig]] = {}


def register_model(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
    """Register ``fn`` (returning the preset's ModelConfig) under its function name."""
    if fn.__name__ in _PRESETS:
        raise ValueError(f"model preset {fn.__name__!r} is registered twice")
    _PRESETS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered preset, sorted."""
    return sorted(_PRESETS)


def preset_config(name: str) -> ModelConfig:
    """The ModelConfig of preset ``name``.

    Raises:
        KeyError: an unknown name, with the known ones listed.
    """
    try:
        return _PRESETS[name]()
    except KeyError:
        raise UnknownNameError(f"unknown model preset {name!r}; known: {', '.join(list_models())}") from None
