"""Models: the preset registry, ``create_model``, the LCIE model, its loss and checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from . import presets as _presets  # noqa: F401 - registers the presets
from .lcie import LCIE, TrainOutput, build
from .registry import list_models, preset_config, register_model


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: bool | str | Path | None = None,
    **overrides: Any,
) -> LCIE:
    """Build the preset ``name`` (see :func:`list_models`), timm style.

    Args:
        name: A registered preset, e.g. ``"lcie_r101_448"``.
        num_classes: Number of labels C (default: the preset's, 80 for MS-COCO).
        pretrained: Backbone weights: None (random), True (local ImageNet weights, see
            :mod:`lcie_fast.models.pretrained`) or a path to a weights file or directory.
        **overrides: Any :class:`~lcie_fast.config.ModelConfig` field, e.g. ``partial=False``.

    Returns:
        The model; ``model.config`` is its resolved ModelConfig and ``model.preset`` its name.
    """
    config = preset_config(name)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"create_model: unknown override(s) {unknown}; known: {sorted(known)}")
    return build(dataclasses.replace(config, **overrides), pretrained=pretrained, preset=name)


__all__ = ["LCIE", "ModelConfig", "TrainOutput", "build", "create_model", "list_models", "preset_config", "register_model"]
