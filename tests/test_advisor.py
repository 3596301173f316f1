"""The advisor: data size, measured domain similarity, each cell of the matrix, earlier layers,
backbone ranking, and the ``advise`` command."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from conftest import CLIPART8, FASHION, SHARED_WEIGHTS, needs_clipart8, needs_fashion, needs_shared_weights
from tl_core import advisor
from tl_core.advisor import LARGE_MIN_PER_CLASS, SCRATCH_MIN_PER_CLASS, SIMILAR_MIN, recommend
from tl_core.errors import ConfigError

SMALL = {"a": 60, "b": 200}
LARGE = {"a": LARGE_MIN_PER_CLASS, "b": 3000}
HUGE = {"a": SCRATCH_MIN_PER_CLASS, "b": 9000}


def measured(similarity: float, layers: dict[int, float] | None = None) -> dict:
    """A measure_domain result with every part equal to ``similarity``."""
    return {
        "similarity": similarity,
        "domain": "similar" if similarity >= SIMILAR_MIN else "different",
        "parts": {"statistics": similarity, "recognition": similarity, "transferability": similarity},
        "measurements": {"logme": 0.1, "imagenet_top1": 0.5, "imagenet_entropy": 0.3, "bn_divergence": 0.2},
        "layers": layers if layers is not None else {0: 0.3, 2: 0.2},
        "notes": [],
    }


@pytest.mark.parametrize(
    "per_class, similarity, layers, strategy, settings",
    [
        (SMALL, 0.85, None, "feature_extractor", {"head": "softmax", "feature_cut": 0}),
        # An earlier block that fits the labels better is only taken for a different domain...
        (SMALL, 0.85, {0: 0.1, 2: 0.4}, "feature_extractor", {"feature_cut": 0}),
        (SMALL, 0.40, {0: 0.1, 2: 0.4, 4: 0.2}, "feature_extractor", {"feature_cut": 2}),
        # ...and only when it wins.
        (SMALL, 0.40, {0: 0.3, 2: 0.1, 4: 0.2}, "feature_extractor", {"feature_cut": 0}),
        (LARGE, 0.85, None, "finetune", {"unfreeze_blocks": -1, "fine_tune_learning_rate": 1e-5}),
        # Large and different: from scratch only from SCRATCH_MIN_PER_CLASS; below, the features
        # of the layer that transfers best.
        (LARGE, 0.40, {0: 0.1, 2: 0.4}, "feature_extractor", {"feature_cut": 2}),
        (HUGE, 0.40, None, "scratch", {"weights": "none"}),
    ],
)
def test_each_cell_of_the_matrix_from_measurements(per_class, similarity, layers, strategy, settings):
    rec = recommend(per_class, measured(similarity, layers))
    assert rec.strategy == strategy == rec.settings["strategy"]
    assert rec.size == ("small" if per_class is SMALL else "large")
    assert rec.domain == ("similar" if similarity >= SIMILAR_MIN else "different")
    for key, value in settings.items():
        assert rec.settings[key] == value
    text = " ".join(rec.reasons)
    assert f"{similarity:.2f}" in text and str(min(per_class.values())) in text  # cites the measurements
    if rec.strategy == "feature_extractor" and rec.domain == "different":
        assert "blocks below the top" in text or "last layer fits your labels best" in text


def test_cross_validated_accuracy_settles_the_layer_logme_ranks_first():
    # LogME prefers 2 blocks down by a hair; the cross-validated accuracy says the last layer.
    result = {**measured(0.40, {0: 0.300, 2: 0.306}), "layer_accuracy": {0: 0.85, 2: 0.84}}
    rec = recommend(SMALL, result)
    assert rec.settings["feature_cut"] == 0
    assert "85.0% from the last layer" in " ".join(rec.reasons) and "84.0% from 2 blocks down" in " ".join(rec.reasons)
    result["layer_accuracy"] = {0: 0.80, 2: 0.86}
    assert recommend(SMALL, result).settings["feature_cut"] == 2


def test_layer_accuracy_is_cross_validated_on_the_features():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    useful = rng.normal(size=(60, 8)) + 3 * np.eye(3, 8)[y]  # separates the classes
    noise = rng.normal(size=(60, 8))
    accuracy = advisor.cross_validated_layers({0: noise, 2: useful}, y, [0, 2, 2])
    assert set(accuracy) == {0, 2} and accuracy[2] > 0.9 and accuracy[0] < 0.6
    assert advisor.cross_validated_layers({0: noise}, np.array([0] * 59 + [1]), [0]) == {}  # one image: no folds


def test_thresholds_are_inclusive():
    assert advisor.measure_size({"a": LARGE_MIN_PER_CLASS - 1, "b": 5000})["size"] == "small"
    assert advisor.measure_size({"a": LARGE_MIN_PER_CLASS, "b": 5000})["size"] == "large"
    assert recommend(LARGE, measured(SIMILAR_MIN)).domain == "similar"
    assert recommend(LARGE, measured(SIMILAR_MIN - 0.01)).domain == "different"
    info = advisor.measure_size({"a": 10, "b": 30, "c": 50, "empty": 0})
    assert info == {"n_images": 90, "n_classes": 3, "min_per_class": 10, "median_per_class": 30.0, "size": "small"}
    with pytest.raises(ConfigError, match="no usable image"):
        advisor.measure_size({"a": 0})


def test_stratified_sample_keeps_every_class():
    y = np.repeat([0, 1, 2], [1000, 100, 3])
    idx = advisor.stratified_sample(y, 300)
    counts = np.bincount(y[idx], minlength=3)
    assert len(idx) == len(set(idx.tolist())) <= 305
    assert counts[2] >= 2 and counts[1] == pytest.approx(27, abs=2) and counts[0] == pytest.approx(272, abs=2)
    assert len(advisor.stratified_sample(np.arange(50) % 2, 300)) == 50  # small sets: all of it


def test_activation_statistics_divergence():
    mean, var = np.array([0.0, 1.0, 0.0]), np.array([1.0, 4.0, 0.0])  # the third channel is dead on ImageNet
    same = advisor._bn_divergence(mean, var + mean**2, mean, var)
    assert same == pytest.approx(0.0, abs=1e-9)
    # Means two standard deviations apart, equal variances: symmetric KL = 0.5 * 4 * (1 + 1) = 4.
    shifted = advisor._bn_divergence(mean + 2 * np.sqrt(np.maximum(var, 1)), var + (mean + 2 * np.sqrt(np.maximum(var, 1))) ** 2, mean, var)
    assert shifted == pytest.approx(4.0)


@pytest.fixture(scope="module")
def random_mobilenet_file(tmp_path_factory):
    """A MobileNet weights file that is not ImageNet's (random, saved): works offline, no ../shared."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet_random_notop.weights.h5"
    keras.utils.set_random_seed(0)
    keras.applications.MobileNet(include_top=False, weights=None, input_shape=(224, 224, 3)).save_weights(path)
    return path


