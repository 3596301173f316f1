"""LogME: how well a backbone's features fit a dataset's labels, without training a head.

You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning" (ICML 2021).
For each class, a Bayesian linear regression from the features to that class's one-hot column
(weights ~ N(0, 1/alpha), noise ~ N(0, 1/beta)); alpha and beta are set by maximising the
marginal likelihood (the evidence) with MacKay's fixed-point updates; LogME is the mean over
classes of the maximised log evidence per example. Higher is better; values compare backbones on
one dataset, not datasets with each other.
"""

from __future__ import annotations

import numpy as np

from tl_core.errors import ConfigError


def _spectrum(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD ``F = U diag(s) V^T``; works whether there are more features or more examples."""
    u, s, vt = np.linalg.svd(np.asarray(features, np.float64), full_matrices=False)
    return u, s, vt


def _evidence(n: int, d: int, s: np.ndarray, uy: np.ndarray, y: np.ndarray, alpha: float, beta: float):
    """Per-example log evidence, and the posterior's gamma, |m|^2 and residual, from the SVD.

    ``s`` are F's singular values and ``uy = U^T y``. Directions outside F's row space have a zero
    eigenvalue: each adds ``log(alpha)`` to ``log|A|`` and nothing else.
    """
    s2 = s**2
    m_coords = beta * s * uy / (alpha + beta * s2)  # posterior mean of the weights, in the V basis
    # |y - F m|^2 as a sum of non-negative parts (the part of y outside F's column space, plus the
    # shrinkage left in each direction): expanding the square instead cancels catastrophically
    # when the features fit the labels almost exactly (more features than examples).
    outside = max(float(y @ y - uy @ uy), 0.0)
    residual = outside + float(np.sum((uy * alpha / (alpha + beta * s2)) ** 2))
    m2 = float(m_coords @ m_coords)
    gamma = float(np.sum(beta * s2 / (alpha + beta * s2)))  # effective number of parameters
    log_det = float(np.sum(np.log(alpha + beta * s2))) + (d - len(s)) * np.log(alpha)
    evidence = (
        d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * log_det
        - beta / 2 * residual - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)
    )
    return float(evidence / n), gamma, m2, residual


def log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """Log marginal likelihood of ``target`` under the Bayesian linear model, per example.

    Computed from the singular values of the features (what the fixed point uses); the tests
    check it against a direct Gaussian log density.
    """
    y = np.asarray(target, np.float64)
    u, s, _ = _spectrum(features)
    n, d = np.shape(features)
    return _evidence(n, d, s, u.T @ y, y, alpha, beta)[0]


def _maximise(n: int, d: int, s: np.ndarray, uy: np.ndarray, y: np.ndarray, max_iter: int = 200, tol: float = 1e-7):
    """MacKay's fixed point: alpha = gamma / |m|^2, beta = (n - gamma) / residual."""
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        _, gamma, m2, residual = _evidence(n, d, s, uy, y, alpha, beta)
        # Clamped: with degenerate features (all rows nearly equal) gamma can reach n in floating point.
        new_alpha = max(gamma, 1e-12) / max(m2, 1e-300)
        new_beta = max(n - gamma, 1e-12) / max(residual, 1e-12 * n)
        done = abs(new_alpha / new_beta - alpha / beta) <= tol * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return alpha, beta


def _per_class(features: np.ndarray, labels: np.ndarray, center: bool = False) -> list[tuple[float, float, float, float]]:
    """``(log evidence per example, alpha, beta, variance of the one-hot column)`` per class.

    ``center``: subtract the means of the features and of each one-hot column first (a model
    with an intercept); LogME as published does not.
    """
    F = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    if F.ndim != 2 or len(F) != len(labels):
        raise ConfigError(f"features {F.shape} and labels ({len(labels)},) do not match.")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ConfigError("LogME needs labels of at least 2 classes.")
    if center:
        F = F - F.mean(axis=0)
    n, d = F.shape
    u, s, _ = _spectrum(F)
    out = []
    for label in classes:
        y = (labels == label).astype(np.float64)
        if center:
            y = y - y.mean()
        uy = u.T @ y
        alpha, beta = _maximise(n, d, s, uy, y)
        out.append((_evidence(n, d, s, uy, y, alpha, beta)[0], alpha, beta, float(y.var())))
    return out


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of pooled features for class labels (the mean over classes of the maximised evidence).

    Args:
        features: ``(n, d)`` features, one row per image.
        labels: ``(n,)`` class indices.

    Raises:
        ConfigError: fewer than 2 classes, or features and labels of different lengths.
    """
    return float(np.mean([row[0] for row in _per_class(features, labels)]))


def logme_explained(features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """LogME, and the share of the labels' variance the evidence-maximising model explains.

    The second number, ``1 - (1 / beta) / Var(y)`` averaged over the one-hot columns and clipped to
    [0, 1], reads like an adjusted R^2: ``1 / beta`` is the noise variance that the evidence
    maximisation settles on (it discounts the parameters the fit used), here for the same model
    with an intercept (centred features and labels), so features that carry no label information
    score 0 and features that separate the classes linearly score near 1. Unlike LogME itself
    it is on the same scale for every dataset.
    """
    score = logme(features, labels)
    rows = _per_class(features, labels, center=True)
    explained = [min(max(1.0 - 1.0 / (beta * var), 0.0), 1.0) for _, _, beta, var in rows]
    return score, float(np.mean(explained))


def fitted_hyperparameters(features: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """The evidence-maximising ``(alpha, beta)`` for one target column (for inspection and tests)."""
    y = np.asarray(target, np.float64)
    u, s, _ = _spectrum(features)
    n, d = np.shape(features)
    return _maximise(n, d, s, u.T @ y, y)
