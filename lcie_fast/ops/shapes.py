"""The shapes a model feeds its fast ops, read from the model: its backbone's ``feature_info``
and the widths the model derived from it.

Tests and benchmarks run the kernels at the presets' shapes; they build the preset on the meta
device (no weights, no memory) and read the shapes here instead of restating channel counts
and strides:

    with torch.device("meta"):
        shapes = op_shapes(create_model("lcie_r101_448"))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class OpShapes:
    """The shapes one model gives ``downsample_concat`` and ``attention``.

    Attributes:
        levels: ``(C_i, H_i, W_i)`` of the fused backbone levels (X3, X4, X5), shallow to deep.
        dim: D, the width of the image tokens and the decoder's attention.
        tokens: h*w, the number of image tokens.
        fused_dim: E = D + h*w, the width of the correlation encoder's attention.
        num_heads: Attention heads in the decoder and the encoder.
        num_classes: Number of labels C (the attention queries).
    """

    levels: tuple[tuple[int, int, int], ...]
    dim: int
    tokens: int
    fused_dim: int
    num_heads: int
    num_classes: int

    def attention(self, which: str) -> tuple[int, int, int]:
        """``(Lq, Lk, Dh)`` of the ``"decoder"`` (labels over image tokens) or the ``"encoder"``
        (labels over labels) attention."""
        if which == "decoder":
            return self.num_classes, self.tokens, self.dim // self.num_heads
        if which == "encoder":
            return self.num_classes, self.num_classes, self.fused_dim // self.num_heads
        raise ValueError(f"which must be 'decoder' or 'encoder', got {which!r}")


def op_shapes(model: nn.Module) -> OpShapes:
    """The fast-op shapes of an LCIE ``model`` (any device; the meta device is enough).

    Args:
        model: A built :class:`lcie_fast.models.LCIE`, read through its ``backbone.feature_info``,
            ``img_size``, ``dim``, ``token_hw``, ``fused_dim``, ``num_classes`` and ``config``.
    """
    info = model.backbone.feature_info
    sides = [math.ceil(model.img_size / r) for r in info.reduction()]
    levels = tuple((c, s, s) for c, s in zip(info.channels(), sides))
    h, w = model.token_hw
    return OpShapes(levels, model.dim, h * w, model.fused_dim, model.config.num_heads, model.num_classes)
