"""Confidence that means something: temperature scaling, its reliability measured, and sets of plausible
classes with a coverage guarantee (split conformal prediction).

A network's softmax is usually over-confident. Temperature scaling (Guo et al., ICML 2017) divides the
log-probabilities (or logits) by one number ``T`` fitted on the validation split (it minimises the
negative log-likelihood there); the predicted class never changes, only how sure it says it is. The
expected calibration error (ECE) measures the gap between confidence and accuracy, before and after.

Split conformal prediction (Vovk et al. 2005; the "LAC" score of Sadinle et al. 2019) turns the
calibrated probabilities into a set of classes per image: every class whose probability is at least
``1 - q``, with ``q`` the finite-sample quantile of ``1 - p(true class)`` on the validation split. On
images like those, the set holds the true class at least ``coverage`` of the time; an image unlike any
class tends to get a large set, or an empty one, which the app shows as "not sure".

numpy and scipy only: no TensorFlow, no Plotly (the diagram is :func:`tl_core.charts.reliability_diagram`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tl_core.errors import ConfigError

COVERAGE = 0.9  # the share of images whose set holds the true class (on data like the validation split)
NOT_SURE_BELOW = 0.5  # a calibrated top probability below this is shown as "not sure": more likely wrong than right
ECE_BINS = 15  # the standard number of equal-width bins of the ECE (Guo et al.)
RELIABILITY_BINS = 10  # a diagram's bins: fewer, so that each holds enough images to read
# A validation split every image of which is right pushes the fitted temperature towards 0 (certainty);
# a few dozen images cannot justify more than doubling the confidence, so T stays within these.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.5, 20.0
EPS = 1e-12
LOG_FLOOR = 1e-300  # log(0) guard: far below any float32 probability, so log p keeps the logits' spread


def looks_like_probabilities(values) -> bool:
    """Whether every row is in [0, 1] and sums to 1 (within float32 softmax rounding): probabilities.
    Anything else is taken for logits (logits that happen to look like that are treated as probabilities)."""
    x = np.asarray(values, np.float64)
    return bool(x.size and x.min() >= 0 and x.max() <= 1 and np.allclose(x.sum(axis=-1), 1.0, atol=1e-3))


def _log_probabilities(values) -> np.ndarray:
    """Log-probabilities up to a per-row constant: ``log p`` of probabilities, logits as they are.
    Either way ``softmax(out / T)`` is the temperature-scaled prediction."""
    x = np.asarray(values, np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ConfigError("Calibration needs a 2-D array, one row per image and one column per class (2 or more); "
                          f"got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise ConfigError("Calibration got probabilities or logits that are NaN or infinite; check the model's outputs.")
    return np.log(np.clip(x, LOG_FLOOR, 1.0)) if looks_like_probabilities(x) else x - x.max(axis=1, keepdims=True)


def _probabilities(values) -> np.ndarray:
    """``values`` as probabilities: as given when they already are, else the softmax of the logits."""
    x = np.asarray(values, np.float64)
    return x if x.ndim == 2 and looks_like_probabilities(x) else apply_temperature(x, 1.0)


def _checked(probabilities, labels) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (logits are turned into them) and integer class indices, one per row, checked."""
    p, y = np.asarray(probabilities, np.float64), np.asarray(labels)
    if p.ndim != 2 or y.ndim != 1 or len(p) != len(y) or len(y) == 0:
        raise ConfigError(f"Calibration needs one row of probabilities per label; got {p.shape} and {len(y)} labels.")
    p = _probabilities(p)
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.number) and np.isfinite(y).all() and (y == np.round(y)).all()):
            raise ConfigError(f"Calibration needs class indices (0, 1, ...) as labels; got values of type {y.dtype}.")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ConfigError(f"A label is outside 0..{p.shape[1] - 1} (the {p.shape[1]} classes of the probabilities); "
                          f"got labels from {y.min()} to {y.max()}.")
    return p, y


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` of probabilities, or ``softmax(z / T)`` of logits ``z`` (the same thing):
    the same ranking of classes, confidence scaled (``T > 1`` softens it, ``T < 1`` sharpens it)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"The temperature is {temperature!r}; it must be a positive number (1 changes nothing).")
    logits = _log_probabilities(probabilities) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(probabilities, labels) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (Guo et al. 2017), searched
    over ``log T`` within [:data:`MIN_TEMPERATURE`, :data:`MAX_TEMPERATURE`]: a grid, then a bounded
    ``minimize_scalar`` around its best point. ``probabilities`` may be logits too (rows that are not
    probability distributions).

    Each image's loss is capped at ``-log(EPS)`` (what :func:`negative_log_likelihood` reports): a
    linear head can be wrong with ``p(true class) = 1e-80``, and that one image's ``184 / T`` would
    otherwise choose the temperature for all the others (measured: T 1.8 where 0.9 was best for the
    rest of a fashion_mnist_2k validation split).
    """
    from scipy.optimize import minimize_scalar

    _, y = _checked(probabilities, labels)
    z = _log_probabilities(probabilities)
    rows, cap = np.arange(len(y)), -math.log(EPS)

    def nll(log_t: float) -> float:
        scaled = z / math.exp(log_t)
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        return float(np.minimum(np.log(np.exp(scaled).sum(axis=1)) - scaled[rows, y], cap).mean())

    # The capped loss need not be unimodal in log T: a grid finds the best basin, Brent refines it.
    grid = np.linspace(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE), 49)
    best = int(np.argmin([nll(g) for g in grid]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6}).x
    return float(math.exp(found if nll(found) <= nll(grid[best]) else grid[best]))


def negative_log_likelihood(probabilities, labels) -> float:
    """The mean of ``-log p(true class)``: what temperature scaling minimises (lower is better)."""
    p, y = _checked(probabilities, labels)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0)).mean())


def _bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ConfigError(f"n_bins is {n_bins!r}; it must be a whole number of confidence bins, 1 or more (e.g. 10).")
    return int(n_bins)


def reliability_table(probabilities, labels, n_bins: int = RELIABILITY_BINS) -> list[dict[str, float]]:
    """Per confidence bin (equal width over 0-1; empty bins left out): ``confidence`` (mean top
    probability), ``accuracy`` and ``count``: the points of a reliability diagram."""
    n_bins = _bins(n_bins)
    p, y = _checked(probabilities, labels)
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == y)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    return [{"confidence": float(confidence[bins == b].mean()), "accuracy": float(correct[bins == b].mean()),
             "count": int((bins == b).sum())} for b in range(n_bins) if (bins == b).any()]


def ece_of_table(table: list[dict[str, float]]) -> float:
    """The ECE of a :func:`reliability_table` (with that table's bins)."""
    n = sum(row["count"] for row in table)
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table) / n) if n else 0.0


def expected_calibration_error(probabilities, labels, n_bins: int = ECE_BINS) -> float:
    """The mean gap between confidence (top probability) and accuracy over equal-width confidence bins,
    weighted by their images: 0 for a model exactly as sure as it is right."""
    return ece_of_table(reliability_table(probabilities, labels, n_bins))


def ece_noise(probabilities, seed: int = 0, draws: int = 200, n_bins: int = ECE_BINS) -> float:
    """The mean ECE a perfectly calibrated model with these top probabilities would show on this many
    images (each image right with probability its confidence, ``draws`` times): the ECE that is
    sampling noise alone. On a small test split a change of ECE below it tells nothing."""
    p = np.asarray(probabilities, dtype=np.float64)
    top = p.argmax(axis=1)
    wrong = (top + 1) % p.shape[1]  # any other class: only right or wrong counts
    right = np.random.default_rng(seed).random((draws, len(p))) < p.max(axis=1)
    return float(np.mean([expected_calibration_error(p, np.where(hit, top, wrong), n_bins) for hit in right]))


def conformal_threshold(probabilities, labels, coverage: float = COVERAGE) -> float:
    """The least probability a class needs to enter a prediction set (split conformal, LAC score).

    The score of a calibration image is ``1 - p(true class)``; ``q`` is the ``ceil((n + 1) * coverage)``-th
    smallest of the ``n`` scores (the finite-sample quantile) and the threshold is ``1 - q``. A new image
    exchangeable with the calibration ones then gets a set holding its class with probability at least
    ``coverage``. With too few images for that (``ceil((n + 1) * coverage) > n``) the threshold is 0:
    every class is plausible.

    Raises:
        ConfigError: ``coverage`` outside (0, 1), or mismatched or malformed inputs.
    """
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float, np.floating)) or not 0 < coverage < 1:
        raise ConfigError(f"coverage is {coverage!r}; it must be between 0 and 1, both excluded (e.g. 0.9).")
    p, y = _checked(probabilities, labels)
    scores = np.sort(1.0 - p[np.arange(len(y)), y])
    n = len(scores)
    rank = math.ceil((n + 1) * float(coverage) - 1e-9)  # the tolerance: a product off by a rounding
    if rank > n:
        return 0.0  # too few calibration images for this coverage: every class is plausible
    return float(min(1.0, max(0.0, 1.0 - scores[rank - 1])))


def prediction_sets(probabilities, threshold: float) -> list[list[int]]:
    """Per image, the classes whose probability reaches ``threshold``, most probable first (logits are
    turned into probabilities first). Empty when no class reaches it: unlike every class."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not 0 <= threshold <= 1:
        raise ConfigError(f"threshold is {threshold!r}; it must be a probability between 0 and 1 "
                          "(from conformal_threshold).")
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2:
        raise ConfigError(f"prediction_sets needs one row of probabilities per image; got shape {p.shape}.")
    p = _probabilities(p)
    return [[int(k) for k in np.argsort(-row, kind="stable") if row[k] >= threshold - EPS] for row in p]


def set_coverage(sets: list[list[int]], labels) -> float:
    """The share of images whose set holds their label."""
    y = np.asarray(labels)
    if len(sets) != len(y) or not len(y):
        raise ConfigError(f"set_coverage needs one set per label; got {len(sets)} sets and {len(y)} labels.")
    return float(np.mean([int(label) in s for label, s in zip(y, sets)]))


@dataclass(frozen=True)
class Calibration:
    """A run's calibration: what its metrics store (:meth:`to_dict`, plain JSON) and its pages show.

    ``threshold`` is the conformal threshold (also readable as ``conformal_threshold``), for
    probabilities after the temperature.
    """

    temperature: float
    ece_before: float  # on the test split
    ece_after: float
    threshold: float  # conformal: a class at or above this calibrated probability is in the set
    coverage: float  # the target
    test_coverage: float | None = None  # measured on the test split
    mean_set_size: float | None = None
    reliability_before: list[dict[str, float]] = field(default_factory=list)
    reliability_after: list[dict[str, float]] = field(default_factory=list)
    ece_noise: float | None = None  # the test split's ECE of sampling noise alone (after the temperature)

    @property
    def conformal_threshold(self) -> float:
        return self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        """From :meth:`to_dict`'s dict (``conformal_threshold`` accepted for ``threshold``; unknown keys
        ignored; the measured ones optional).

        Raises:
            ConfigError: a required value is missing.
        """
        values = dict(values or {})
        if values.get("threshold") is None and values.get("conformal_threshold") is not None:
            values["threshold"] = values["conformal_threshold"]
        required = ("temperature", "ece_before", "ece_after", "threshold", "coverage")
        missing = [k for k in required if values.get(k) is None]
        if missing:
            raise ConfigError(f"A stored calibration lacks {', '.join(missing)}; it needs {', '.join(required)}.")
        return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})

    def apply(self, probabilities) -> np.ndarray:
        """Calibrated probabilities from the uncalibrated model's probabilities (or logits)."""
        return apply_temperature(probabilities, self.temperature)

    def sets(self, calibrated_probabilities) -> list[list[int]]:
        """The plausible classes of each image, from probabilities already calibrated."""
        return prediction_sets(calibrated_probabilities, self.threshold)


def calibrate(val_probabilities, val_labels, test_probabilities, test_labels, coverage: float = COVERAGE,
              temperature: float | None = None) -> Calibration:
    """Fit the temperature (unless given, e.g. from out-of-fold predictions) and the conformal threshold
    on the validation split; measure both on the test split."""
    temperature = fit_temperature(val_probabilities, val_labels) if temperature is None else float(temperature)
    val_after = apply_temperature(val_probabilities, temperature)
    test_after = apply_temperature(test_probabilities, temperature)
    threshold = conformal_threshold(val_after, val_labels, coverage)
    test_before, y = _checked(test_probabilities, test_labels)
    sets = prediction_sets(test_after, threshold)
    return Calibration(
        temperature=temperature,
        ece_before=expected_calibration_error(test_before, y),
        ece_after=expected_calibration_error(test_after, y),
        threshold=threshold, coverage=float(coverage),
        test_coverage=set_coverage(sets, y),
        mean_set_size=float(np.mean([len(s) for s in sets])),
        reliability_before=reliability_table(test_before, y, RELIABILITY_BINS),
        reliability_after=reliability_table(test_after, y, RELIABILITY_BINS),
        ece_noise=ece_noise(test_after),
    )


def ece_noise_text(calibration: dict[str, Any], n_test: int) -> str:
    """Whether a run's change of ECE on its test split says anything, in words (no user text in it)."""
    noise = calibration.get("ece_noise")
    if noise is None:
        return "This run was trained before the ECE of chance was measured."
    change = calibration["ece_after"] - calibration["ece_before"]
    chance = (f"On {n_test} test images a perfectly calibrated model would still show an ECE of about "
              f"{noise:.3f}, by chance alone")
    if abs(change) < noise:
        return (f"{chance}: this change ({change:+.3f}) is within it, so the test split cannot tell whether "
                "calibration helped. The temperature was fitted on the validation split, where it gives the lowest "
                "log loss; the model keeps it.")
    return f"{chance}: this change ({change:+.3f}) is larger than that."


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
