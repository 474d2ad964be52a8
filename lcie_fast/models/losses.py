"""The LCIE training loss (paper eq. 12-13): alpha * BCE(y) + beta * BCE(y_infer), masked.

Normalisation (stated, and the same for both terms): ``"sum"`` (the default) sums the binary
cross-entropy of every known (image, label) pair and divides by the number of images: eq. 12
exactly, averaged over the batch, the scale the paper's SGD learning rate was set for.
``"mean"`` divides by the number of known pairs instead: with full labels the mean over B x C
entries, eq. 12 divided by C, which under SGD is a C-times lower effective learning rate (AdamW
is indifferent to the scale). Unknown labels (partial-label training) are masked out of the sum
(and of the count, for ``"mean"``). The loss is computed in fp32 whatever the autocast dtype of
the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError


class LCIELoss(nn.Module):
    """alpha x BCE(y, t) + beta x BCE(y_infer, t) over known labels.

    Args:
        alpha: Weight of the final logits' loss (paper: 1.0).
        beta: Weight of the partial branch's loss (paper: 0.1).
        normalization: ``"sum"`` over labels then mean over images (eq. 12, the default), or
            ``"mean"`` over known pairs (see the module docstring).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.1, normalization: str = "sum") -> None:
        super().__init__()
        if normalization not in ("mean", "sum"):
            raise InvalidInputError(f"normalization must be 'mean' or 'sum', got {normalization!r}")
        self.alpha = alpha
        self.beta = beta
        self.normalization = normalization

    def bce(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Masked BCE-with-logits in fp32. logits, targets, mask: (B, C) -> scalar."""
        logits = logits.float()
        targets = targets.float()
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (B, C): eq. 12, per label
        if mask is None:
            known = torch.ones_like(loss)
        else:
            known = mask.to(loss.dtype)
            loss = loss * known
        if self.normalization == "mean":
            return loss.sum() / known.sum().clamp(min=1.0)
        return loss.sum() / max(loss.shape[0], 1)

    def forward(
        self,
        outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None],
        targets: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of the model's outputs.

        Args:
            outputs: Logits (B, C), or the train-mode pair ``(logits, infer_logits)``.
            targets: (B, C) multi-hot in {0, 1}; entries where ``mask`` is 0 are ignored.
            mask: (B, C) 1 where the label is known, 0 where it is unknown; None = all known.

        Returns:
            The scalar loss in fp32.
        """
        if isinstance(outputs, torch.Tensor):
            logits, infer_logits = outputs, None
        else:
            logits, infer_logits = outputs
        if logits.shape != targets.shape:
            raise InvalidInputError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
        if mask is not None and mask.shape != targets.shape:
            raise InvalidInputError(f"mask {tuple(mask.shape)} and targets {tuple(targets.shape)} differ in shape")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            loss = self.alpha * self.bce(logits, targets, mask)  # eq. 13: alpha * BCE(y)
            if infer_logits is not None and self.beta:
                loss = loss + self.beta * self.bce(infer_logits, targets, mask)  # + beta * BCE(y_infer)
        return loss
