"""Training augmentation: a mild random resized crop, then an automatic policy from torchvision.

Applied by the loaders between decoding and normalisation, in this order::

    decode -> random resized crop window (area fraction in ``crop_scale``) -> resize to S x S
           -> horizontal flip -> policy (TrivialAugmentWide or RandAugment, torchvision v2, uint8)

Every random choice of a sample is a pure function of (seed, epoch, index), like the flips of
:func:`~lcie_fast.data.transforms.flip_decision`: any worker count and a resumed run of the
torch loader augment each image of each epoch the same way. The crop window is drawn here, on
the host, so the DALI loader crops exactly the same window; the policy's operations use torch's
RNG, seeded per sample inside :func:`torch.random.fork_rng` so the caller's random streams are
untouched. (The DALI loader applies DALI's own implementation of the same policy, with DALI's
random stream: same crops and flips, other policy draws.)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..errors import InvalidInputError

POLICIES = ("none", "trivialaugment", "randaugment")


@dataclasses.dataclass(frozen=True)
class CropWindow:
    """A crop in relative coordinates: top-left corner and size, each in [0, 1]."""

    top: float = 0.0
    left: float = 0.0
    height: float = 1.0
    width: float = 1.0

    @property
    def is_full(self) -> bool:
        return self.height >= 1.0 and self.width >= 1.0

    def pixels(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) in pixels of an image of that size; at least 1x1."""
        h = max(1, min(height, round(self.height * height)))
        w = max(1, min(width, round(self.width * width)))
        top = min(int(self.top * height), height - h)
        left = min(int(self.left * width), width - w)
        return top, left, h, w


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (independent of its flip)."""
    return int(np.random.default_rng([seed, epoch, index, 7]).integers(2**62))


class Augment:
    """The training augmentation of a run (see the module docstring).

    Args:
        policy: ``none``, ``trivialaugment`` (TrivialAugmentWide) or ``randaugment``
            (RandAugment, 2 operations, magnitude 9).
        crop_scale: (low, high) fraction of the image area a random resized crop keeps;
            (1, 1) leaves the image whole.
        crop_ratio: (low, high) aspect ratio range of the crop window (log-uniform).
    """

    def __init__(self, policy: str = "none", crop_scale: tuple[float, float] = (1.0, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        if policy not in POLICIES:
            raise InvalidInputError(f"augmentation policy must be one of {POLICIES}, got {policy!r}")
        low, high = crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise InvalidInputError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        self.policy_name = policy
        self.crop_scale = (float(low), float(high))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self._policy = None

    @property
    def active(self) -> bool:
        return self.policy_name != "none" or self.crop_scale != (1.0, 1.0)

    def crop_window(self, seed: int) -> CropWindow:
        """The random resized crop window of the sample with this seed (torchvision's rule,
        on a unit square: 10 tries at an area and a log-uniform ratio, else the whole image)."""
        if self.crop_scale == (1.0, 1.0):
            return CropWindow()
        rng = np.random.default_rng([seed, 1])
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):
            area = rng.uniform(*self.crop_scale)
            ratio = math.exp(rng.uniform(*log_ratio))
            width, height = math.sqrt(area * ratio), math.sqrt(area / ratio)
            if width <= 1.0 and height <= 1.0:
                return CropWindow(top=rng.uniform(0, 1 - height), left=rng.uniform(0, 1 - width),
                                  height=height, width=width)
        return CropWindow()

    def crop(self, image: np.ndarray, window: CropWindow) -> np.ndarray:
        """Crop an (H, W, 3) image to ``window`` (a view, no copy)."""
        if window.is_full:
            return image
        top, left, h, w = window.pixels(*image.shape[:2])
        return image[top:top + h, left:left + w]

    def apply_policy(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """The automatic policy on a (3, S, S) uint8 tensor, deterministic in ``seed``."""
        if self.policy_name == "none":
            return image
        if self._policy is None:
            from torchvision.transforms import v2

            self._policy = (v2.TrivialAugmentWide() if self.policy_name == "trivialaugment"
                            else v2.RandAugment(num_ops=2, magnitude=9))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._policy(image)
