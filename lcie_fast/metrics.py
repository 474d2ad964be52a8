"""Multi-label metrics of the paper's tables: mAP, CP/CR/CF1, OP/OR/OF1, and their top-k forms.

Conventions (all values in percent):

- **Targets**: 1 positive, 0 negative; any other value (e.g. -1 for VOC "difficult" or an
  unknown label in partial-label data) is ignored for that (image, class) pair: it is neither
  ranked in AP nor counted in any precision or recall.
- **AP** of a class is non-interpolated average precision, the ML-GCN protocol the paper's
  tables follow: the mean, over the class's positives, of the precision at the rank of each
  positive. **Ties** in scores are resolved as one threshold step: every tied image enters the
  ranking at once, so the precision at a tied positive is the precision after the whole tie
  group (scikit-learn's ``average_precision_score``). Without ties this equals ML-GCN's loop
  exactly, and it never depends on the input order. ``interpolated=True`` gives the
  Query2Label/VOC-2010 all-point interpolated AP (precision made monotone from the right).
- **mAP** is the mean AP over classes with at least one positive target. A class with no
  positive target is left out of mAP, CP, CR (and their top-k forms), and is named in
  ``classes_without_positives``; it still counts in OP/OR, where its false positives belong.
- **CP** = mean over classes of TP/predicted. A class with no positive prediction has
  precision 0 in that mean (ML-GCN's convention), and is named in
  ``classes_without_predictions``.
- **CR** = mean over classes of TP/positives; **CF1** = 2 CP CR / (CP + CR), the F1 of the
  means (not the mean of per-class F1s). **OP**, **OR**, **OF1** pool the counts of all
  classes. An F1 whose precision and recall are both 0 is 0.
- A label is predicted when its probability is >= ``threshold`` (logits are passed through a
  sigmoid first when ``from_logits=True``). The ``_top{k}`` metrics first keep each image's k
  highest-scoring labels (ties broken towards the lower class index), then apply the threshold.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from .errors import InvalidInputError


def sigmoid(logits: Any) -> np.ndarray:
    """Probabilities of logits, without overflow at any float32 logit (``1 / (1 + exp(-x))``
    overflows ``exp`` below -88.7: there it is computed as ``exp(x) / (1 + exp(x))``)."""
    x = np.asarray(logits)
    x = x.astype(np.result_type(x.dtype, np.float32), copy=False)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def _to_numpy(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, on any device and dtype
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise InvalidInputError(f"{name} must be 2-D (images, classes), got shape {array.shape}")
    return array


def average_precision(scores: Any, targets: Any, *, interpolated: bool = False) -> np.ndarray:
    """Per-class average precision in [0, 1] (NaN for a class without positives).

    Vectorised over classes: one sort of the (C, N) score matrix, then cumulative counts.
    AP = sum over tie groups g of (positives in g) x precision after g, over all positives.

    Args:
        scores: (N, C) scores; any monotone transform (logits or probabilities) gives the same AP.
        targets: (N, C) with 1 positive, 0 negative, anything else ignored.
        interpolated: All-point interpolated AP instead of the non-interpolated ML-GCN AP.
    """
    return _ranked_ap(_rank(scores, targets), interpolated=interpolated)


def _rank(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each class's images in descending score order: (order, positive, known, group_end), all (C, N).

    ``group_end`` marks the last image of each group of tied scores."""
    scores = np.ascontiguousarray(_to_numpy(scores, "scores").T)  # (C, N): rows sort fastest
    targets = np.ascontiguousarray(_to_numpy(targets, "targets").T)  # (C, N)
    order = np.argsort(-scores, axis=1)  # (C, N); order inside a tie group does not matter
    ranked = np.take_along_axis(scores, order, axis=1)  # (C, N)
    ranked_targets = np.take_along_axis(targets, order, axis=1)  # (C, N)
    positive = ranked_targets == 1
    group_end = np.ones_like(positive)
    group_end[:, :-1] = ranked[:, 1:] != ranked[:, :-1]
    return order, positive, positive | (ranked_targets == 0), group_end


