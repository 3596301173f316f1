""""None of these": how far a picture's features lie from every class the model learned.

A classifier's probabilities always add up to 1 over its classes, so a picture of something else
still gets a confident-looking answer. The distance in feature space says more: the Mahalanobis
distance to the nearest class mean, with one covariance shared by the classes (Lee et al., NeurIPS
2018, on frozen features), fitted on the standardised training features. A picture farther than
:data:`NOVELTY_QUANTILE` of the validation images is flagged: about 5% of pictures like the training
ones, by construction, and most pictures of other things (``bench/calibration.py`` measures both).

Every run fits one: the feature extractor on the features its head was fitted on, fine-tuned and
from-scratch runs on their trained model's own features (a sample of at most :data:`NOVELTY_MAX_ROWS`
images a split). The saved model gives the same features again (:func:`picture_features`). Imports
neither Keras nor TensorFlow at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NOVELTY_QUANTILE = 0.95  # validation images closer than the limit: the flag's false-alarm rate is 1 minus this
NOVELTY_FILE = "novelty.npz"  # beside the run's model
NOVELTY_MAX_ROWS = 5000  # images a split a trained model's features are computed for (one more forward pass)
FEATURES_LAYER = "features"  # the pooled-features layer of every feature model (tl_core.backbones)


@dataclass
class Novelty:
    """A fitted "none of these" check. ``distance(rows)`` of feature rows; ``flags(rows)`` beyond ``limit``."""

    mean: np.ndarray
    scale: np.ndarray
    centres: np.ndarray
    precision: np.ndarray
    limit: float
    quantile: float = NOVELTY_QUANTILE
    test_flagged: float | None = None  # the share of the run's own test images it flags (its false alarms)

    def distance(self, rows) -> np.ndarray:
        """Squared Mahalanobis distance of each row to the nearest class mean."""
        x = (np.asarray(rows, np.float64) - self.mean) / self.scale
        # (x - c)' P (x - c) = x'Px - 2 x'Pc + c'Pc for every class at once: matrix products (BLAS),
        # not a three-operand einsum per class (n d^2 multiply-adds each, ~1 s for 80 rows of 1024).
        xp = x @ self.precision
        squared = (np.einsum("ij,ij->i", xp, x)[:, None] - 2.0 * (xp @ self.centres.T)
                   + np.einsum("ij,ij->i", self.centres @ self.precision, self.centres)[None, :])
        return np.maximum(squared.min(axis=1), 0.0)  # never below 0 for rounding

    def flags(self, rows) -> np.ndarray:
        return self.distance(rows) > self.limit

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, scale=self.scale, centres=self.centres.astype(np.float32),
                 precision=self.precision.astype(np.float32), limit=np.float64(self.limit),
                 quantile=np.float64(self.quantile))

    @classmethod
    def load(cls, path: Path) -> Novelty:
        with np.load(path) as stored:
            # Stored as float32 (half the file); computed with in float64, converted once here.
            return cls(stored["mean"], stored["scale"], stored["centres"].astype(np.float64),
                       stored["precision"].astype(np.float64), float(stored["limit"]), float(stored["quantile"]))

    def describe(self) -> dict[str, Any]:
        """For the run's metrics: the limit, its quantile, the feature size and the test images flagged."""
        return {"limit": self.limit, "quantile": self.quantile, "features": int(len(self.mean)),
                "test_flagged": self.test_flagged}


def fit_novelty(train, y_train, val, quantile: float = NOVELTY_QUANTILE) -> Novelty:
    """The check fitted on the training features and labels; its limit from the validation features.

    Raises:
        ValueError: no validation rows, or a class without training rows.
    """
    from sklearn.covariance import LedoitWolf

    train, val, y_train = np.asarray(train, np.float64), np.asarray(val, np.float64), np.asarray(y_train)
    if not len(val):
        raise ValueError("the 'none of these' check needs validation images to set its limit")
    # Near-constant features (dead units) are not divided by their near-zero spread: a floor at 1% of
    # the typical spread keeps a tiny wobble in one of them from dominating the distance.
    spread = train.std(0)
    mean, scale = train.mean(0), np.maximum(spread, 0.01 * float(np.mean(spread)) + 1e-12)
    xs = (train - mean) / scale
    classes = np.unique(y_train)
    centres = np.stack([xs[y_train == k].mean(0) for k in classes])
    covariance = LedoitWolf(store_precision=False).fit(xs - centres[np.searchsorted(classes, y_train)]).covariance_
    check = Novelty(mean, scale, centres, _inverse(covariance), 0.0, quantile)
    check.limit = float(np.quantile(check.distance(val), quantile))
    return check


def _inverse(covariance: np.ndarray) -> np.ndarray:
    """The shrunk covariance's inverse: by Cholesky (positive definite; 0.08 s for 1024 features on 2
    cores, against 0.32 s for scikit-learn's eigendecomposition), the pseudo-inverse if it is singular."""
    from scipy import linalg

    try:
        factor = linalg.cho_factor(covariance)
    except linalg.LinAlgError:  # no shrinkage and a dead feature: singular
        return linalg.pinvh(covariance)
    return linalg.cho_solve(factor, np.eye(len(covariance)))


def features_model(model):
    """The part of a classifier that gives its pooled features from pixels: its ``features`` layer's
    output (a feature extractor's model), or its nested feature model (fine-tuned and from-scratch
    models: pixels -> [augmentation, off at inference] -> feature model -> head)."""
    import keras

    if FEATURES_LAYER in [layer.name for layer in model.layers]:
        return keras.Model(model.input, model.get_layer(FEATURES_LAYER).output)  # one tensor in: no structure warning
    for layer in model.layers:
        if isinstance(layer, keras.Model) and FEATURES_LAYER in [inner.name for inner in layer.layers]:
            return layer
    raise ValueError(f"the model {model.name} has no '{FEATURES_LAYER}' layer")


def picture_features(model, pixels: np.ndarray) -> np.ndarray:
    """The pooled features a saved classifier computes for ``pixels`` (see :func:`features_model`)."""
    return np.asarray(features_model(model)(np.asarray(pixels, np.float32), training=False))


def load_novelty(folder: Path) -> Novelty | None:
    """The run's check, or ``None`` (a run of another strategy, or from before the check existed)."""
    path = Path(folder) / NOVELTY_FILE
    return Novelty.load(path) if path.is_file() else None
