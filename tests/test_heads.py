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


@pytest.mark.parametrize("selection", ["cv", "validation"])
@pytest.mark.parametrize("kind", ["softmax", "ovr", "svm"])
def test_each_head_learns_digits_and_folds_into_one_dense_layer(kind, selection, digits):
    X, y, Xv, yv, Xt, yt = digits
    head = LinearHead(kind, seed=0, selection=selection).fit(X, y, Xv, yv)
    assert head.C_ in C_GRID and {c for c, _ in head.validation_scores_} == set(C_GRID)
    assert head.selection_ == selection and head.n_fit_ == (1300 if selection == "cv" else 1000)
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


def test_cross_validation_tries_balanced_class_weights_only_on_imbalanced_classes(digits):
    X, y, Xv, yv, _, _ = digits
    balanced = LinearHead("softmax", seed=0, selection="cv").fit(X[:300], y[:300], Xv[:100], yv[:100])
    assert {w for _, w in balanced.validation_scores_} == {None}
    keep = (y != 3) | (np.cumsum(y == 3) <= 8)  # class 3 down to 8 images: imbalanced
    head = LinearHead("softmax", seed=0, selection="cv").fit(X[keep], y[keep], Xv, yv)
    assert {w for _, w in head.validation_scores_} == {None, "balanced"}
    assert len(head.validation_scores_) == 2 * len(C_GRID)
    assert head.validation_scores_[(head.C_, head.class_weight_)] == max(head.validation_scores_.values())
    assert "cross-validation" in head.describe() and f"C={head.C_:g}" in head.describe()


def test_cross_validation_is_seeded_and_falls_back_to_the_validation_split_on_tiny_classes():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 5)) + np.repeat(np.eye(2, 5) * 3, 20, axis=0), np.repeat([0, 1], 20)
    first = LinearHead(seed=3, selection="cv").fit(X[::2], y[::2], X[1::2], y[1::2])
    again = LinearHead(seed=3, selection="cv").fit(X[::2], y[::2], X[1::2], y[1::2])
    assert first.validation_scores_ == again.validation_scores_
    # One image of a class over train+val: no fold could hold it out, so C is chosen on validation.
    train, val = np.r_[0:10, 20], np.r_[10:15]
    head = LinearHead(seed=0, selection="cv").fit(X[train], y[train], X[val], y[val])
    assert head.selection_ == "validation" and head.n_fit_ == 11


def test_cross_validated_svm_copes_with_small_classes_and_no_images_is_a_clear_error():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    for n_small, expected in ((3, "cv"), (2, "validation")):  # 2 images: no fold could calibrate an svm
        y = np.r_[[0] * (30 - n_small), [1] * n_small]
        X[y == 1] += 3
        head = LinearHead("svm", selection="cv").fit(X, y, X[:2], y[:2])
        assert head.selection_ == expected and head.predict(X[-1:])[0] in (0, 1)
    with pytest.raises(ConfigError, match="got no images"):
        LinearHead().fit(np.zeros((0, 4)), [])


@pytest.mark.parametrize("kind", ["softmax", "ovr", "svm"])
def test_refit_chooses_C_on_validation_then_fits_on_training_and_validation(kind, digits):
    """The feature extractor's default: C chosen exactly as without a refit, then one more fit on both
    splits; the validation probabilities kept for calibration are the training-only head's."""
    X, y, Xv, yv, Xt, yt = digits
    plain = LinearHead(kind, seed=0).fit(X, y, Xv, yv)
    refit = LinearHead(kind, seed=0, refit=True).fit(X, y, Xv, yv)
    assert refit.C_ == plain.C_ and refit.validation_scores_ == plain.validation_scores_
    assert plain.n_fit_ == 1000 and plain.held_out_proba_ is None
    assert refit.n_fit_ == 1300 and "refitted on the training and validation images" in refit.describe()
    np.testing.assert_allclose(refit.held_out_proba_, plain.predict_proba(Xv), atol=1e-6)  # not trained on them
    both = LinearHead(kind, C=plain.C_, seed=0).fit(np.concatenate([X, Xv]), np.concatenate([y, yv]))
    np.testing.assert_allclose(refit.predict_proba(Xt), both.predict_proba(Xt), atol=1e-6)  # the test split unseen
    assert not np.allclose(refit.predict_proba(Xt), plain.predict_proba(Xt), atol=1e-3)
    np.testing.assert_allclose(_dense_proba(refit, Xt), refit.predict_proba(Xt), atol=1e-5)


def test_no_refit_when_validation_holds_a_class_training_lacks(digits):
    X, y, Xv, yv, _, _ = digits
    keep = y != 9
    head = LinearHead("softmax", seed=0, refit=True).fit(X[keep], y[keep], Xv, yv)
    assert head.held_out_proba_ is None and head.n_fit_ == int(keep.sum())


def test_cross_validated_accuracy_scores_the_chosen_C_on_folds(digits):
    X, y, Xv, yv, _, _ = digits
    head = LinearHead("softmax", seed=0).fit(X, y, Xv, yv)
    good = head.cross_validated_accuracy(np.concatenate([X, Xv]), np.concatenate([y, yv]))
    noise = head.cross_validated_accuracy(np.random.default_rng(0).normal(size=(1300, 64)), np.concatenate([y, yv]))
    assert good > 0.9 and noise < 0.2  # chance is 0.10
    assert np.isnan(head.cross_validated_accuracy(X[:11], np.arange(11) % 10))  # a class of one image: no folds
