"""Prediction over a loader (every rank, gathered) and the Table 1 metrics of a checkpoint."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..metrics import multilabel_metrics
from .distributed import DistInfo, all_gather_objects


@dataclasses.dataclass
class Prediction:
    """Logits of every image that decoded, in dataset order, and the images that did not."""

    logits: np.ndarray  # (N, C) float32
    indices: np.ndarray  # (N,) dataset indices
    failed: list[tuple[int, str, str]]
    seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.indices) / max(self.seconds, 1e-9)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Any, *, autocast=None, info: DistInfo | None = None,
            progress: bool = True, desc: str = "eval") -> Prediction:
    """Run ``model`` in eval mode over ``loader``; gather every rank's logits on every rank.

    Padding added by the sampler to equalise shards is removed (each index is kept once).
    """
    info = info or DistInfo()
    was_training = model.training
    model.eval()
    logits, indices, failed = [], [], []
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", disable=not (progress and info.is_main), leave=False)
    for batch in bar:
        failed.extend(batch.failed)
        if len(batch) == 0:
            continue
        if autocast is not None:
            with autocast():
                out = model(batch.images)
        else:
            out = model(batch.images)
        logits.append(out.float().cpu())
        indices.append(batch.indices.cpu())
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    seconds = time.perf_counter() - start
    model.train(was_training)
    local = (
        torch.cat(logits).numpy() if logits else np.zeros((0, 0), np.float32),
        torch.cat(indices).numpy() if indices else np.zeros(0, np.int64),
        failed,
    )
    parts = all_gather_objects(local, info)
    all_logits = [p[0] for p in parts if len(p[1])]
    all_indices = np.concatenate([p[1] for p in parts])
    all_failed = sorted({f for p in parts for f in p[2]})
    if not len(all_indices):
        return Prediction(np.zeros((0, 0), np.float32), all_indices, all_failed, seconds)
    stacked = np.concatenate(all_logits)
    unique, first = np.unique(all_indices, return_index=True)  # sorted, padding dropped
    return Prediction(stacked[first], unique, all_failed, seconds)


def score(prediction: Prediction, targets: np.ndarray, label_names: list[str], threshold: float = 0.5) -> dict[str, Any]:
    """Table 1 metrics of a prediction against the dataset's (N_all, C) targets."""
    if not len(prediction.indices):
        raise ValueError("no image could be decoded: nothing to score")
    return multilabel_metrics(prediction.logits, targets[prediction.indices], threshold=threshold,
                              from_logits=True, class_names=label_names)
