"""Tag records with every field and every oddity, shared by the output tests (not a test module)."""

from __future__ import annotations

import hashlib
import random

from lcie_fast.outputs import TagRecord

LABELS = ("car", "bus", "b:c")  # a label with ':' (CSV tags split on the last one)


def make_records(count: int, seed: int = 0) -> list[TagRecord]:
    """Records with every field and every oddity: in-memory inputs, errors, non-finite scores, duplicates,
    a comma in the path (quoted in CSV)."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        scores = {label: rng.random() for label in LABELS}
        kept = [(label, score) for label, score in scores.items() if score > 0.3]
        path = None if index % 7 == 3 else f"imgs/ü,{index:04d}.jpg"
        error = "corrupt image: truncated" if index % 5 == 4 else None
        if error:
            kept, scores = [], None
        elif index % 6 == 1:
            scores["bus"] = float("nan")  # a broken model
        elif index % 6 == 2:
            kept.append(("car", float("inf")))
        duplicate = "imgs/ü,0000.jpg" if index % 4 == 2 else None
        records.append(TagRecord(index, path, kept, error, scores, ("md5", hashlib.md5(bytes([index % 256])).hexdigest()),
                                 duplicate))
    return records
