"""LCIELoss: weights, masking of unknown labels, normalisation, fp32 under autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lcie_fast.models.losses import LCIELoss


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 6, generator=g)
    infer = torch.randn(4, 6, generator=g)
    targets = (torch.rand(4, 6, generator=g) > 0.5).float()
    return logits, infer, targets


def test_weights_combine_both_terms():
    logits, infer, targets = _batch()
    loss = LCIELoss(alpha=1.0, beta=0.1, normalization="mean")((logits, infer), targets)
    expected = F.binary_cross_entropy_with_logits(logits, targets) + 0.1 * F.binary_cross_entropy_with_logits(infer, targets)
    torch.testing.assert_close(loss, expected)
    only_final = LCIELoss(alpha=2.0, beta=0.0, normalization="mean")((logits, infer), targets)
    torch.testing.assert_close(only_final, 2.0 * F.binary_cross_entropy_with_logits(logits, targets))
    # eval-mode outputs (a bare tensor) carry no partial term
    torch.testing.assert_close(LCIELoss(normalization="mean")(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))


def test_mask_removes_unknown_labels_from_sum_and_count():
    logits, infer, targets = _batch(1)
    mask = torch.ones_like(targets)
    mask[:, :2] = 0  # first two labels unknown in every image
    masked = LCIELoss(beta=0.0, normalization="mean")(logits, targets, mask)
    subset = F.binary_cross_entropy_with_logits(logits[:, 2:], targets[:, 2:])
    torch.testing.assert_close(masked, subset)
    # what an unknown label's target says must not matter
    flipped = targets.clone()
    flipped[:, :2] = 1 - flipped[:, :2]
    torch.testing.assert_close(LCIELoss()((logits, infer), flipped, mask), LCIELoss()((logits, infer), targets, mask))
    # and its logit gets no gradient
    logits.requires_grad_(True)
    LCIELoss()(logits, targets, mask).backward()
    assert logits.grad[:, :2].abs().sum() == 0 and logits.grad[:, 2:].abs().sum() > 0


def test_sum_normalisation_is_eq12_averaged_over_images():
    logits, _, targets = _batch(2)
    loss = LCIELoss(beta=0.0, normalization="sum")(logits, targets)
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]
    torch.testing.assert_close(loss, expected)


def test_fully_masked_batch_gives_zero_not_nan():
    logits, infer, targets = _batch(3)
    loss = LCIELoss()((logits, infer), targets, torch.zeros_like(targets))
    assert loss.item() == 0.0


def test_loss_is_fp32_under_autocast():
    logits, infer, targets = _batch(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LCIELoss()((logits.bfloat16(), infer.bfloat16()), targets)
    assert loss.dtype == torch.float32
    expected = LCIELoss()((logits.bfloat16().float(), infer.bfloat16().float()), targets)
    torch.testing.assert_close(loss, expected)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        LCIELoss()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="normalization"):
        LCIELoss(normalization="batch")
