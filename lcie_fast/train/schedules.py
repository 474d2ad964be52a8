"""Learning-rate schedules as per-step multipliers of the peak lr (for ``LambdaLR``).

Plain functions of the step count: a scheduler's state is one integer, which checkpoints
and resumes exactly.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

from ..errors import InvalidInputError


def step_decay(step: int, *, steps_per_epoch: int, step_epochs: int, gamma: float) -> float:
    """x gamma every ``step_epochs`` epochs (paper: 0.1 every 30)."""
    return gamma ** ((step // max(steps_per_epoch, 1)) // max(step_epochs, 1))


def one_cycle(step: int, *, total_steps: int, warmup_pct: float, div_factor: float = 25.0,
              final_div_factor: float = 1e4) -> float:
    """Cosine warm-up from lr/div_factor to lr, then cosine down to lr/(div_factor*final_div_factor)."""
    warmup = max(int(total_steps * warmup_pct), 1)
    start, end = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)
    if step < warmup:
        t = step / warmup
        return start + (1.0 - start) * (1 - math.cos(math.pi * t)) / 2
    t = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return end + (1.0 - end) * (1 + math.cos(math.pi * t)) / 2


def constant(step: int) -> float:
    return 1.0


def make_schedule(name: str, *, steps_per_epoch: int, epochs: int, step_epochs: int = 30, gamma: float = 0.1,
                  warmup_pct: float = 0.2) -> Callable[[int], float]:
    """The multiplier function of schedule ``name`` (``step``, ``onecycle``, ``constant``)."""
    if name == "step":
        return functools.partial(step_decay, steps_per_epoch=steps_per_epoch, step_epochs=step_epochs, gamma=gamma)
    if name == "onecycle":
        return functools.partial(one_cycle, total_steps=steps_per_epoch * epochs, warmup_pct=warmup_pct)
    if name == "constant":
        return constant
    raise InvalidInputError(f"unknown schedule {name!r}")
