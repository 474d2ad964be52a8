"""multilabel_metrics on hand-computed cases, against ML-GCN's loop, and on every edge case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcie_fast.metrics import average_precision, format_metrics, multilabel_metrics


def mlgcn_average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """ML-GCN's per-class AP loop (util.py, AveragePrecisionMeter), transcribed."""
    ap = np.zeros(scores.shape[1])
    for k in range(scores.shape[1]):
        order = np.argsort(-scores[:, k], kind="stable")
        pos_count = total_count = precision_at_i = 0.0
        for i in order:
            label = targets[i, k]
            if label == 1:
                pos_count += 1
            total_count += 1
            if label == 1:
                precision_at_i += pos_count / total_count
        ap[k] = precision_at_i / pos_count
    return ap


def test_ap_hand_computed():
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    targets = np.array([[1], [0], [1], [0]])
    # positives at ranks 1 and 3: precisions 1/1 and 2/3
    assert average_precision(scores, targets)[0] == pytest.approx((1 + 2 / 3) / 2)


def test_ap_equals_mlgcn_loop_without_ties():
    rng = np.random.default_rng(0)
    scores = rng.random((200, 7))
    targets = (rng.random((200, 7)) < 0.3).astype(float)
    ours = average_precision(scores, targets)
    ref = mlgcn_average_precision(scores, targets)
    print("max |AP - ML-GCN AP| =", np.abs(ours - ref).max())
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_ties_enter_as_one_threshold_step_and_ignore_input_order():
    scores = np.array([[0.9], [0.9], [0.5]])
    targets = np.array([[0], [1], [1]])
    # the tie group (0.9, 0.9) holds one positive: precision 1/2 after it; then 2/3
    expected = (0.5 + 2 / 3) / 2
    assert average_precision(scores, targets)[0] == pytest.approx(expected)
    assert average_precision(scores[[1, 0, 2]], targets[[1, 0, 2]])[0] == pytest.approx(expected)
    rng = np.random.default_rng(1)
    tied = rng.integers(0, 4, size=(300, 5)).astype(float) / 4  # heavy ties
    labels = (rng.random((300, 5)) < 0.4).astype(float)
    perm = rng.permutation(300)
    np.testing.assert_allclose(average_precision(tied, labels), average_precision(tied[perm], labels[perm]))