def _ranked_ap(ranking: tuple[np.ndarray, ...], weights: np.ndarray | None = None,
               interpolated: bool = False) -> np.ndarray:
    """AP per class from :func:`_rank`; ``weights`` (N,) counts each image that many times (a
    bootstrap resample without re-sorting: copies of an image are tied with it)."""
    order, positive, known, group_end = ranking
    if weights is None:
        tp = np.cumsum(positive, axis=1, dtype=np.int64)  # (C, N)
        seen = np.cumsum(known, axis=1, dtype=np.int64)  # (C, N)
    else:
        ranked_weights = weights[order]  # (C, N)
        tp = np.cumsum(positive * ranked_weights, axis=1)
        seen = np.cumsum(known * ranked_weights, axis=1)
    precision = np.where(group_end, tp / np.maximum(seen, 1), 0.0)  # (C, N), at group ends only
    if interpolated:  # best precision at this or any later recall
        precision = np.where(group_end, np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1], 0.0)
    tp_at_end = np.where(group_end, tp, 0)
    tp_before = np.zeros_like(tp_at_end)
    tp_before[:, 1:] = np.maximum.accumulate(tp_at_end, axis=1)[:, :-1]  # tp at the previous group end
    num_positive = tp[:, -1] if tp.shape[1] else np.zeros(tp.shape[0], dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = ((tp_at_end - tp_before) * precision).sum(axis=1) / num_positive
    return np.where(num_positive > 0, ap, np.nan)


def _prf(tp: np.ndarray, predicted: np.ndarray, positives: np.ndarray, evaluated: np.ndarray) -> dict[str, float]:
    """CP, CR, CF1 over evaluated classes and OP, OR, OF1 over all, from per-class counts."""
    class_precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    class_recall = np.divide(tp, positives, out=np.zeros_like(tp), where=positives > 0)
    cp = float(class_precision[evaluated].mean())
    cr = float(class_recall[evaluated].mean())
    op = float(tp.sum() / predicted.sum()) if predicted.sum() > 0 else 0.0
    orec = float(tp.sum() / positives.sum()) if positives.sum() > 0 else 0.0
    return {
        "CP": 100 * cp,
        "CR": 100 * cr,
        "CF1": 100 * _f1(cp, cr),
        "OP": 100 * op,
        "OR": 100 * orec,
        "OF1": 100 * _f1(op, orec),
    }


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _counts(predicted: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    known = (targets == 0) | (targets == 1)
    pred = predicted & known
    tp = (pred & (targets == 1)).sum(axis=0).astype(np.float64)
    return tp, pred.sum(axis=0).astype(np.float64), (targets == 1).sum(axis=0).astype(np.float64)


def multilabel_metrics(
    scores: Any,
    targets: Any,
    *,
    threshold: float = 0.5,
    top_k: int = 3,
    from_logits: bool = False,
    class_names: Sequence[str] | None = None,
    interpolated: bool = False,
) -> dict[str, Any]:
    """The Table 1 metric set, in percent. See the module docstring for every convention.

    Args:
        scores: (N, C) probabilities in [0, 1], or logits with ``from_logits=True``; NumPy,
            torch (any device/dtype) or nested lists.
        targets: (N, C): 1 positive, 0 negative, other values ignored.
        threshold: Probability at or above which a label is predicted.
        top_k: k of the ``_top{k}`` metrics.
        from_logits: ``scores`` are logits (a sigmoid is applied before thresholding).
        class_names: Names of the C classes (default ``"0"``, ``"1"``, ...).
        interpolated: Report ``mAP`` as all-point interpolated AP (Query2Label style).

    Returns:
        ``mAP, CP, CR, CF1, OP, OR, OF1`` and the same suffixed ``_top{k}``; ``AP`` (class name
        -> AP, for every class with a positive); ``support`` (class name -> number of positive
        targets); ``classes_without_positives``,
        ``classes_without_predictions`` (lists of names); ``num_images``, ``num_classes``.

    Raises:
        ValueError: shapes differ, scores are not finite, probabilities fall outside [0, 1]
            (pass ``from_logits=True``), or no class has a positive target.
    """
    scores = _to_numpy(scores, "scores")
    targets = _to_numpy(targets, "targets")
    if scores.shape != targets.shape:
        raise InvalidInputError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
    if not np.isfinite(scores).all():
        raise InvalidInputError("scores contain NaN or infinite values")
    if from_logits:
        probabilities = sigmoid(scores)
    else:
        if scores.size and (scores.min() < 0 or scores.max() > 1):
            raise InvalidInputError(
                f"scores range over [{scores.min():.3g}, {scores.max():.3g}], outside [0, 1]: "
                f"pass from_logits=True for logits"
            )
        probabilities = scores
    num_images, num_classes = scores.shape
    if top_k < 1:
        raise InvalidInputError(f"top_k must be >= 1, got {top_k}")
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise InvalidInputError(f"{len(names)} class names for {num_classes} classes")

    ap = average_precision(probabilities, targets, interpolated=interpolated)
    evaluated = ~np.isnan(ap)
    if not evaluated.any():
        raise InvalidInputError("no class has a positive target: mAP is undefined")

    predicted = probabilities >= threshold
    tp, npred, npos = _counts(predicted, targets)
    result: dict[str, Any] = {"mAP": float(100 * ap[evaluated].mean())}
    result.update(_prf(tp, npred, npos, evaluated))

    k = min(top_k, num_classes)
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]  # (N, k)
    in_top = np.zeros_like(predicted)
    np.put_along_axis(in_top, top, True, axis=1)
    tp_k, npred_k, npos_k = _counts(predicted & in_top, targets)
    result.update({f"{key}_top{top_k}": value for key, value in _prf(tp_k, npred_k, npos_k, evaluated).items()})

    result["AP"] = {names[c]: float(100 * ap[c]) for c in range(num_classes) if evaluated[c]}
    result["support"] = {names[c]: int(npos[c]) for c in range(num_classes)}
    result["classes_without_positives"] = [names[c] for c in range(num_classes) if not evaluated[c]]
    result["classes_without_predictions"] = [names[c] for c in range(num_classes) if evaluated[c] and npred[c] == 0]
    result["num_images"] = int(num_images)
    result["num_classes"] = int(num_classes)
    result["threshold"] = float(threshold)
    return result


def format_metrics(result: dict[str, Any], top_k: int = 3) -> str:
    """A two-line plain-text table of the Table 1 metric set, plus per-class AP."""
    keys = ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"]
    top = [f"{k}_top{top_k}" for k in keys[1:]]
    support = result.get("support", {})
    lines = [
        "  ".join(f"{k:>7}" for k in keys + top),
        "  ".join(f"{result[k]:7.2f}" for k in keys + top),
        "per-class AP: " + ", ".join(
            f"{name} {value:.2f}" + (f" (n={support[name]})" if name in support else "")
            for name, value in result["AP"].items()),
    ]
    if "mAP_ci95" in result:
        low, high = result["mAP_ci95"]
        lines.insert(2, f"mAP {result['mAP']:.2f}, 95% bootstrap interval {low:.2f}-{high:.2f} "
                        f"({result.get('bootstrap_draws', '?')} resamples of the images)")
    if result["classes_without_positives"]:
        lines.append("left out (no positive target): " + ", ".join(result["classes_without_positives"]))
    return "\n".join(lines)


def fit_thresholds(scores: Any, targets: Any, *, from_logits: bool = False,
                   class_names: Sequence[str] | None = None, default: float = 0.5) -> dict[str, Any]:
    """Per-class probability thresholds that maximise each class's F1 on a validation set.

    For each class every distinct score is a candidate; predicting positive at p >= t, the
    threshold with the best F1 wins (ties: the higher threshold). It is placed halfway to the
    next lower score, so scores equal to the fitted one stay positive under float noise.
    Classes without a positive target keep ``default`` and are named.

    Returns:
        ``{"thresholds": {name: t}, "f1": {name: best F1 in percent}, "default": default,
        "classes_without_positives": [...]}`` (the format ``Tagger.load(thresholds=...)`` reads).
    """
    scores = _to_numpy(scores, "scores")
    targets = _to_numpy(targets, "targets")
    if scores.shape != targets.shape:
        raise InvalidInputError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
    probabilities = sigmoid(scores) if from_logits else scores
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(scores.shape[1])]
    thresholds, f1s, without = {}, {}, []
    for c, name in enumerate(names):
        known = (targets[:, c] == 0) | (targets[:, c] == 1)
        p, t = probabilities[known, c], targets[known, c] == 1
        positives = int(t.sum())
        if positives == 0:
            thresholds[name], without = default, without + [name]
            continue
        order = np.argsort(-p, kind="stable")
        p, t = p[order], t[order]
        tp = np.cumsum(t)
        predicted = np.arange(1, len(p) + 1)
        last_of_tie = np.r_[p[1:] != p[:-1], True]  # thresholds at distinct scores only
        f1 = np.where(last_of_tie, 2 * tp / (predicted + positives), -1.0)
        best = int(np.flatnonzero(f1 == f1.max())[0])
        below = p[best + 1] if best + 1 < len(p) else 0.0
        thresholds[name] = float((p[best] + below) / 2)
        f1s[name] = float(100 * f1[best])
    return {"thresholds": thresholds, "f1": f1s, "default": default, "classes_without_positives": without}


