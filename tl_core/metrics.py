"""Evaluation on the held-out test split: the numbers a user compares runs by, with their uncertainty.

Test splits of small datasets are small (46-83 images: one image is 1-2 points), so every accuracy
goes with the count of test images, a 95% interval (Wilson for accuracy, a bootstrap over test
images for macro F1) and the accuracy of always guessing the largest class; a model that is not
clearly better than that, or that predicts one class for everything, is flagged in words.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

CONFIDENCE = 0.95
CI_LABEL = f"{CONFIDENCE:.0%} CI"  # how an interval is headed on every page and report
N_BOOTSTRAP = 2000


def evaluate(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    names: list[str] | None = None,
    n_mistakes: int = 12,
) -> dict[str, Any]:
    """Accuracy, macro F1, per-class scores, the confusion matrix and the most confident mistakes.

    Args:
        y_true: class index per test image.
        probabilities: ``(n, k)`` predicted probabilities.
        class_names: the label of each class index.
        names: display name per test image (for the list of mistakes).
        n_mistakes: how many of the most confident wrong predictions to keep.
    """
    y_true = np.asarray(y_true)
    y_pred = probabilities.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    confidence = probabilities[np.arange(len(y_pred)), y_pred]
    wrong = np.flatnonzero(y_pred != y_true)
    wrong = wrong[np.argsort(-confidence[wrong])][:n_mistakes]
    names = names or [str(i) for i in range(len(y_true))]
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n_test": int(len(y_true)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "top_mistakes": [
            {
                "file": names[i],
                "true": class_names[y_true[i]],
                "predicted": class_names[y_pred[i]],
                "probability": float(confidence[i]),
            }
            for i in wrong
        ],
    }


def accuracy_interval(n_correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of an accuracy of ``n_correct`` out of ``n`` (``(0, 1)`` when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    interval = binomtest(int(n_correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def _macro_f1_of(confusions: np.ndarray) -> np.ndarray:
    """Macro F1 of each ``(..., k, k)`` confusion matrix, as scikit-learn's ``zero_division=0`` gives it."""
    tp = np.diagonal(confusions, axis1=-2, axis2=-1)
    both = confusions.sum(axis=-1) + confusions.sum(axis=-2)  # support + predicted, per class
    f1 = np.divide(2 * tp, both, out=np.zeros(both.shape, dtype=float), where=both > 0)
    return f1.mean(axis=-1)


