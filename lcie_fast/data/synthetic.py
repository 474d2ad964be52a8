"""A small generated multi-label photo set, for tests and for the demo where traffic5 is absent.

Each label is a coloured shape (label k: colour k, square or disc) drawn at a random place and
size over a noisy background; an image carries 0-3 labels. The set is written in the traffic5
layout: ``<root>/<split>/images/*.jpg`` and ``<root>/<split>/labels.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError

COLOURS = [(220, 40, 40), (40, 180, 60), (40, 80, 220), (230, 200, 40), (200, 60, 200), (40, 200, 200),
           (240, 140, 30), (120, 120, 120)]


def make_synthetic_set(root: str | Path, *, splits: dict[str, int] | None = None, num_labels: int = 5,
                       size: int = 160, seed: int = 0) -> Path:
    """Write the set under ``root`` (if not already there) and return ``root``.

    Args:
        root: Output folder.
        splits: Images per split (default ``{"train": 160, "valid": 60}``).
        num_labels: Number of labels (at most 8).
        size: Side of the square JPEGs.
        seed: Seed of the drawing.
    """
    from PIL import Image, ImageDraw

    if not 1 <= num_labels <= len(COLOURS):
        raise InvalidInputError(f"num_labels must be in 1..{len(COLOURS)}")
    root = Path(root)
    splits = splits or {"train": 160, "valid": 60}
    names = [f"shape{k}" for k in range(num_labels)]
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        folder = root / split
        if (folder / "labels.csv").is_file():
            continue
        (folder / "images").mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(count):
            background = rng.integers(60, 120, size=(size, size, 3), dtype=np.uint8)
            background = (background + rng.integers(0, 25, size=(size, size, 1), dtype=np.uint8)).astype(np.uint8)
            image = Image.fromarray(background)
            draw = ImageDraw.Draw(image)
            present = rng.random(num_labels) < 1.5 / num_labels
            for k in np.flatnonzero(present):
                side = int(rng.integers(size // 6, size // 3))
                x, y = (int(v) for v in rng.integers(0, size - side, size=2))
                shape = draw.rectangle if k % 2 == 0 else draw.ellipse
                shape([x, y, x + side, y + side], fill=COLOURS[k])
            name = f"{split}_{i:04d}.jpg"
            image.save(folder / "images" / name, quality=90)
            rows.append([name, *(int(v) for v in present)])
        with open(folder / "labels.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", *names])
            writer.writerows(rows)
    return root