def test_interpolated_ap_takes_the_precision_envelope():
    scores = np.array([[0.9], [0.8], [0.7]])
    targets = np.array([[0], [1], [1]])
    # precisions after each rank: 0, 1/2, 2/3; envelope from the right: 2/3 everywhere
    assert average_precision(scores, targets)[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert average_precision(scores, targets, interpolated=True)[0] == pytest.approx(2 / 3)
    result = multilabel_metrics(scores, targets, interpolated=True)
    assert result["mAP"] == pytest.approx(100 * 2 / 3)


def test_full_metric_set_hand_computed():
    # 4 images, 3 classes
    probs = np.array(
        [
            [0.9, 0.2, 0.6],
            [0.7, 0.8, 0.1],
            [0.3, 0.6, 0.7],
            [0.1, 0.4, 0.2],
        ]
    )
    targets = np.array(
        [
            [1, 0, 1],
            [1, 1, 0],
            [0, 0, 1],
            [0, 1, 0],
        ]
    )
    r = multilabel_metrics(probs, targets, top_k=1)
    # predicted at p >= 0.5: class0 {0,1} tp 2; class1 {1,2} tp 1; class2 {0,2} tp 2
    cp = (2 / 2 + 1 / 2 + 2 / 2) / 3
    cr = (2 / 2 + 1 / 2 + 2 / 2) / 3
    op, orec = 5 / 6, 5 / 6
    assert r["CP"] == pytest.approx(100 * cp)
    assert r["CR"] == pytest.approx(100 * cr)
    assert r["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    assert r["OP"] == pytest.approx(100 * op)
    assert r["OR"] == pytest.approx(100 * orec)
    assert r["OF1"] == pytest.approx(100 * 2 * op * orec / (op + orec))
    # AP: class0 ranks (0.9 pos, 0.7 pos) -> 1; class1 order 0.8(pos) 0.6(neg) 0.4(pos) 0.2 -> (1 + 2/3)/2
    # class2 order 0.7(pos) 0.6(pos) -> 1
    assert r["AP"] == pytest.approx({"0": 100.0, "1": 100 * (1 + 2 / 3) / 2, "2": 100.0})
    assert r["mAP"] == pytest.approx(100 * (1 + (1 + 2 / 3) / 2 + 1) / 3)
    # top-1 per image: img0 class0 (tp), img1 class1 (tp), img2 class2 (tp), img3 class1 (0.4 < 0.5: none)
    assert r["CP_top1"] == pytest.approx(100.0)
    assert r["CR_top1"] == pytest.approx(100 * (1 / 2 + 1 / 2 + 1 / 2) / 3)
    assert r["OP_top1"] == pytest.approx(100.0)
    assert r["OR_top1"] == pytest.approx(100 * 3 / 6)


def test_default_top3_keys_and_percentages():
    rng = np.random.default_rng(2)
    r = multilabel_metrics(rng.random((50, 6)), (rng.random((50, 6)) < 0.3).astype(int))
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "CP_top3", "CR_top3", "CF1_top3", "OP_top3", "OR_top3", "OF1_top3"):
        assert 0.0 <= r[key] <= 100.0, key
    assert len(r["AP"]) == 6


def test_class_without_positive_targets_is_left_out_and_named():
    probs = np.array([[0.9, 0.8], [0.2, 0.7], [0.6, 0.1]])
    targets = np.array([[1, 0], [0, 0], [1, 0]])  # class "b" has no positive
    r = multilabel_metrics(probs, targets, class_names=["a", "b"])
    assert r["classes_without_positives"] == ["b"]
    assert list(r["AP"]) == ["a"]
    assert r["mAP"] == pytest.approx(100.0)
    assert r["CP"] == pytest.approx(100.0)  # class "b" is not in the per-class means
    # ... but its two false positives count in the overall precision
    assert r["OP"] == pytest.approx(100 * 2 / 4)
    values = [v for k, v in r.items() if isinstance(v, float)]
    assert all(np.isfinite(values))


def test_no_class_with_positives_is_an_error():
    with pytest.raises(ValueError, match="no class has a positive"):
        multilabel_metrics(np.array([[0.1, 0.2]]), np.array([[0, 0]]))


def test_class_without_predictions_counts_zero_precision_and_is_named():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3]])
    targets = np.array([[1, 1], [1, 0], [0, 1]])
    r = multilabel_metrics(probs, targets, class_names=["a", "b"])
    assert r["classes_without_predictions"] == ["b"]
    assert r["CP"] == pytest.approx(100 * (1.0 + 0.0) / 2)
    assert r["CR"] == pytest.approx(100 * (1.0 + 0.0) / 2)


def test_ignored_targets_are_neither_ranked_nor_counted():
    probs = np.array([[0.9], [0.8], [0.7]])
    with_ignored = np.array([[-1], [1], [0]])
    without = multilabel_metrics(probs[1:], with_ignored[1:])
    r = multilabel_metrics(probs, with_ignored)
    assert r["mAP"] == pytest.approx(without["mAP"]) == pytest.approx(100.0)
    assert r["OP"] == pytest.approx(without["OP"])  # the ignored 0.9 prediction is not a false positive


def test_logits_and_probabilities_and_torch_inputs_agree():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(40, 5))
    targets = (rng.random((40, 5)) < 0.4).astype(int)
    a = multilabel_metrics(logits, targets, from_logits=True)
    b = multilabel_metrics(1 / (1 + np.exp(-logits)), targets)
    c = multilabel_metrics(torch.tensor(logits, dtype=torch.float32), torch.tensor(targets), from_logits=True)
    for key in ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3"):
        assert a[key] == pytest.approx(b[key]) and a[key] == pytest.approx(c[key], abs=1e-4)


def test_logits_passed_as_probabilities_are_refused():
    with pytest.raises(ValueError, match="from_logits=True"):
        multilabel_metrics(np.array([[2.0, -1.0]]), np.array([[1, 0]]))


def test_bad_shapes_and_nan_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        multilabel_metrics(np.array([[np.nan, 0.5]]), np.array([[1, 0]]))


def test_format_metrics_mentions_every_number():
    rng = np.random.default_rng(4)
    r = multilabel_metrics(rng.random((20, 3)), (rng.random((20, 3)) < 0.5).astype(int), class_names=["x", "y", "z"])
    text = format_metrics(r)
    assert "mAP" in text and "CF1_top3" in text and "x " in text


