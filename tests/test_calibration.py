"""Temperature scaling, ECE and split conformal prediction against known cases."""

from __future__ import annotations

import numpy as np
import pytest

from tl_core.calibration import (
    NOT_SURE_BELOW,
    Calibration,
    apply_temperature,
    calibrate,
    conformal_threshold,
    ece_noise,
    ece_noise_text,
    ece_of_table,
    expected_calibration_error,
    fit_temperature,
    how_sure,
    negative_log_likelihood,
    prediction_sets,
    reliability_table,
    set_coverage,
)
from tl_core.charts import reliability_diagram
from tl_core.errors import ConfigError, TLCoreError


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


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_conformal_sets_cover_the_target_share(seed):
    p, y = _calibrated(n=3000, seed=seed)
    threshold = conformal_threshold(p[:1000], y[:1000], 0.9)
    sets = prediction_sets(p[1000:], threshold)
    coverage = np.mean([label in s for label, s in zip(y[1000:], sets)])
    assert 0.87 <= coverage <= 0.94


def _logits(n=4000, k=5, seed=0):
    """Logits and labels drawn from their softmax: calibrated at T = 1 by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, (n, k))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return z, (p.cumsum(1) > rng.random((n, 1))).argmax(1)


def test_logits_are_accepted_and_match_probabilities():
    z, y = _logits()
    t = fit_temperature(5 * z, y)  # an over-confident model's logits
    assert 4.5 < t < 5.5
    p = np.exp(5 * z) / np.exp(5 * z).sum(1, keepdims=True)
    assert fit_temperature(p, y) == pytest.approx(t, rel=1e-3)  # log-probs as logits: the same optimum
    np.testing.assert_allclose(apply_temperature(5 * z, 5.0), apply_temperature(p, 5.0), atol=1e-9)
    assert expected_calibration_error(apply_temperature(5 * z, t), y) < 0.03
    assert negative_log_likelihood(apply_temperature(5 * z, t), y) < negative_log_likelihood(p, y)
    assert conformal_threshold(z, y) == pytest.approx(conformal_threshold(apply_temperature(z, 1.0), y))


def test_the_temperature_is_the_nll_minimum_and_one_absurd_image_does_not_choose_it():
    z, y = _logits(n=300, seed=3)
    sharp = 2 * z
    grid = np.exp(np.linspace(np.log(0.5), np.log(20), 3000))
    brute = grid[np.argmin([negative_log_likelihood(apply_temperature(sharp, t), y) for t in grid])]
    clean = fit_temperature(sharp, y)
    assert clean == pytest.approx(brute, rel=5e-3)
    wild = sharp.copy()
    wild[:3] = 0
    wild[np.arange(3), (y[:3] + 1) % 5] = 200  # three images wrong with a logit gap of 200 (p(true) ~ 1e-87)
    assert fit_temperature(wild, y) == pytest.approx(clean, rel=0.15)


def test_reliability_table_bins_every_image():
    p, y = _calibrated(n=1000)
    table = reliability_table(p, y)
    assert len(table) <= 10 and sum(row["count"] for row in table) == 1000
    assert all(0 <= row["accuracy"] <= 1 and 0 <= row["confidence"] <= 1 for row in table)
    assert ece_of_table(reliability_table(p, y, 15)) == pytest.approx(expected_calibration_error(p, y))
    always_right = np.eye(3)[[0, 1, 2, 0]]
    assert expected_calibration_error(always_right, [0, 1, 2, 0]) == 0.0  # sure and right
    assert expected_calibration_error(always_right, [1, 2, 0, 1]) == 1.0  # sure and wrong


def test_flat_probabilities_get_large_sets_and_are_not_sure():
    z, y = _logits(n=2000)
    threshold = conformal_threshold(z[:1000], y[:1000], 0.9)
    inside = prediction_sets(z[1000:], threshold)
    outside = prediction_sets(0.1 * z[1000:], threshold)  # nearly flat: like a picture of no class
    mean_inside, mean_outside = np.mean([len(s) for s in inside]), np.mean([len(s) for s in outside])
    assert mean_outside > mean_inside + 1
    assert all(len(s) == 5 for s in prediction_sets(np.full((3, 5), 0.2), threshold))
    calibration = {"threshold": threshold, "coverage": 0.9}
    assert not how_sure(np.full(5, 0.2), list("abcde"), calibration)["sure"]
    assert 0 < NOT_SURE_BELOW < 1


@pytest.mark.parametrize("n, coverage, rank", [(9, 0.9, 9), (19, 0.9, 18), (99, 0.9, 90), (100, 0.9, 91),
                                               (10, 0.05, 1), (4, 0.5, 3)])
def test_finite_sample_quantile(n, coverage, rank):
    rng = np.random.default_rng(n)
    p = rng.dirichlet(np.ones(3), n)
    y = rng.integers(0, 3, n)
    scores = np.sort(1 - p[np.arange(n), y])
    assert conformal_threshold(p, y, coverage) == pytest.approx(1 - scores[rank - 1])  # ceil((n + 1) * coverage)
    covered = set_coverage(prediction_sets(p, conformal_threshold(p, y, coverage)), y)
    assert covered >= rank / n  # ties at the threshold are in the set


def test_finite_sample_edges():
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert conformal_threshold(p, [0, 1], 0.9) == 0.0  # 2 images cannot promise 90%: every class is plausible
    assert conformal_threshold(np.tile(p, (4, 1)), [0, 1] * 4, 0.9) == 0.0  # 8: ceil(9 * 0.9) = 9 > 8
    assert conformal_threshold(np.tile(p, (5, 1))[:9], ([0, 1] * 5)[:9], 0.9) == pytest.approx(0.8)  # 9: the largest
    same = np.tile([[0.6, 0.4]], (20, 1))
    assert conformal_threshold(same, [0] * 20, 0.9) == pytest.approx(0.6)  # all scores tied
    assert prediction_sets(same[:1], 0.6) == [[0]] and prediction_sets(same[:1], 0.0) == [[0, 1]]


@pytest.mark.parametrize("call, match", [
    (lambda: conformal_threshold(np.full((4, 2), 0.5), [0, 1, 0, 1], 1.5), "between 0 and 1"),
    (lambda: conformal_threshold(np.full((4, 2), 0.5), [0, 1, 0, 1], 0), "between 0 and 1"),
    (lambda: conformal_threshold(np.full((4, 2), 0.5), [0, 1, 0, 1], 1), "between 0 and 1"),
    (lambda: conformal_threshold(np.full((4, 2), 0.5), [0, 1, 0, 1], float("nan")), "between 0 and 1"),
    (lambda: conformal_threshold(np.full((4, 2), 0.5), [0, 1, 0], 0.9), "one row of probabilities per label"),
    (lambda: fit_temperature(np.full((2, 2), 0.5), [0, 1, 1]), "one row of probabilities per label"),
    (lambda: expected_calibration_error(np.full((0, 2), 0.5), []), "one row of probabilities per label"),
    (lambda: expected_calibration_error(np.full((2, 2), 0.5), [0, 2]), "outside 0..1"),
    (lambda: expected_calibration_error(np.full((2, 2), 0.5), [0.5, 1]), "class indices"),
    (lambda: fit_temperature([[0.5, np.nan], [0.5, 0.5]], [0, 1]), "NaN or infinite"),
    (lambda: fit_temperature([0.5, 0.5], [0, 1]), "one row of probabilities per label"),
    (lambda: apply_temperature(np.full((2, 2), 0.5), 0), "positive number"),
    (lambda: reliability_table(np.full((2, 2), 0.5), [0, 1], 0), "n_bins"),
    (lambda: prediction_sets(np.full((2, 2), 0.5), 1.5), "between 0 and 1"),
    (lambda: set_coverage([[0]], [0, 1]), "one set per label"),
    (lambda: Calibration.from_dict({"temperature": 1.0}), "lacks ece_before"),
])
def test_bad_input_is_a_clear_engine_error(call, match):
    with pytest.raises(ConfigError, match=match) as caught:
        call()
    assert isinstance(caught.value, TLCoreError)


def test_the_calibration_round_trips_through_json():
    import json

    p, y = _calibrated(n=2000)
    c = calibrate(p[:1000], y[:1000], p[1000:], y[1000:])
    back = Calibration.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c and back.conformal_threshold == c.threshold
    short = Calibration.from_dict({"temperature": 2.0, "ece_before": 0.1, "ece_after": 0.05,
                                   "conformal_threshold": 0.3, "coverage": 0.9, "unknown": 1})
    assert short.threshold == 0.3 and short.test_coverage is None and short.reliability_after == []
    np.testing.assert_allclose(short.apply(p[:3]), apply_temperature(p[:3], 2.0))
    assert short.sets(np.array([[0.6, 0.3, 0.1, 0, 0]])) == [[0, 1]]
    given = calibrate(p[:1000], y[:1000], p[1000:], y[1000:], temperature=1.5)
    assert given.temperature == 1.5


def test_the_reliability_figure_shows_the_diagonal_and_each_ece():
    p, y = _calibrated(n=1000)
    sharp = apply_temperature(p, 1 / 4)
    c = calibrate(sharp[:500], y[:500], sharp[500:], y[500:])
    fig = reliability_diagram(c.reliability_before, c.reliability_after, c.ece_before, c.ece_after)
    assert len(fig.data) == 3 and list(fig.data[0].x) == [0, 1] and list(fig.data[0].y) == [0, 1]
    assert f"ECE {c.ece_before:.3f}" in fig.data[1].name and f"ECE {c.ece_after:.3f}" in fig.data[2].name
    assert "ECE" in reliability_diagram(c.reliability_before, c.reliability_after).data[1].name


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
    calibration = {"threshold": 0.3, "coverage": 0.9}
    assert how_sure([0.9, 0.05, 0.05], ["a", "b", "c"], calibration) == {"sure": True, "plausible": ["a"], "coverage": 0.9}
    assert how_sure([0.45, 0.4, 0.15], ["a", "b", "c"], calibration)["plausible"] == ["a", "b"]
    assert how_sure([0.25, 0.25, 0.25, 0.25], list("abcd"), calibration) == {"sure": False, "plausible": [],
                                                                             "coverage": 0.9}


def test_the_ece_of_chance_is_what_a_perfectly_calibrated_model_shows_and_shrinks_with_images():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(4) * 0.5, size=80)
    noise = ece_noise(p, seed=1)
    # Draw labels from the probabilities themselves: a model exactly as sure as it is right.
    direct = np.mean([expected_calibration_error(p, np.array([rng.choice(4, p=row) for row in p])) for _ in range(300)])
    assert noise == pytest.approx(direct, rel=0.15) and 0.03 < noise < 0.3
    assert ece_noise(np.tile(p, (25, 1)), seed=1) < noise / 3  # 2,000 images: about 1/5 as much


def test_a_change_of_ece_within_chance_is_said_to_tell_nothing():
    within = {"ece_before": 0.101, "ece_after": 0.124, "ece_noise": 0.09}
    assert ece_noise_text(within, 83) == (
        "On 83 test images a perfectly calibrated model would still show an ECE of about 0.090, by chance alone: "
        "this change (+0.023) is within it, so the test split cannot tell whether calibration helped. The "
        "temperature was fitted on the validation split, where it gives the lowest log loss; the model keeps it.")
    beyond = {"ece_before": 0.30, "ece_after": 0.05, "ece_noise": 0.02}
    assert ece_noise_text(beyond, 2000).endswith("this change (-0.250) is larger than that.")
    assert "before" in ece_noise_text({"ece_before": 0.1, "ece_after": 0.1}, 10)
    c = calibrate(p_val := np.full((50, 2), 0.5), np.r_[np.zeros(25, int), np.ones(25, int)], p_val,
                  np.r_[np.zeros(25, int), np.ones(25, int)])
    assert c.ece_noise is not None and c.to_dict()["ece_noise"] == c.ece_noise
