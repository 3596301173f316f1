""""None of these": the Mahalanobis check on features, fitted by every feature-extractor run and used by Predict."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_toy_folder
from tl_core.config import TrainConfig
from tl_core.novelty import NOVELTY_FILE, Novelty, fit_novelty, load_novelty, picture_features


def _clusters(rng, n, centres):
    y = rng.integers(0, len(centres), n)
    return centres[y] + rng.normal(size=(n, centres.shape[1])) @ np.diag(np.linspace(0.5, 2.0, centres.shape[1])), y


def test_flags_about_the_quantile_of_own_pictures_and_nearly_all_of_others(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(3, 20))
    train, y = _clusters(rng, 600, centres)
    val, _ = _clusters(rng, 300, centres)
    test, _ = _clusters(rng, 2000, centres)
    check = fit_novelty(train, y, val)
    assert 0.02 <= check.flags(test).mean() <= 0.10  # 5% by construction, give or take the sampling
    elsewhere = rng.normal(loc=12.0, size=(500, 20))  # none of the classes
    between = (centres[0] + centres[1]) / 2 + rng.normal(size=(500, 20))  # between two classes, far from both
    assert check.flags(elsewhere).mean() > 0.99 and check.flags(between).mean() > 0.9
    # The distance is to the nearest class: a class's own centre is at distance 0.
    assert check.distance(centres).max() < check.limit / 10
    check.save(tmp_path / NOVELTY_FILE)
    again = load_novelty(tmp_path)
    np.testing.assert_allclose(again.distance(test), check.distance(test), rtol=1e-4)
    assert load_novelty(tmp_path / "elsewhere") is None
    # The distance is the definition's, class by class: min over c of (x - c)' P (x - c), standardised.
    x = (test[:50] - check.mean) / check.scale
    direct = np.min([[(r - c) @ check.precision @ (r - c) for c in check.centres] for r in x], axis=1)
    np.testing.assert_allclose(check.distance(test[:50]), direct, rtol=1e-9)
    # The precision is the inverse of scikit-learn's Ledoit-Wolf covariance of the centred, standardised rows.
    from sklearn.covariance import LedoitWolf

    xs = (train - check.mean) / check.scale
    lw = LedoitWolf().fit(xs - check.centres[y])
    np.testing.assert_allclose(check.precision, lw.precision_, rtol=1e-6, atol=1e-9)
    from tl_core.novelty import _inverse

    np.testing.assert_allclose(_inverse(np.diag([4.0, 2.0, 0.0])), np.diag([0.25, 0.5, 0.0]))  # singular: pseudo-inverse
    with pytest.raises(ValueError, match="validation images"):
        fit_novelty(train, y, val[:0])


@pytest.mark.parametrize("settings", [{}, {"strategy": "finetune", "fine_tune_epochs": 1, "unfreeze_blocks": 1},
                                      {"strategy": "scratch", "epochs": 3}], ids=["extractor", "finetune", "scratch"])
def test_every_run_stores_a_check_that_its_saved_model_reproduces(settings, tmp_path, store):
    """The run fits the check on its model's own features (the feature extractor: those its head was fitted
    on, whichever block 'auto' chose; the others: their trained model's); the saved model gives the same
    features again, so Predict flags what the run measured."""
    import keras

    from tl_core import data
    from tl_core.runner import run_training

    root = make_toy_folder(tmp_path / "toy", n_per_class=20)
    run = run_training(root, TrainConfig(backbone="vgg16", weights="none", image_size=32, batch_size=8,
                                         precision="float32", **settings), store=store)
    assert run["status"] == "succeeded", run["error"]
    folder = store.run_dir(run["id"])
    check = load_novelty(folder)
    assert isinstance(check, Novelty) and run["metrics"]["novelty"]["quantile"] == 0.95
    assert run["metrics"]["novelty"]["features"] == len(check.mean)
    model = keras.saving.load_model(folder / "model.keras", compile=False)
    decoded = data.decode_dataset(data.load_images(root), 32)
    test_names = set(__import__("json").loads((folder / "split.json").read_text())["test"])
    test = [i for i, name in enumerate(decoded.names) if name in test_names]
    flagged = check.flags(picture_features(model, decoded.x[test])).mean()
    assert flagged == pytest.approx(run["metrics"]["novelty"]["test_flagged"])
    if not settings:  # random weights trained a few epochs (scratch) need not tell a white square apart
        blank = np.full((4, 32, 32, 3), 255, np.uint8)  # white squares: none of the toy's classes
        assert check.flags(picture_features(model, blank)).all()
