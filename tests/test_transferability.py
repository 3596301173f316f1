"""LogME against an independent computation of the evidence, and on features that do or do not fit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from tl_core.errors import ConfigError
from tl_core.transferability import fitted_hyperparameters, log_evidence, logme, logme_explained


def _direct_evidence(F, y, alpha, beta):
    """y ~ N(0, F F^T / alpha + I / beta): the marginal likelihood written down directly."""
    cov = F @ F.T / alpha + np.eye(len(y)) / beta
    return multivariate_normal(mean=np.zeros(len(y)), cov=cov).logpdf(y) / len(y)


@pytest.fixture()
def case():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(40, 5))
    y = F @ np.array([1.0, -2.0, 0.5, 0.0, 0.0]) + rng.normal(scale=0.3, size=40)
    return F, y


@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.3, 12.0), (5.0, 0.2)])
def test_closed_form_evidence_equals_the_gaussian_log_density(case, alpha, beta):
    F, y = case
    assert log_evidence(F, y, alpha, beta) == pytest.approx(_direct_evidence(F, y, alpha, beta), rel=1e-9)


def test_fixed_point_finds_the_maximum_a_generic_optimiser_finds(case):
    F, y = case
    alpha, beta = fitted_hyperparameters(F, y)
    best = minimize(lambda p: -_direct_evidence(F, y, np.exp(p[0]), np.exp(p[1])), x0=[0.0, 0.0], method="Nelder-Mead",
                    options={"xatol": 1e-8, "fatol": 1e-12, "maxiter": 4000})
    assert log_evidence(F, y, alpha, beta) == pytest.approx(-best.fun, abs=1e-6)
    assert beta == pytest.approx(1 / 0.3**2, rel=0.35)  # the noise level the data was made with


def test_features_that_carry_the_labels_score_higher():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    informative = np.eye(3)[labels] * 2.0 + rng.normal(scale=0.5, size=(300, 3))
    informative = np.hstack([informative, rng.normal(size=(300, 13))])
    noise = rng.normal(size=(300, 16))
    assert logme(informative, labels) > logme(noise, labels) + 0.2


def test_bad_inputs():
    with pytest.raises(ConfigError, match="at least 2 classes"):
        logme(np.ones((4, 2)), np.zeros(4))
    with pytest.raises(ConfigError, match="do not match"):
        logme(np.ones((4, 2)), np.zeros(5))


def test_more_features_than_examples_is_handled():
    # Pooled ConvNet features are often wider than a small dataset is long (1,024 vs a few hundred).
    rng = np.random.default_rng(2)
    F = rng.normal(size=(30, 80))
    y = F[:, 0] + rng.normal(scale=0.1, size=30)
    alpha, beta = fitted_hyperparameters(F, y)
    assert np.isfinite(alpha) and np.isfinite(beta) and beta > 0
    assert log_evidence(F, y, alpha, beta) == pytest.approx(_direct_evidence(F, y, alpha, beta), rel=1e-9)
    assert np.isfinite(logme(F, (y > 0).astype(int)))


def test_separable_features_wider_than_the_data_stay_finite():
    """Regression: expanding |y - Fm|^2 cancelled catastrophically and LogME overflowed to 1e300."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 8, 300)
    F = np.abs(rng.normal(size=(300, 1024))) * 0.1
    F[np.arange(300), y] += 3.0  # each class lights up its own feature: linearly separable
    score = logme(F, y)
    assert np.isfinite(score) and 0 < score < 10
    assert score > logme(rng.normal(size=(300, 1024)), y)


def test_explained_variance_is_zero_for_noise_and_one_for_separable_features():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 600)
    _, noise = logme_explained(rng.normal(size=(600, 20)), y)
    F = rng.normal(size=(600, 20)) * 0.01
    F[np.arange(600), y] += 1.0
    _, separable = logme_explained(F, y)
    assert noise < 0.1 and separable > 0.95
    # One feature = label + unit noise: a linear fit explains about var(y) / (var(y) + 1) of each column.
    F = rng.normal(size=(6000, 1))
    labels = rng.integers(0, 2, 6000)
    F[:, 0] += labels
    assert logme_explained(F, labels)[1] == pytest.approx(0.25 / 1.25, abs=0.03)
