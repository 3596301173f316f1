"""Linear heads trained on cached features with scikit-learn, and their exact Keras twin.

``softmax`` is multinomial logistic regression; ``ovr`` is one logistic regression per class
(that class against all others); ``svm`` is a linear SVM with sigmoid-calibrated probabilities.
Each head folds into one Dense layer, so the stored ``.keras`` model predicts what the head does.
"""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from tl_core.config import HEADS, env_number
from tl_core.data import iter_chunks
from tl_core.errors import ConfigError, NotFittedError

C_GRID = (0.001, 0.01, 0.1, 1.0)
SELECTIONS = ("cv", "validation")
CV_FOLDS = 5
CV_MAX_ROWS = 20_000  # above this many train+val rows, C is chosen on the validation split (time)
IMBALANCE_RATIO = 1.5  # largest / smallest class from which balanced class weights are tried too
STANDARDISE_ROWS = 4096  # feature rows converted to float64 and standardised at a time
# The solvers' matrices are small (hundreds to thousands of rows of 1-2k features): a multi-threaded
# BLAS spends more on waking and syncing its threads than on the work, and on a busy machine far more.
# Fitting with one BLAS thread gave the same heads 25-80x faster (python bench/head_fit.py).
# TL_HEAD_BLAS_THREADS sets another number; 0: the library's own default (the bench's baseline).
HEAD_BLAS_THREADS, HEAD_BLAS_THREADS_ENV = 1, "TL_HEAD_BLAS_THREADS"


def head_blas_threads() -> int | None:
    """BLAS threads for fitting a head: :data:`HEAD_BLAS_THREADS` unless the environment says
    otherwise; ``None`` (no limit) for 0."""
    return int(env_number(HEAD_BLAS_THREADS_ENV, HEAD_BLAS_THREADS)) or None


def fitted_scaler(X, scaler: StandardScaler | None = None) -> StandardScaler:
    """A ``StandardScaler`` fitted on the rows of ``X`` (an array, a memory-mapped cache or
    ``data.Rows``) in float64, a chunk of rows at a time: the same numbers as ``fit`` on the whole
    array when it is one chunk; otherwise its mean and variance differ in the last bits."""
    scaler = scaler or StandardScaler()
    for _, rows in iter_chunks(X, STANDARDISE_ROWS):
        scaler.partial_fit(rows.astype(np.float64))
    return scaler


