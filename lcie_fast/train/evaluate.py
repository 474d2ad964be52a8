"""Prediction over a loader (every rank, gathered) and the Table 1 metrics of a checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from ..metrics import multilabel_metrics
from .distributed import DistInfo, all_gather_objects

BRANCHES = ("y_ca", "y_sp", "y_co")


@dataclasses.dataclass
class Prediction:
    """Logits of every image that decoded, in dataset order, and the images that did not;
    with ``branches=True`` also each branch's logits (eq. 3, 5, 8) by name."""

    logits: np.ndarray  # (N, C) float32
    indices: np.ndarray  # (N,) dataset indices
    failed: list[tuple[int, str, str]]
    seconds: float
    branches: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> (N, C)

    @property
    def images_per_second(self) -> float:
        return len(self.indices) / max(self.seconds, 1e-9)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Any, *, autocast=None, info: DistInfo | None = None,
            progress: bool = True, desc: str = "eval", branches: bool = False) -> Prediction:
    """Run ``model`` in eval mode over ``loader``; gather every rank's logits on every rank.

    Padding added by the sampler to equalise shards is removed (each index is kept once).
    ``branches=True`` also keeps y_ca, y_sp and y_co (those the model has) from
    ``forward_branches``.
    """
    info = info or DistInfo()
    was_training = model.training
    model.eval()
    outputs: dict[str, list[torch.Tensor]] = {}
    indices, failed = [], []
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", disable=not (progress and info.is_main), leave=False)
    for batch in bar:
        failed.extend(batch.failed)
        if len(batch) == 0:
            continue
        with autocast() if autocast is not None else contextlib.nullcontext():
            if branches:
                found = model.forward_branches(batch.images, with_partial=False)
                out = {name: found[name] for name in ("logits", *BRANCHES) if name in found}
            else:
                out = {"logits": model(batch.images)}
        for name, value in out.items():
            outputs.setdefault(name, []).append(value.float().cpu())
        indices.append(batch.indices.cpu())
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    seconds = time.perf_counter() - start
    model.train(was_training)
    local = (
        {name: torch.cat(values).numpy() for name, values in outputs.items()},
        torch.cat(indices).numpy() if indices else np.zeros(0, np.int64),
        failed,
    )
    parts = all_gather_objects(local, info)
    all_indices = np.concatenate([p[1] for p in parts])
    all_failed = sorted({f for p in parts for f in p[2]})
    if not len(all_indices):
        return Prediction(np.zeros((0, 0), np.float32), all_indices, all_failed, seconds)
    unique, first = np.unique(all_indices, return_index=True)  # sorted, padding dropped
    names = next(p[0] for p in parts if len(p[1])).keys()
    stacked = {name: np.concatenate([p[0][name] for p in parts if len(p[1])])[first] for name in names}
    logits = stacked.pop("logits")
    return Prediction(logits, unique, all_failed, seconds, branches=stacked)


def branch_report(prediction: Prediction, targets: np.ndarray, label_names: list[str], *, draws: int = 1000,
                  seed: int = 0) -> list[dict[str, Any]]:
    """mAP (with its bootstrap interval) of each branch alone and of every partial sum of them.

    Besides mAP, each row gives the mean logit over images and labels and the mean over labels
    of the logit's spread across images (standard deviation): a branch whose logits barely
    move between images adds a near-constant offset, not evidence.
    """
    from ..metrics import bootstrap_interval

    targets = targets[prediction.indices]
    names = [b for b in BRANCHES if b in prediction.branches]
    rows = []
    for size in range(1, len(names) + 1):
        for combo in itertools.combinations(names, size):
            logits = sum(prediction.branches[name].astype(np.float64) for name in combo)
            metrics = multilabel_metrics(logits, targets, from_logits=True, class_names=label_names)
            interval = list(bootstrap_interval(logits, targets, draws=draws, seed=seed)) if draws else None
            rows.append({"branches": " + ".join(combo), "mAP": metrics["mAP"], "mAP_ci95": interval,
                         "AP": metrics["AP"], "mean_logit": float(logits.mean()),
                         "spread": float(logits.std(axis=0).mean())})
    return rows


def compare_predictions(prediction: Prediction, reference: Prediction, targets: np.ndarray, *, draws: int = 1000,
                        seed: int = 0) -> dict[str, Any]:
    """mAP of ``prediction`` minus that of ``reference`` on the images both scored, with its paired
    bootstrap interval (the same resamples score both, so image difficulty cancels).

    Args:
        prediction, reference: Two models' predictions over the same dataset.
        targets: The dataset's (N_all, C) targets.

    Returns:
        ``reference_mAP``, ``dmAP``, ``dmAP_ci95`` (points), ``images`` and ``draws``.
    """
    from ..metrics import bootstrap_interval

    common, rows, ref_rows = np.intersect1d(prediction.indices, reference.indices, return_indices=True)
    if not len(common):
        raise InvalidInputError("the two predictions share no image: nothing to compare")
    logits, ref_logits, targets = prediction.logits[rows], reference.logits[ref_rows], targets[common]
    ref_map = multilabel_metrics(ref_logits, targets, from_logits=True)["mAP"]
    dmap = multilabel_metrics(logits, targets, from_logits=True)["mAP"] - ref_map
    interval = bootstrap_interval(logits, targets, reference=ref_logits, draws=draws, seed=seed)
    return {"reference_mAP": ref_map, "dmAP": dmap, "dmAP_ci95": list(interval), "images": int(len(common)),
            "draws": draws}


def format_branch_report(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`branch_report`."""
    lines = ["| logits | mAP | 95% interval | mean logit | spread across images | per-class AP |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        interval = "{:.2f}-{:.2f}".format(*row["mAP_ci95"]) if row["mAP_ci95"] else "-"
        per_class = ", ".join(f"{k} {v:.1f}" for k, v in row["AP"].items())
        lines.append(f"| {row['branches']} | {row['mAP']:.2f} | {interval} | {row['mean_logit']:+.2f} | "
                     f"{row['spread']:.2f} | {per_class} |")
    return "\n".join(lines)


def score(prediction: Prediction, targets: np.ndarray, label_names: list[str], threshold: float = 0.5) -> dict[str, Any]:
    """Table 1 metrics of a prediction against the dataset's (N_all, C) targets."""
    if not len(prediction.indices):
        first = f"; the first: {prediction.failed[0][1]}: {prediction.failed[0][2]}" if prediction.failed else ""
        raise InvalidInputError(f"no image could be decoded ({len(prediction.failed)} failed{first}): nothing to score")
    return multilabel_metrics(prediction.logits, targets[prediction.indices], threshold=threshold,
                              from_logits=True, class_names=label_names)