# ------------------------------------------------------------------------- bootstrap
def _scored(seed: int = 0, n: int = 200, c: int = 4):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(int)
    scores = targets * 1.0 + rng.normal(scale=0.8, size=(n, c))
    return scores, targets


def test_bootstrap_interval_is_seeded_and_holds_the_estimate():
    from lcie_fast.metrics import bootstrap_interval

    scores, targets = _scored()
    estimate = multilabel_metrics(scores, targets, from_logits=True)["mAP"]
    low, high = bootstrap_interval(scores, targets, draws=300, seed=1)
    print(f"mAP {estimate:.2f}, 95% interval {low:.2f}-{high:.2f}")
    assert low < estimate < high and high - low > 1.0
    assert bootstrap_interval(scores, targets, draws=300, seed=1) == (low, high)
    assert bootstrap_interval(scores, targets, draws=300, seed=2) != (low, high)


def test_paired_interval_is_zero_for_identical_scores_and_narrower_than_two_intervals():
    from lcie_fast.metrics import bootstrap_interval

    scores, targets = _scored(3)
    assert bootstrap_interval(scores, targets, reference=scores, draws=100) == (0.0, 0.0)
    noisy = scores + np.random.default_rng(4).normal(scale=0.05, size=scores.shape)
    paired = bootstrap_interval(noisy, targets, reference=scores, draws=300)
    alone = bootstrap_interval(noisy, targets, draws=300)
    print(f"paired dmAP interval {paired}, unpaired mAP interval {alone}")
    assert paired[0] <= 0.0 <= paired[1]
    assert paired[1] - paired[0] < (alone[1] - alone[0]) / 4
    # a real shift of every score towards the truth moves the whole interval
    better = bootstrap_interval(scores + targets * 1.5, targets, reference=scores, draws=300)
    assert better[0] > 0


def test_support_counts_positives_per_class():
    scores, targets = _scored(5)
    result = multilabel_metrics(scores, targets, from_logits=True, class_names=list("abcd"))
    assert result["support"] == {name: int(targets[:, i].sum()) for i, name in enumerate("abcd")}
    assert f"(n={result['support']['a']})" in format_metrics(result)


def test_compare_predictions_aligns_images_and_finds_a_real_improvement():
    from lcie_fast.train.evaluate import Prediction, compare_predictions

    rng = np.random.default_rng(5)
    targets = (rng.random((300, 4)) < 0.3).astype(np.float32)
    good = targets * 2.0 + rng.normal(size=targets.shape)  # separates positives well
    weak = targets * 0.3 + rng.normal(size=targets.shape)
    # the reference lost images 0-9 (unreadable) and lists the rest in another order
    kept = rng.permutation(np.arange(10, 300))
    prediction = Prediction(logits=good.astype(np.float32), indices=np.arange(300), failed=[], seconds=1.0)
    reference = Prediction(logits=weak[kept].astype(np.float32), indices=kept, failed=[], seconds=1.0)
    result = compare_predictions(prediction, reference, targets, draws=200)
    common = np.arange(10, 300)
    expected = (multilabel_metrics(good[common], targets[common], from_logits=True)["mAP"]
                - multilabel_metrics(weak[common], targets[common], from_logits=True)["mAP"])
    print(result)
    assert result["images"] == 290 and result["dmAP"] == pytest.approx(expected, abs=1e-9)
    low, high = result["dmAP_ci95"]
    assert 0 < low < result["dmAP"] < high


def test_sigmoid_is_stable_at_every_float32_logit():
    import warnings

    from lcie_fast.metrics import sigmoid

    x = np.array([-1e4, -200.0, -89.5, -20.0, -1.0, 0.0, 1.0, 20.0, 200.0, 1e4], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1 / (1 + exp(-x)) warns of an overflow below -88.7
        p = sigmoid(x)
    assert p.dtype == np.float32 and np.all((p >= 0) & (p <= 1))
    mid = np.abs(x) < 50
    np.testing.assert_allclose(p[mid], 1 / (1 + np.exp(-x[mid].astype(np.float64))), rtol=1e-6)
    assert p[0] == 0.0 and p[-1] == 1.0 and 0 < p[2] < 1e-38
    np.testing.assert_allclose(sigmoid(np.float64(-3.0)), 1 / (1 + np.exp(3.0)), rtol=1e-15)
