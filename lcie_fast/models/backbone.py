"""Backbone wrapper over timm ``features_only`` models: the X3, X4, X5 maps of the paper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from .pretrained import PretrainedWeightsError, adapt_state_dict, load_weights_file, resolve_pretrained


def _probe(name: str, reductions: tuple[int, ...], kwargs: dict[str, Any]) -> tuple[tuple[int, ...], set[str]]:
    """Indices of the timm feature levels at ``reductions`` and the feature model's state keys,
    read from a meta-device build (no memory, no weights)."""
    import timm

    with torch.device("meta"):
        probe = timm.create_model(name, features_only=True, pretrained=False, **kwargs)
    keys = set(probe.state_dict())
    available = list(probe.feature_info.reduction())
    indices = []
    for reduction in reductions:
        if reduction not in available:
            raise InvalidInputError(
                f"backbone '{name}' has no feature level at stride {reduction}; "
                f"its strides are {available}"
            )
        indices.append(available.index(reduction))
    return tuple(indices), keys


class Backbone(nn.Module):
    """A timm backbone returning NCHW feature maps at the requested strides.

    Args:
        name: timm model name (anything ``timm.create_model(name, features_only=True)`` builds).
        reductions: Strides of the returned levels, shallow to deep (default X3, X4, X5).
        pretrained: None/False for random weights, True for the local ImageNet weights, or a
            path to a weights file or directory (see :mod:`lcie_fast.models.pretrained`).
        **kwargs: Passed to ``timm.create_model`` (e.g. ``img_size`` for Swin).

    Attributes:
        feature_info: timm's feature info of the returned levels: ``channels()``, ``reduction()``.
    """

    def __init__(
        self,
        name: str,
        reductions: tuple[int, ...] = (8, 16, 32),
        pretrained: bool | str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        import timm

        self.name = name
        out_indices, feature_keys = _probe(name, reductions, kwargs)
        weights = resolve_pretrained(name, pretrained)
        load_kwargs: dict[str, Any] = {}
        if weights is not None:
            state = adapt_state_dict(name, load_weights_file(weights))
            # the classifier head has no place in a feature extractor: leave it out quietly
            state = {k: v for k, v in state.items() if k in feature_keys} or state
            # timm loads a given state dict through its own filters; nothing is fetched.
            load_kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"state_dict": state}}
        try:
            self.body = timm.create_model(name, features_only=True, out_indices=out_indices, **load_kwargs, **kwargs)
        except RuntimeError as err:
            if weights is None:
                raise
            raise PretrainedWeightsError(f"{weights} does not fit backbone '{name}': {err}") from err
        self.weights_file = str(weights) if weights is not None else None
        self.feature_info = self.body.feature_info
        self._nhwc = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps, shallow to deep: [(B, C_i, H/r_i, W/r_i)]."""
        features = self.body(images)
        if self._nhwc:  # Swin-style models return (B, h, w, C): a permute is a free view
            features = [f.permute(0, 3, 1, 2) for f in features]
        return list(features)


def imagenet_classifier(name: str, pretrained: bool | str | Path = True) -> nn.Module:
    """The full timm ImageNet classifier of backbone ``name``, with the same local weights.

    It shares the weight resolution and key mapping of :class:`Backbone`, so checking that it
    classifies a photo correctly checks the weights the backbone loads.
    """
    import timm

    weights = resolve_pretrained(name, pretrained)
    if weights is None:
        raise PretrainedWeightsError(f"imagenet_classifier needs weights for '{name}'")
    state = adapt_state_dict(name, load_weights_file(weights))
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}).eval()
