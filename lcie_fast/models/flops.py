"""Parameters and FLOPs measured with torch's FLOP counter (FLOP = 2 x multiply-add)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelCost:
    """Size and cost of one forward pass of a model at one input size, batch 1.

    Attributes:
        params: All parameters.
        backbone_params: Parameters of ``model.backbone``.
        gflops: Total GFLOP per image (1 GFLOP = 1e9 FLOP, FLOP = 2 x multiply-add).
        backbone_gflops: GFLOP spent in the backbone.
        input_size: Square input side the cost was measured at.
    """

    params: int
    backbone_params: int
    gflops: float
    backbone_gflops: float
    input_size: int

    @property
    def head_gflops(self) -> float:
        return self.gflops - self.backbone_gflops


def measure_cost(model: nn.Module, input_size: int | None = None) -> ModelCost:
    """Count FLOPs of one eval-mode forward at batch 1 with ``torch.utils.flop_counter``.

    Attention runs on the math SDPA backend while counting, so its matmuls are counted
    (the fused CPU kernel is invisible to the counter). It runs with autograd on: torch's
    module tracker (used by the counter) fails on parameter views made under ``no_grad``.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    size = input_size or model.img_size
    was_training = model.training
    model.eval()
    images = torch.randn(1, 3, size, size, device=next(model.parameters()).device)
    try:
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            model(images)
    finally:
        model.train(was_training)
    per_module = counter.get_flop_counts()
    backbone = sum(per_module.get(f"{type(model).__name__}.backbone", {}).values())
    return ModelCost(
        params=sum(p.numel() for p in model.parameters()),
        backbone_params=sum(p.numel() for p in model.backbone.parameters()),
        gflops=counter.get_total_flops() / 1e9,
        backbone_gflops=backbone / 1e9,
        input_size=size,
    )
