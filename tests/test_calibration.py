"""Temperature scaling, ECE and split conformal prediction against known cases."""

from __future__ import annotations

import numpy as np
import pytest

from tl_core.calibration import (
    apply_temperature,
    calibrate,
    conformal_threshold,
    expected_calibration_error,
    fit_temperature,
    prediction_sets,
)
from tl_core.errors import ConfigError


def _calibrated(n=4000, k=5, seed=0):
    """Labels drawn from the probabilities themselves: perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, k))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return p, y


def test_a_calibrated_model_has_a_small_ece_and_a_temperature_near_one():
    p, y = _calibrated()
    assert expected_calibration_error(p, y) < 0.03
    assert 0.9 < fit_temperature(p, y) < 1.1


def test_an_over_confident_model_is_softened_and_its_ece_falls():
    p, y = _calibrated()
    sharp = apply_temperature(p, 1 / 5)  # logits x 5
    t = fit_temperature(sharp, y)
    assert 4 < t < 6
    assert expected_calibration_error(apply_temperature(sharp, t), y) < expected_calibration_error(sharp, y) / 3
    assert (apply_temperature(sharp, t).argmax(1) == sharp.argmax(1)).all()  # the predicted class never changes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conformal_sets_cover_the_target_share(seed):
    p, y = _calibrated(n=3000, seed=seed)
    threshold = conformal_threshold(p[:1000], y[:1000], 0.9)
    sets = prediction_sets(p[1000:], threshold)
    coverage = np.mean([label in s for label, s in zip(y[1000:], sets)])
    assert 0.87 <= coverage <= 0.94


def test_flat_probabilities_get_large_sets():
    p, y = _calibrated(n=1000)
    threshold = conformal_threshold(p, y, 0.9)
    flat = np.full((10, 5), 0.2)
    assert all(len(s) == 5 for s in prediction_sets(flat, threshold)) or threshold > 0.2


def test_finite_sample_edge_and_bad_input():
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert conformal_threshold(p, [0, 1], 0.9) == 0.0  # 2 images cannot promise 90%: every class is plausible
    with pytest.raises(ConfigError, match="between 0 and 1"):
        conformal_threshold(p, [0, 1], 1.5)
    with pytest.raises(ConfigError, match="one row of probabilities per label"):
        fit_temperature(p, [0, 1, 1])


def test_calibrate_measures_on_the_test_split():
    p, y = _calibrated(n=3000)
    sharp = apply_temperature(p, 1 / 3)
    c = calibrate(sharp[:1500], y[:1500], sharp[1500:], y[1500:])
    assert c.ece_after < c.ece_before and c.temperature > 2
    assert abs(c.test_coverage - 0.9) < 0.04 and c.reliability_after


@pytest.mark.parametrize("with_layer", [False, True])
def test_the_temperature_folds_into_the_model(with_layer, tmp_path):
    import keras

    from tl_core.model_files import TEMPERATURE_LAYER, fold_temperature, load_model_file, save_model

    inputs = keras.Input((4,))
    if with_layer:  # the linear heads' models
        x = keras.layers.Dense(3, name="head_logits")(inputs)
        x = keras.layers.Rescaling(1.0, name=TEMPERATURE_LAYER)(x)
        outputs = keras.layers.Activation("softmax", name="probabilities")(x)
    else:  # fine-tuning and from scratch: the final softmax layer
        outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    before = np.asarray(model(x))
    fold_temperature(model, 2.5)
    expected = apply_temperature(before, 2.5)
    np.testing.assert_allclose(np.asarray(model(x)), expected, atol=1e-5)
    save_model(model, tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(load_model_file(tmp_path / "m.keras")(x)), expected, atol=1e-5)


def test_a_run_is_calibrated_and_says_so(tmp_path, store):
    from conftest import make_toy_folder

    from tl_core.config import TrainConfig
    from tl_core.runner import run_training

    folder = make_toy_folder(tmp_path / "toy", n_per_class=12)
    run = run_training(folder, TrainConfig(backbone="vgg16", weights="none", image_size=32, batch_size=8), store=store)
    calibration = run["metrics"]["calibration"]
    assert 0.5 <= calibration["temperature"] <= 20 and calibration["reliability_after"]
    assert any("temperature scaling" in note for note in run["metrics"]["notes"])


def test_how_sure_says_not_sure_for_a_flat_picture():
    from tl_core.calibration import how_sure

    calibration = {"threshold": 0.3, "coverage": 0.9}
    assert how_sure([0.9, 0.05, 0.05], ["a", "b", "c"], calibration) == {"sure": True, "plausible": ["a"], "coverage": 0.9}
    assert how_sure([0.45, 0.4, 0.15], ["a", "b", "c"], calibration)["plausible"] == ["a", "b"]
    assert how_sure([0.25, 0.25, 0.25, 0.25], list("abcd"), calibration) == {"sure": False, "plausible": [],
                                                                             "coverage": 0.9}
