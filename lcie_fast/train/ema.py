"""Exponential moving average of model weights (Query2Label / timm style)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """A frozen copy of a model whose floating-point weights track ``decay``-averages.

    Buffers (BatchNorm statistics) are copied, not averaged. The EMA model is what is
    evaluated beside the trained one and exported when it scores better.

    The decay warms up (TensorFlow's ExponentialMovingAverage ``num_updates`` rule): update t
    uses min(decay, (1 + t) / (10 + t)), so a short fine-tuning run's average is not dominated
    by the weights it started from.

    Args:
        model: The model being trained (unwrapped: no DDP / compile wrapper).
        decay: Weight of the old average per update, once warmed up.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9997) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        # parameters() and buffers() walk the same modules in the same order in both copies
        for ema_param, param in zip(self.module.parameters(), model.parameters()):
            ema_param.lerp_(param.detach().to(ema_param.dtype), 1.0 - decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.updates = state["updates"]
        self.module.load_state_dict(state["model"])
