"""LogME against an independent computation of the evidence, and on features that do or do not fit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from tl_core.errors import ConfigError
from tl_core.transferability import fitted_hyperparameters, log_evidence, logme


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
