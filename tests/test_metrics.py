"""Test-split metrics against values worked out by hand."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tl_core.metrics import (
    _macro_f1_of,
    accuracy_interval,
    evaluate,
    macro_f1_interval,
    mean_accuracy_interval,
    paired_verdict,
    reliability,
)


def test_metrics_match_a_hand_computed_case():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.3, 0.1, 0.6], [0.95, 0.0, 0.05]]
    )
    m = evaluate(y_true, probabilities, ["a", "b", "c"], [f"f{i}" for i in range(6)])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
    assert [x["file"] for x in m["top_mistakes"]] == ["f5", "f1"]  # most confident first
    assert m["top_mistakes"][0] == {"file": "f5", "true": "c", "predicted": "a", "probability": 0.95}


@pytest.mark.parametrize(
    "correct, n, low, high",
    [  # Wilson score intervals, 95%, as published (Newcombe 1998, table I; Agresti & Coull 1998)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (8, 10, 0.4902, 0.9433),
        (36, 46, 0.6443, 0.8774),
    ],
)
def test_accuracy_interval_is_wilsons(correct, n, low, high):
    got = accuracy_interval(correct, n)
    assert got == pytest.approx((low, high), abs=1e-4)
    assert accuracy_interval(0, 0) == (0.0, 1.0)


def test_macro_f1_interval_holds_the_point_estimate_and_narrows_with_more_images():
    small = np.array([[8, 2, 0], [1, 6, 3], [0, 2, 8]])
    f1 = float(_macro_f1_of(small))
    sklearn_f1 = f1_score(*_pairs(small), labels=[0, 1, 2], average="macro", zero_division=0)
    assert f1 == pytest.approx(sklearn_f1)
    low, high = macro_f1_interval(small)
    assert low < f1 < high and high - low > 0.2  # 30 images: a wide interval
    wide = macro_f1_interval(small * 20)  # the same rates on 600 images
    assert wide[0] < f1 < wide[1] and (wide[1] - wide[0]) < (high - low) / 3  # ~ 1/sqrt(20) as wide
    assert macro_f1_interval(small) == (low, high)  # seeded: the same figures every time


def test_macro_f1_interval_is_never_zero_wide_and_holds_a_perfect_score():
    """A percentile bootstrap gave "0.333-0.333" on 2 test images and "1.000-1.000" for any perfect
    score: it resamples only what was seen."""
    low, high = macro_f1_interval([[1, 0], [1, 0]])  # 2 test images, one right
    assert low < float(_macro_f1_of(np.array([[1, 0], [1, 0]]))) < high and high - low > 0.5
    perfect = np.eye(8, dtype=int) * 9  # 72 test images, all right
    low, high = macro_f1_interval(perfect)
    assert high == 1.0 and 0.8 < low < 0.98
    low_more, _ = macro_f1_interval(perfect * 10)  # 720 images: surer
    assert low < low_more < 1.0


def test_a_one_class_model_and_a_model_no_better_than_the_baseline_are_flagged():
    names = ["cat", "dog", "*bold* [x](http://e.x)"]
    one_class = {"confusion_matrix": [[0, 14, 0], [0, 10, 0], [0, 6, 0]], "class_names": names}
    facts = reliability(one_class)
    assert facts["majority_class"] == "cat" and facts["majority_baseline"] == pytest.approx(14 / 30)
    assert facts["n_test"] == 30
    assert any("predicts 'dog' for every test image" in f for f in facts["flags"])
    assert any("Not clearly better than always guessing 'cat' (46.7%" in f for f in facts["flags"])

    good = {"confusion_matrix": [[13, 1, 0], [1, 9, 0], [0, 0, 6]], "class_names": names}
    facts = reliability(good)
    assert facts["flags"] == []
    assert facts["test_accuracy_ci"][0] > facts["majority_baseline"]
    # 60% on 30 images is not clearly above a 46.7% baseline: the interval reaches down to it.
    middling = {"confusion_matrix": [[10, 4, 0], [4, 6, 0], [2, 2, 2]], "class_names": names}
    assert [f for f in reliability(middling)["flags"] if f.startswith("Not clearly better")]


def test_a_runs_interval_is_recomputed_from_its_stored_confusion_matrix():
    y_true = np.array([0] * 20 + [1] * 20)
    probabilities = np.eye(2)[np.r_[[0] * 18 + [1] * 2, [1] * 15 + [0] * 5]]
    m = evaluate(y_true, probabilities, ["a", "b"])
    m["class_names"] = ["a", "b"]
    facts = reliability(m)
    assert facts["test_accuracy_ci"] == pytest.approx(list(accuracy_interval(33, 40)))
    assert facts["macro_f1_ci"][0] < m["macro_f1"] < facts["macro_f1_ci"][1]


def _pairs(confusion):
    cm = np.asarray(confusion)
    true = [t for t in range(len(cm)) for p in range(len(cm)) for _ in range(cm[t, p])]
    pred = [p for t in range(len(cm)) for p in range(len(cm)) for _ in range(cm[t, p])]
    return true, pred


def test_a_paired_comparison_says_tied_for_identical_predictions_and_better_for_a_clearly_better_model():
    rng = np.random.default_rng(7)
    a = [(rng.random(46) < 0.8).astype(int) for _ in range(5)]
    same = paired_verdict(a, [x.copy() for x in a])
    assert same["verdict"] == "tied" and same["difference"] == 0 and same["ci"] == [0.0, 0.0]
    worse = [(rng.random(46) < 0.35).astype(int) for _ in range(5)]
    assert paired_verdict(a, worse)["verdict"] == "better"
    assert paired_verdict(worse, a)["verdict"] == "worse"
    # One image in 46 flipped on one split: far inside the noise.
    nudged = [x.copy() for x in a]
    nudged[0][0] = 1 - nudged[0][0]
    assert paired_verdict(a, nudged)["verdict"] == "tied"
    with pytest.raises(ValueError, match="same test images"):
        paired_verdict(a, [x[:-1] for x in a])


def test_the_mean_over_splits_has_an_interval_that_narrows_with_more_splits():
    rng = np.random.default_rng(3)
    splits = [(rng.random(46) < 0.75).astype(int) for _ in range(10)]
    mean1, low1, high1 = mean_accuracy_interval(splits[:1])
    mean10, low10, high10 = mean_accuracy_interval(splits)
    assert low1 <= mean1 <= high1 and low10 <= mean10 <= high10
    assert (high10 - low10) < (high1 - low1) / 2