def _rows64(X) -> np.ndarray:
    """All rows of ``X`` (an array, a memory-mapped cache or ``data.Rows``) in memory, in float64."""
    if isinstance(X, np.ndarray) and not isinstance(X, np.memmap) and X.dtype == np.float64:
        return X  # already there: no second copy
    return np.concatenate([rows.astype(np.float64) for _, rows in iter_chunks(X, STANDARDISE_ROWS)]) if len(X) else \
        np.zeros((0,) + tuple(X.shape[1:]))


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
        C: inverse regularisation strength; ``None`` chooses it from :data:`C_GRID`.
        seed: random state of the solvers and of the folds.
        selection: how C is chosen when not given. ``validation`` (the default): accuracy on the
            validation features, fitted on the training features alone. ``cv``: stratified k-fold
            cross-validation on the training and validation features together, trying balanced
            class weights too when the classes are imbalanced, then a refit on both. Not the
            default: ``bench/results/recipe_candidates.json`` measured it tied with ``validation`` on both
            shared datasets (5 seeds, paired), at 20-80 s more per fit on 2 cores.
        refit: with ``selection='validation'``, once C is chosen the head is fitted again on the
            training and validation features together (more images for the final fit; the
            feature extractor's default, measured in ``bench/recipe_vs_baseline.py``). The
            probabilities the training-only head gave the validation images stay in
            ``held_out_proba_``: what calibration may fit on, as they were not trained on.
    """

    def __init__(self, kind: str = "softmax", C: float | None = None, seed: int = 0,
                 selection: str = "validation", refit: bool = False) -> None:
        self.kind = kind
        self.C = C
        self.seed = seed
        self.selection = selection
        self.refit = refit

    def _classifier(self, C: float, y: np.ndarray, class_weight: str | None = None,
                    calibration_folds: int | None = None):
        if self.kind == "softmax":
            model = LogisticRegression(C=C, max_iter=3000, random_state=self.seed, class_weight=class_weight)
        elif self.kind == "ovr":
            model = OneVsRestClassifier(LogisticRegression(C=C, max_iter=3000, random_state=self.seed,
                                                           class_weight=class_weight))
        elif self.kind == "svm":
            folds = calibration_folds or int(min(3, np.bincount(y).min()))
            if folds < 2:
                raise ConfigError("The svm head needs at least 2 training images per class; use softmax.")
            model = CalibratedClassifierCV(
                LinearSVC(C=C, random_state=self.seed, class_weight=class_weight), method="sigmoid", cv=folds,
                ensemble=False,
            )
        else:
            raise ConfigError(f"Unknown head '{self.kind}'. Choose one of: {', '.join(HEADS)}.")
        return model

    def fit(self, X, y, X_val=None, y_val=None) -> LinearHead:
        """Fit on ``X, y`` (and, with ``selection='cv'``, on ``X_val, y_val`` too), choosing C first
        when it is not given.

        ``X`` and ``X_val`` may be arrays, memory-mapped caches or ``data.Rows``. The solvers need
        the features in memory, in float64 (``n x feature_dim``: small beside the pixels); they are
        standardised a chunk of rows at a time, so memory holds that one float64 copy and no
        temporaries of its size. Cross-validation standardises inside each fold.

        Attributes set:
            ``C_``, ``class_weight_``, ``selection_`` (how they were chosen: ``cv``, ``validation``
            or ``given``), ``validation_scores_`` (``{(C, class_weight): mean accuracy}``),
            ``n_fit_`` (rows the final head was fitted on), ``held_out_proba_`` (after a refit:
            the validation probabilities of the head fitted on the training features alone; else
            ``None``).
        """
        with threadpool_limits(limits=head_blas_threads(), user_api="blas"):
            return self._fit(X, y, X_val, y_val)

    def _fit(self, X, y, X_val=None, y_val=None) -> LinearHead:
        """:meth:`fit`, within its BLAS thread limit."""
        if self.selection not in SELECTIONS:
            raise ConfigError(f"Unknown selection '{self.selection}'. Choose one of: {', '.join(SELECTIONS)}.")
        y = np.asarray(y)
        if len(y) == 0:
            raise ConfigError("A head needs at least 2 classes in its training data; it got no images.")
        has_val = X_val is not None and len(X_val) > 0
        both = np.concatenate([y, np.asarray(y_val)]) if has_val else y
        smallest = int(np.unique(both, return_counts=True)[1].min())
        folds = min(CV_FOLDS, smallest)
        if self.kind == "svm" and smallest * (folds - 1) // max(folds, 1) < 2:
            folds = 0  # the svm calibrates on 2+ folds of each CV training fold: too few images to fold
        if self.C is not None:
            mode = "given"
        elif self.selection == "cv" and folds >= 2 and len(both) <= CV_MAX_ROWS:
            mode = "cv"
        else:
            mode = "validation" if has_val else "default"
        if mode == "cv" and has_val:
            X, y = np.concatenate([_rows64(X), _rows64(X_val)]), both
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ConfigError("A head needs at least 2 classes in its training data.")
        # Labels are re-indexed 0..k-1 so predict_proba columns match class indices.
        encoded = np.searchsorted(self.classes_, y)
        self.held_out_proba_ = None
        if mode == "cv":
            self._choose_by_cross_validation(_rows64(X), encoded, folds)
        elif mode == "validation":
            held_out = self._choose_on_validation(X, encoded, X_val, y_val)
            if self.refit and np.isin(np.asarray(y_val), self.classes_).all():
                self.held_out_proba_ = held_out
                X, encoded = np.concatenate([_rows64(X), _rows64(X_val)]), np.searchsorted(self.classes_, both)
        else:
            self.C_, self.class_weight_ = (self.C if self.C is not None else 0.1), None
            self.selection_, self.validation_scores_ = mode, {}
        scaler = StandardScaler()
        Xs = _standardised(scaler, X, fit=True)
        self.n_fit_ = len(encoded)
        self.estimator_ = Pipeline([
            ("scale", scaler), ("clf", self._classifier(self.C_, encoded, self.class_weight_).fit(Xs, encoded)),
        ])
        return self

    def _choose_by_cross_validation(self, X: np.ndarray, encoded: np.ndarray, folds: int) -> None:
        counts = np.bincount(encoded)
        weights = [None, "balanced"] if counts.max() >= IMBALANCE_RATIO * counts.min() else [None]
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.seed)
        # The svm calibrates on folds of each CV training fold, which holds fewer images of a class.
        calibration = min(3, counts.min() * (folds - 1) // folds)
        scores = {}
        for class_weight in weights:
            for C in C_GRID:
                clf = self._classifier(C, encoded, class_weight, calibration_folds=calibration)
                pipeline = Pipeline([("scale", StandardScaler()), ("clf", clf)])
                scores[(C, class_weight)] = float(cross_val_score(pipeline, X, encoded, cv=cv, scoring="accuracy").mean())
        # Ties go to no class weights, then to the C nearest 0.1 (the middle of the grid).
        self.C_, self.class_weight_ = max(
            scores, key=lambda key: (round(scores[key], 9), key[1] is None, -abs(np.log10(key[0]) + 1)))
        self.selection_, self.validation_scores_, self.folds_ = "cv", scores, folds

    def _choose_on_validation(self, X, encoded: np.ndarray, X_val, y_val) -> np.ndarray:
        """Chooses C by accuracy on the validation features; returns the chosen head's probabilities
        for them (fitted on the training features alone)."""
        scaler = StandardScaler()
        Xs = _standardised(scaler, X, fit=True)
        val_encoded = np.searchsorted(self.classes_, np.asarray(y_val))
        X_val = _standardised(scaler, X_val)
        scores, probabilities = {}, {}
        for C in C_GRID:
            candidate = self._classifier(C, encoded).fit(Xs, encoded)
            probabilities[C] = candidate.predict_proba(X_val)
            scores[(C, None)] = float((probabilities[C].argmax(axis=1) == val_encoded).mean())
        self.C_ = max(C_GRID, key=lambda c: (scores[(c, None)], -abs(np.log10(c) + 1)))
        self.class_weight_, self.selection_, self.validation_scores_ = None, "validation", scores
        return probabilities[self.C_]

    def cross_validated_accuracy(self, X, y, seed: int | None = None) -> float:
        """Mean stratified k-fold accuracy of a head of this kind at the C (and class weights) this
        one chose, on ``X, y``: a steadier score than one validation split for comparing heads on
        different features. ``nan`` when a class has under 2 images."""
        self._check_fitted()
        encoded = np.searchsorted(self.classes_, np.asarray(y))
        counts = np.bincount(encoded, minlength=len(self.classes_))
        folds = int(min(CV_FOLDS, counts.min()))
        calibration = min(3, counts.min() * (folds - 1) // max(folds, 1))
        if folds < 2 or (self.kind == "svm" and calibration < 2):
            return float("nan")
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.seed if seed is None else seed)
        pipeline = Pipeline([("scale", StandardScaler()), ("clf", self._classifier(
            self.C_, encoded, self.class_weight_, calibration_folds=calibration))])
        with threadpool_limits(limits=head_blas_threads(), user_api="blas"):
            return float(cross_val_score(pipeline, _rows64(X), encoded, cv=cv, scoring="accuracy").mean())

    def describe(self) -> str:
        """How C was chosen, in words, for a run's notes."""
        weights = " with balanced class weights" if self.class_weight_ == "balanced" else ""
        if self.selection_ == "cv":
            score = self.validation_scores_[(self.C_, self.class_weight_)]
            return (f"C={self.C_:g}{weights} chosen by {self.folds_}-fold cross-validation on the training and "
                    f"validation images together (mean accuracy {score:.3f}), then refitted on all "
                    f"{self.n_fit_} of them.")
        if self.selection_ == "validation" and self.held_out_proba_ is not None:
            return (f"C={self.C_:g} chosen on the validation split, then refitted on the training and validation "
                    f"images together ({self.n_fit_} of them).")
        if self.selection_ == "validation":
            return f"C={self.C_:g} chosen on the validation split."
        return f"C={self.C_:g}."

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
