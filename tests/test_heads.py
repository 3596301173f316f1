"""Linear heads on features: accuracy, C selection, and the exact Dense-layer twin."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_expit, softmax
from sklearn.datasets import load_digits

from tl_core.errors import ConfigError, NotFittedError
from tl_core.heads import C_GRID, LinearHead


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:1000], y[:1000], X[1000:1300], y[1000:1300], X[1300:], y[1300:]


def _dense_proba(head, X):
    W, b, mode = head.to_dense()
    z = X @ W + b
    return softmax(z, axis=1) if mode == "softmax" else softmax(log_expit(z), axis=1)


@pytest.mark.parametrize("kind", ["softmax", "ovr", "svm"])
def test_each_head_learns_digits_and_folds_into_one_dense_layer(kind, digits):
    X, y, Xv, yv, Xt, yt = digits
    head = LinearHead(kind, seed=0).fit(X, y, Xv, yv)
    assert head.C_ in C_GRID and set(head.validation_scores_) == set(C_GRID)
    assert (head.predict(Xt) == yt).mean() > 0.85  # chance is 0.10
    np.testing.assert_allclose(_dense_proba(head, Xt), head.predict_proba(Xt), atol=1e-5)


@pytest.mark.parametrize("kind", ["softmax", "ovr", "svm"])
def test_binary_heads_fold_too(kind, digits):
    X, y, Xv, yv, Xt, yt = digits
    head = LinearHead(kind, C=0.1).fit(X, (y > 4).astype(int))
    np.testing.assert_allclose(_dense_proba(head, Xt), head.predict_proba(Xt), atol=1e-5)
    assert (head.predict(Xt) == (yt > 4)).mean() > 0.75


def test_labels_need_not_be_contiguous(digits):
    X, y, *_ = digits
    mask = np.isin(y, [3, 7, 9])
    head = LinearHead("ovr", C=1.0).fit(X[mask], y[mask])
    assert set(head.predict(X[mask])) <= {3, 7, 9}
    assert head.predict_proba(X[mask]).shape[1] == 3


def test_unfitted_and_unknown_heads_raise_clear_errors():
    with pytest.raises(NotFittedError, match="not fitted"):
        LinearHead().predict(np.zeros((1, 3)))
    with pytest.raises(ConfigError, match="Unknown head 'tree'"):
        LinearHead("tree").fit(np.random.rand(6, 2), [0, 1, 0, 1, 0, 1])
    with pytest.raises(ConfigError, match="at least 2 classes"):
        LinearHead().fit(np.random.rand(4, 2), [1, 1, 1, 1])
