"""Confidence that means something: temperature scaling, its reliability measured, and sets of plausible
classes with a coverage guarantee (split conformal prediction).

A network's softmax is usually over-confident. Temperature scaling (Guo et al., ICML 2017) divides the
log-probabilities by one number ``T`` fitted on the validation split (it minimises the negative
log-likelihood there); the predicted class never changes, only how sure it says it is. The expected
calibration error (ECE) measures the gap between confidence and accuracy, before and after.

Split conformal prediction (Vovk et al. 2005; the "LAC" score of Sadinle et al. 2019) turns the
calibrated probabilities into a set of classes per image: every class whose probability is at least
``1 - q``, with ``q`` the finite-sample quantile of ``1 - p(true class)`` on the validation split. On
images like those, the set holds the true class at least ``coverage`` of the time; an image unlike any
class tends to get a large set, or an empty one, which the app shows as "not sure".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tl_core.errors import ConfigError

COVERAGE = 0.9  # the share of images whose set holds the true class (on data like the validation split)
NOT_SURE_BELOW = 0.5  # a calibrated top probability below this is shown as "not sure": more likely wrong than right
ECE_BINS = 15
# A validation split every image of which is right pushes the fitted temperature towards 0 (certainty);
# a few dozen images cannot justify more than doubling the confidence, so T stays within these.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.5, 20.0
EPS = 1e-12


def _checked(probabilities, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(probabilities, np.float64), np.asarray(labels)
    if p.ndim != 2 or len(p) != len(y) or len(y) == 0:
        raise ConfigError(f"Calibration needs one row of probabilities per label; got {p.shape} and {len(y)} labels.")
    return p, y.astype(np.int64)


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: the same ranking of classes, confidence scaled (``T > 1`` softens it)."""
    logits = np.log(np.clip(np.asarray(probabilities, np.float64), EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(probabilities, labels) -> float:
    """The temperature minimising the negative log-likelihood of ``labels``, within its bounds."""
    from scipy.optimize import minimize_scalar

    p, y = _checked(probabilities, labels)

    def nll(log_t: float) -> float:
        q = apply_temperature(p, math.exp(log_t))
        return float(-np.log(np.clip(q[np.arange(len(y)), y], EPS, 1.0)).mean())

    return float(math.exp(minimize_scalar(nll, bounds=(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)), method="bounded").x))


def reliability_table(probabilities, labels, n_bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per confidence bin (equal width over 0-1; empty bins left out): ``confidence`` (mean top
    probability), ``accuracy`` and ``count``: the points of a reliability diagram."""
    p, y = _checked(probabilities, labels)
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == y)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    return [{"confidence": float(confidence[bins == b].mean()), "accuracy": float(correct[bins == b].mean()),
             "count": int((bins == b).sum())} for b in range(n_bins) if (bins == b).any()]


def expected_calibration_error(probabilities, labels, n_bins: int = ECE_BINS) -> float:
    """The mean gap between confidence and accuracy over confidence bins, weighted by their images."""
    table = reliability_table(probabilities, labels, n_bins)
    n = sum(row["count"] for row in table)
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table) / n)


def conformal_threshold(probabilities, labels, coverage: float = COVERAGE) -> float:
    """The least probability a class needs to enter a prediction set (split conformal, LAC score).

    Raises:
        ConfigError: ``coverage`` outside (0, 1), or mismatched inputs.
    """
    if not 0 < coverage < 1:
        raise ConfigError(f"coverage is {coverage}; it must be between 0 and 1 (e.g. 0.9).")
    p, y = _checked(probabilities, labels)
    scores = np.sort(1.0 - p[np.arange(len(y)), y])
    n = len(scores)
    rank = math.ceil((n + 1) * coverage)  # the finite-sample quantile: coverage holds for the next image
    if rank > n:
        return 0.0  # too few validation images for this coverage: every class is plausible
    return float(1.0 - scores[rank - 1])


def prediction_sets(probabilities, threshold: float) -> list[list[int]]:
    """Per image, the classes whose probability reaches ``threshold``, most probable first."""
    p = np.asarray(probabilities, np.float64)
    return [[int(k) for k in np.argsort(-row) if row[k] >= threshold - EPS] for row in p]


@dataclass(frozen=True)
class Calibration:
    """A run's calibration: what its metrics store and its pages show."""

    temperature: float
    ece_before: float  # on the test split
    ece_after: float
    threshold: float  # conformal: a class at or above this calibrated probability is in the set
    coverage: float  # the target
    test_coverage: float  # measured on the test split
    mean_set_size: float
    reliability_before: list[dict[str, float]]
    reliability_after: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        return cls(**{k: values[k] for k in cls.__dataclass_fields__})


def calibrate(val_probabilities, val_labels, test_probabilities, test_labels, coverage: float = COVERAGE) -> Calibration:
    """Fit the temperature and the conformal threshold on the validation split; measure on the test split."""
    temperature = fit_temperature(val_probabilities, val_labels)
    val_after = apply_temperature(val_probabilities, temperature)
    test_after = apply_temperature(test_probabilities, temperature)
    threshold = conformal_threshold(val_after, val_labels, coverage)
    sets = prediction_sets(test_after, threshold)
    y = np.asarray(test_labels)
    return Calibration(
        temperature=temperature,
        ece_before=expected_calibration_error(test_probabilities, y),
        ece_after=expected_calibration_error(test_after, y),
        threshold=threshold, coverage=coverage,
        test_coverage=float(np.mean([label in s for label, s in zip(y, sets)])),
        mean_set_size=float(np.mean([len(s) for s in sets])),
        reliability_before=reliability_table(test_probabilities, y, 10),
        reliability_after=reliability_table(test_after, y, 10),
    )


def how_sure(probabilities, class_names: list[str], calibration: dict[str, Any] | None) -> dict[str, Any]:
    """What the Predict page says of one image's calibrated probabilities.

    Returns:
        ``sure`` (the top class reaches :data:`NOT_SURE_BELOW` and is the only plausible one),
        ``plausible`` (the conformal set's class names, most probable first; empty when no class
        reaches the threshold: unlike every class) and ``coverage``. Without a calibration (a run
        from an older version), only the threshold on the top probability applies.
    """
    p = np.asarray(probabilities, np.float64)
    top = int(p.argmax())
    if not calibration:
        return {"sure": bool(p[top] >= NOT_SURE_BELOW), "plausible": [class_names[top]], "coverage": None}
    plausible = [class_names[k] for k in prediction_sets(p[None], calibration["threshold"])[0]]
    return {"sure": bool(p[top] >= NOT_SURE_BELOW and plausible == [class_names[top]]), "plausible": plausible,
            "coverage": calibration["coverage"]}
