"""Linear heads trained on cached features with scikit-learn, and their exact Keras twin.

``softmax`` is multinomial logistic regression; ``ovr`` is one logistic regression per class
(that class against all others); ``svm`` is a linear SVM with sigmoid-calibrated probabilities.
Each head folds into one Dense layer, so the stored ``.keras`` model predicts what the head does.
"""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from tl_core.config import HEADS
from tl_core.data import iter_chunks
from tl_core.errors import ConfigError, NotFittedError

C_GRID = (0.001, 0.01, 0.1, 1.0)
STANDARDISE_ROWS = 4096  # feature rows converted to float64 and standardised at a time


def fitted_scaler(X, scaler: StandardScaler | None = None) -> StandardScaler:
    """A ``StandardScaler`` fitted on the rows of ``X`` (an array, a memory-mapped cache or
    ``data.Rows``) in float64, a chunk of rows at a time: the same numbers as ``fit`` on the whole
    array when it is one chunk; otherwise its mean and variance differ in the last bits."""
    scaler = scaler or StandardScaler()
    for _, rows in iter_chunks(X, STANDARDISE_ROWS):
        scaler.partial_fit(rows.astype(np.float64))
    return scaler


def _standardised(scaler: StandardScaler, X, fit: bool = False) -> np.ndarray:
    """``X`` in float64, standardised by ``scaler`` (first fitted on it when ``fit``), a chunk of rows
    at a time."""
    X = X if hasattr(X, "shape") else np.asarray(X, np.float64)
    if fit:
        fitted_scaler(X, scaler)
    out = np.empty(X.shape, np.float64)
    for start, rows in iter_chunks(X, STANDARDISE_ROWS):
        out[start : start + len(rows)] = scaler.transform(rows.astype(np.float64))
    return out


class LinearHead:
    """A scikit-learn style linear classifier on feature vectors.

    Args:
        kind: ``softmax``, ``ovr`` or ``svm``.
        C: inverse regularisation strength; ``None`` picks it from :data:`C_GRID` by accuracy on
            the validation features given to :meth:`fit`.
        seed: random state of the solvers.
    """

    def __init__(self, kind: str = "softmax", C: float | None = None, seed: int = 0) -> None:
        self.kind = kind
        self.C = C
        self.seed = seed

    def _classifier(self, C: float, y: np.ndarray):
        if self.kind == "softmax":
            model = LogisticRegression(C=C, max_iter=3000, random_state=self.seed)
        elif self.kind == "ovr":
            model = OneVsRestClassifier(LogisticRegression(C=C, max_iter=3000, random_state=self.seed))
        elif self.kind == "svm":
            folds = int(min(3, np.bincount(y).min()))
            if folds < 2:
                raise ConfigError("The svm head needs at least 2 training images per class; use softmax.")
            model = CalibratedClassifierCV(
                LinearSVC(C=C, random_state=self.seed), method="sigmoid", cv=folds, ensemble=False
            )
        else:
            raise ConfigError(f"Unknown head '{self.kind}'. Choose one of: {', '.join(HEADS)}.")
        return model

    def fit(self, X, y, X_val=None, y_val=None) -> LinearHead:
        """Fit on ``X, y``; with validation data and ``C=None``, pick C on it first.

        ``X`` and ``X_val`` may be arrays, memory-mapped caches or ``data.Rows``. The solvers need
        the features in memory, in float64 (``n x feature_dim``: small beside the pixels); they are
        standardised once for every C tried, a chunk of rows at a time, so memory holds that one
        float64 copy and no temporaries of its size.
        """
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ConfigError("A head needs at least 2 classes in its training data.")
        # Labels are re-indexed 0..k-1 so predict_proba columns match class indices.
        encoded = np.searchsorted(self.classes_, y)
        scaler = StandardScaler()
        X = _standardised(scaler, X, fit=True)
        scores = {}
        if self.C is None and X_val is not None and len(X_val):
            val_encoded = np.searchsorted(self.classes_, np.asarray(y_val))
            X_val = _standardised(scaler, X_val)
            for C in C_GRID:
                candidate = self._classifier(C, encoded).fit(X, encoded)
                scores[C] = float((candidate.predict(X_val) == val_encoded).mean())
            self.C_ = max(C_GRID, key=lambda c: (scores[c], -abs(np.log10(c) + 1)))
        else:
            self.C_ = self.C if self.C is not None else 0.1
        self.validation_scores_ = scores
        self.estimator_ = Pipeline([("scale", scaler), ("clf", self._classifier(self.C_, encoded).fit(X, encoded))])
        return self

    def _check_fitted(self):
        if not hasattr(self, "estimator_"):
            raise NotFittedError("This head is not fitted yet; call fit(X, y) first.")

    def predict_proba(self, X) -> np.ndarray:
        self._check_fitted()
        return self.estimator_.predict_proba(np.asarray(X, np.float64))

    def predict(self, X) -> np.ndarray:
        self._check_fitted()
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def to_dense(self) -> tuple[np.ndarray, np.ndarray, str]:
        """The head as one linear layer on raw features.

        Returns:
            ``(W, b, mode)`` with ``W`` of shape ``(d, k)``. ``mode == 'softmax'``: probabilities
            are ``softmax(xW + b)``. ``mode == 'ovr'``: they are ``sigmoid(xW + b)`` normalised to
            sum to 1, which is ``softmax(log_sigmoid(xW + b))``.
        """
        self._check_fitted()
        scaler, clf = self.estimator_.named_steps["scale"], self.estimator_.named_steps["clf"]
        if self.kind == "softmax":
            W, b = clf.coef_.T, clf.intercept_
            mode = "softmax" if W.shape[1] > 1 else "ovr"
        elif self.kind == "ovr":
            W = np.concatenate([est.coef_.T for est in clf.estimators_], axis=1)
            b = np.concatenate([est.intercept_ for est in clf.estimators_])
            mode = "ovr"
        else:
            calibrated = clf.calibrated_classifiers_[0]
            svc = calibrated.estimator
            a = np.array([cal.a_ for cal in calibrated.calibrators])
            c = np.array([cal.b_ for cal in calibrated.calibrators])
            # The calibrated probability of class k is sigmoid(-(a_k * f_k + c_k)).
            W = -svc.coef_.T * a
            b = -(svc.intercept_ * a + c)
            mode = "ovr"
        if W.shape[1] == 1:
            # Binary: one score f for the positive class; [-f, f] gives [1 - p, p] under 'ovr'.
            W, b = np.concatenate([-W, W], axis=1), np.concatenate([-b, b])
            mode = "ovr"
        # Fold the StandardScaler in: w.((x - mu) / s) + b == (w / s).x + (b - w.(mu / s)).
        W_raw = W / scaler.scale_[:, None]
        b_raw = b - (scaler.mean_ / scaler.scale_) @ W
        return W_raw.astype(np.float32), b_raw.astype(np.float32), mode