def test_measure_domain_parts_without_the_imagenet_head(random_mobilenet_file):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 224, 224, 3)).astype(np.uint8)
    y = np.arange(16) % 2
    x[y == 1] //= 4  # class 1 is darker
    small = np.stack([x_[::4, ::4] for x_ in x])  # the same images at 56 px
    result = advisor.measure_domain(x, y, "mobilenet", str(random_mobilenet_file), layer_pixels=small)
    assert result["parts"]["recognition"] is None
    assert any("not ImageNet's" in note for note in result["notes"])
    assert 0.0 <= result["parts"]["statistics"] <= 1.0 and 0.0 <= result["similarity"] <= 1.0
    assert set(result["layers"]) == {0, 2, 4, 6} and all(np.isfinite(v) for v in result["layers"].values())
    best = max(result["layers"], key=result["layers"].get)
    assert set(result["layer_accuracy"]) == {0, best} and all(0 <= v <= 1 for v in result["layer_accuracy"].values())
    with pytest.raises(ConfigError, match="pretrained"):
        advisor.measure_domain(x, y, "mobilenet", "none")


@needs_shared_weights
@needs_clipart8
@needs_fashion
def test_similarity_orders_clip_art_above_grayscale_silhouettes(monkeypatch):
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(SHARED_WEIGHTS))
    clipart = advisor.advise(CLIPART8, sample=120, rank=False)
    fashion = advisor.advise(FASHION, sample=120, rank=False)
    assert clipart["similarity"] > fashion["similarity"] + 0.1
    assert (clipart["domain"], fashion["domain"]) == ("similar", "different")
    for result in (clipart, fashion):
        assert result["size"] == "small" and result["strategy"] == "feature_extractor"
        assert all(v is not None for v in result["similarity_parts"].values())  # the ImageNet head is in ../shared
        assert result["measurements"]["sample"] == pytest.approx(120, abs=10)
    assert clipart["skipped"] == 4 and clipart["n_images"] == 555


@needs_shared_weights
@needs_clipart8
def test_backbone_ranking_puts_imagenet_features_first(monkeypatch, tmp_path):
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(SHARED_WEIGHTS))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # only ../shared counts as "on disk"
    assert advisor.available_backbones() == ["mobilenet"]
    from tl_core import data

    image_set = data.load_images(CLIPART8)
    image_set.items = image_set.items[::12]
    decoded = data.decode_dataset(image_set, 224)
    ranking = advisor.rank_backbones(decoded.x, decoded.y, [("vgg16", "none"), ("mobilenet", "imagenet")])
    assert [r["backbone"] for r in ranking] == ["mobilenet", "vgg16"]
    assert ranking[0]["logme"] > ranking[1]["logme"]


def test_advise_command_prints_the_contract(tmp_path, random_mobilenet_file):
    from conftest import make_toy_folder
    from test_cli import cli, last_json

    root = make_toy_folder(tmp_path / "toy", n_per_class=6)
    proc = cli("advise", "--data", str(root), "--weights", str(random_mobilenet_file), "--json", "--quiet", data_dir=tmp_path / "store")
    result = last_json(proc)
    for key in ("n_images", "n_classes", "min_per_class", "size", "similarity", "domain", "strategy", "settings", "reasons"):
        assert key in result, key
    assert (result["n_images"], result["n_classes"], result["min_per_class"]) == (18, 3, 6)
    assert result["size"] == "small" and result["strategy"] == "feature_extractor"
    assert 0.0 <= result["similarity"] <= 1.0 and result["domain"] in ("similar", "different")
    assert result["settings"]["backbone"] == "mobilenet"
    bad = cli("advise", "--data", str(tmp_path / "nowhere"), "--json", data_dir=tmp_path / "store", check=False)
    assert bad.returncode == 2 and "error" in json.loads(bad.stdout.strip().splitlines()[-1])
