"""Partial-label protocol (paper 4.2, after Durand et al. 2019): drop known labels at random.

Each known (image, label) entry is dropped, i.e. set to unknown (-1), independently with
probability ``ratio``, from a seeded generator, so the same seed always drops the same
entries. Images left with no known label are excluded, as in the paper. The loss masks
unknown entries; validation always uses full labels.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InvalidInputError
from .datasets import MultiLabelSet


@dataclasses.dataclass(frozen=True)
class PartialLabelStats:
    """What the protocol did: requested ratio, realised ratio, images excluded."""

    ratio: float
    seed: int
    known_before: int
    dropped: int
    images_before: int
    images_excluded: int

    @property
    def realised_ratio(self) -> float:
        return self.dropped / max(self.known_before, 1)


def drop_labels(data: MultiLabelSet, ratio: float, seed: int) -> tuple[MultiLabelSet, PartialLabelStats]:
    """Return ``data`` with each known label dropped with probability ``ratio``, and stats.

    Raises:
        ValueError: ``ratio`` outside [0, 1).
    """
    if not 0.0 <= ratio < 1.0:
        raise InvalidInputError(f"partial-label ratio must be in [0, 1), got {ratio}")
    targets = data.targets.copy()
    known = targets >= 0
    rng = np.random.default_rng(seed)
    drop = (rng.random(targets.shape) < ratio) & known
    targets[drop] = -1
    keep = np.flatnonzero((targets >= 0).any(axis=1))
    stats = PartialLabelStats(
        ratio=ratio, seed=seed, known_before=int(known.sum()), dropped=int(drop.sum()),
        images_before=len(data), images_excluded=len(data) - len(keep),
    )
    out = dataclasses.replace(data, targets=targets).subset(keep)
    return out, stats