def macro_f1_interval(confusion, confidence: float = CONFIDENCE, n_resamples: int = N_BOOTSTRAP,
                      seed: int = 0) -> tuple[float, float]:
    """A Bayesian interval of macro F1 from the confusion matrix (Goutte & Gaussier 2005 treat
    precision, recall and F1 the same way).

    The split is stratified, so each class keeps its number of test images; what is unknown is how
    the model spreads each class over the predicted classes. Each row's rates get a Dirichlet
    posterior (the row's counts plus Perks' prior, 1/K a cell: one image's worth in all), and macro
    F1 is computed on the expected counts of ``n_resamples`` draws; the interval is the central
    ``confidence`` of those values, widened to hold the observed macro F1 when it is at an end (a
    perfect score's interval reaches 1, as Wilson's does for accuracy).

    Unlike a percentile bootstrap, which resamples only what was seen, it never has zero width: the
    bootstrap gave "0.333-0.333" on 2 test images and "1.000-1.000" for every perfect score. With
    more images the two agree (600 images: the same interval to 0.001). A stored run's interval is
    computed again from its confusion matrix alone.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    if int(cm.sum()) == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    prior = 1.0 / cm.shape[1]
    draws = np.zeros((n_resamples, *cm.shape), dtype=float)
    for i, row in enumerate(cm):
        if row.sum():
            draws[:, i, :] = row.sum() * rng.dirichlet(row + prior, size=n_resamples)
    low, high = np.quantile(_macro_f1_of(draws), [(1 - confidence) / 2, (1 + confidence) / 2])
    observed = float(_macro_f1_of(cm))
    return float(min(low, observed)), float(max(high, observed))


def majority_baseline(confusion) -> tuple[int, float]:
    """The largest class of the test split and the accuracy of always guessing it."""
    support = np.asarray(confusion).sum(axis=1)
    n = int(support.sum())
    largest = int(np.argmax(support)) if n else 0
    return largest, (float(support[largest]) / n if n else 0.0)


def reliability(metrics: dict[str, Any], confidence: float = CONFIDENCE, *, macro_f1: bool = True) -> dict[str, Any]:
    """How far a run's test figures can be trusted, from its confusion matrix and class names.

    ``macro_f1=False`` leaves out the bootstrap (``macro_f1_ci`` is then ``None``): for lists of
    many runs that show only the accuracy.

    Returns:
        ``n_test``, ``test_accuracy_ci`` and ``macro_f1_ci`` (``[low, high]``), ``majority_class``
        and ``majority_baseline`` (the accuracy of always guessing it), and ``flags``: sentences
        for a model that predicts one class for everything or is not clearly better than the
        baseline (its interval's lower end at or below it). Class names in them are user text:
        escape them for the format they are shown in.
    """
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    names = list(metrics.get("class_names") or [str(i) for i in range(len(cm))])
    n = int(cm.sum())
    correct = int(np.trace(cm))
    low, high = accuracy_interval(correct, n, confidence)
    largest, baseline = majority_baseline(cm)
    flags = []
    predicted = np.flatnonzero(cm.sum(axis=0))
    if len(names) > 1 and len(predicted) == 1:
        flags.append(f"It predicts '{names[predicted[0]]}' for every test image: it has not learned to tell the "
                     "classes apart.")
    if n and low <= baseline:
        flags.append(f"Not clearly better than always guessing '{names[largest]}' ({baseline:.1%} of the "
                     f"{n} test images): the {confidence:.0%} interval of its accuracy, {low:.1%}-{high:.1%}, "
                     f"reaches down to that.")
    return {
        "n_test": n,
        "test_accuracy_ci": [low, high],
        "macro_f1_ci": list(macro_f1_interval(cm, confidence)) if macro_f1 else None,
        "majority_class": names[largest] if names else None,
        "majority_baseline": baseline,
        "flags": flags,
        "confidence": confidence,
    }


def interval_text(metrics: dict[str, Any]) -> str:
    """``95% CI 64.4-87.7% · 46 test images · largest class alone: 30.4%`` (no user text in it)."""
    facts = reliability(metrics, macro_f1=False)
    low, high = facts["test_accuracy_ci"]
    return (f"{facts['confidence']:.0%} CI {low:.1%}-{high:.1%} · {facts['n_test']} test images · "
            f"largest class alone: {facts['majority_baseline']:.1%}")


def accuracy_text(metrics: dict[str, Any]) -> str:
    """``78.3% (95% CI 64.4-87.7% · 46 test images · largest class alone: 30.4%)``; the accuracy alone
    for a run stored without its confusion matrix (nothing to compute the interval from)."""
    if not metrics.get("confusion_matrix"):
        return f"{metrics['test_accuracy']:.1%}"
    return f"{metrics['test_accuracy']:.1%} ({interval_text(metrics)})"


# --------------------------------------------------------------------------- comparisons over splits


def _bootstrap_accuracies(correct: list[np.ndarray], n_resamples: int, rng: np.random.Generator,
                          draws: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mean accuracy over the splits for each resample of each split's test images (the same image
    draws are reused for a second strategy: that is what makes a comparison paired)."""
    if draws is None:
        draws = [rng.integers(0, len(c), (n_resamples, len(c))) for c in correct]
    per_split = np.stack([np.asarray(c, dtype=float)[d].mean(axis=1) for c, d in zip(correct, draws)], axis=1)
    return per_split.mean(axis=1), draws


def mean_accuracy_interval(correct: list[np.ndarray], confidence: float = CONFIDENCE,
                           n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """Mean test accuracy over repeated splits and its bootstrap interval (test images resampled
    within each split). ``correct``: one 0/1 array per split, 1 where the prediction was right."""
    mean = float(np.mean([np.mean(c) for c in correct]))
    samples, _ = _bootstrap_accuracies(correct, n_resamples, np.random.default_rng(seed))
    low, high = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
    return mean, float(low), float(high)


def paired_verdict(correct_a: list[np.ndarray], correct_b: list[np.ndarray], confidence: float = CONFIDENCE,
                   n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Is A's accuracy different from B's on the same test images of the same splits?

    A paired bootstrap: each resample draws the same test images for both (within each split) and
    takes the difference of their mean accuracies. ``better`` when the whole interval of the
    difference is above 0, ``worse`` when it is below, else ``tied`` (no measurable difference).
    Two identical sets of predictions are always tied.

    Returns:
        ``difference`` (A minus B, accuracy points as a fraction), ``ci`` ``[low, high]``,
        ``verdict`` (``better``, ``worse`` or ``tied``, said of A) and ``n_splits``.
    """
    if len(correct_a) != len(correct_b) or not correct_a:
        raise ValueError("a paired comparison needs both strategies on the same, non-empty list of splits")
    if any(len(a) != len(b) for a, b in zip(correct_a, correct_b)):
        raise ValueError("a paired comparison needs the same test images for both strategies on each split")
    rng = np.random.default_rng(seed)
    a, draws = _bootstrap_accuracies(correct_a, n_resamples, rng)
    b, _ = _bootstrap_accuracies(correct_b, n_resamples, rng, draws)
    low, high = np.quantile(a - b, [(1 - confidence) / 2, (1 + confidence) / 2])
    difference = float(np.mean([np.mean(x) - np.mean(y) for x, y in zip(correct_a, correct_b)]))
    verdict = "better" if low > 0 else "worse" if high < 0 else "tied"
    return {"difference": difference, "ci": [float(low), float(high)], "verdict": verdict,
            "n_splits": len(correct_a)}