def bootstrap_interval(scores: Any, targets: Any, *, reference: Any = None, draws: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of mAP, or of a paired mAP difference, in points.

    Images are resampled with replacement ``draws`` times (seeded); each resample's mAP is
    computed as :func:`multilabel_metrics` does (a class without positives in a resample is
    left out of it), from one ranking of the scores weighted by how often each image was drawn
    (no sort per resample: about 0.16 s per resample at COCO-val scale, 40,504 x 80). With
    ``reference``, each resample scores ``mAP(scores) - mAP(reference)`` on the same images:
    the paired interval of a difference, much narrower than two separate intervals because
    image difficulty cancels.

    Args:
        scores: (N, C) scores or logits (AP only ranks them).
        targets: (N, C), 1 positive, 0 negative, other values ignored.
        reference: (N, C) scores of the model compared against, or None.
        draws: Number of resamples.
        seed: Seed of the resampling.
        confidence: Central probability of the interval.

    Returns:
        (low, high) in percent points.
    """
    scores = _to_numpy(scores, "scores")
    targets = _to_numpy(targets, "targets")
    ref = _to_numpy(reference, "reference") if reference is not None else None
    if scores.shape != targets.shape or (ref is not None and ref.shape != scores.shape):
        raise InvalidInputError(f"scores {scores.shape}, targets {targets.shape}"
                         + (f" and reference {ref.shape}" if ref is not None else "") + " differ in shape")
    if draws < 1 or not 0 < confidence < 1:
        raise InvalidInputError(f"need draws >= 1 and 0 < confidence < 1, got {draws}, {confidence}")
    rng = np.random.default_rng(seed)
    n = scores.shape[0]
    ranking = _rank(scores, targets)
    ref_ranking = _rank(ref, targets) if ref is not None else None
    values = np.empty(draws)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no class has a positive
        for i in range(draws):
            weights = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
            value = np.nanmean(_ranked_ap(ranking, weights))
            if ref_ranking is not None:
                value -= np.nanmean(_ranked_ap(ref_ranking, weights))
            values[i] = 100 * value
    values = values[np.isfinite(values)]
    if not len(values):
        raise InvalidInputError("no resample has a class with a positive target")
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)
