"""The frozen ConvNet's inference precision: float32, bfloat16 where faster, never in training or the saved model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import SHARED_WEIGHTS, make_toy_folder, needs_shared_weights

from tl_core import backbones, precision
from tl_core.config import TrainConfig
from tl_core.errors import ConfigError
from tl_core.features import extract_features, features_key, inference_function


def _feature_model(name="vgg16", size=32, weights="none"):
    spec = backbones.get_spec(name)
    base = backbones.build_base(spec, backbones.resolve_weights(spec, weights), size, 0)
    return backbones.build_feature_model(spec, base, size)


def _with_batchnorm_statistics(model, seed=0):
    """``model`` with every BatchNormalization given non-trivial statistics (random weights have none to fold)."""
    rng = np.random.default_rng(seed)
    for _, layer in precision._walk(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
                               rng.uniform(0.5, 2.0, n)])
    return model


def _min_cosine(a, b):
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def test_resolve_precision_says_what_auto_stands_for_here(monkeypatch):
    assert precision.PRECISIONS == ("auto", "float32", "bfloat16")
    assert isinstance(precision.bf16_supported.__wrapped__(), bool)  # the real check never raises
    monkeypatch.setattr(precision, "bf16_supported", lambda: True)
    assert [precision.resolve_precision(p) for p in precision.PRECISIONS] == ["bfloat16", "float32", "bfloat16"]
    monkeypatch.setattr(precision, "bf16_supported", lambda: False)
    assert [precision.resolve_precision(p) for p in precision.PRECISIONS] == ["float32", "float32", "bfloat16"]
    with pytest.raises(ConfigError, match="Choose one of: auto, float32, bfloat16"):
        precision.resolve_precision("float16")


@pytest.mark.parametrize("name", ["mobilenet", "resnet50"])
def test_the_twin_folds_every_batchnorm_into_its_convolution(name):
    model = _with_batchnorm_statistics(_feature_model(name))
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    folded = precision._twin(model, "float32")  # the folding alone, without bfloat16's rounding
    layers = [layer for _, layer in precision._walk(folded)]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers)
    n_folded = sum(isinstance(layer, keras.layers.Identity) for layer in layers)
    assert n_folded == {"mobilenet": 27, "resnet50": 53}[name]
    a, b = np.asarray(inference_function(model)(x)), np.asarray(inference_function(folded)(x))
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3 * np.abs(a).max())
    twin = precision.bfloat16_twin(model)
    policies = {path[-1]: layer.dtype_policy.name for path, layer in precision._walk(twin)}
    first, third = {"mobilenet": ("conv_dw_1", "conv_pw_1"),
                    "resnet50": ("conv2_block1_1_conv", "conv2_block1_2_conv")}[name]  # 2nd and 3rd convolutions
    assert policies["preprocess"] == policies[first] == "float32"  # an early error would grow through the network
    assert policies[third] == policies["features"] == "mixed_bfloat16"
    assert _min_cosine(a, np.asarray(inference_function(twin)(x), np.float32)) > 0.99
    assert any(isinstance(layer, keras.layers.BatchNormalization) for _, layer in precision._walk(model))  # untouched


@pytest.mark.parametrize("forced", ["bfloat16", "float32"])
def test_the_chosen_model_extracts_features_and_leaves_the_global_policy_alone(forced):
    model = _with_batchnorm_statistics(_feature_model("mobilenet"))
    x = np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    a = extract_features(model, x, batch_size=4)
    _, chosen = precision.choose_precision(forced, model, backbone="mobilenet", image_size=32)
    b = extract_features(chosen, x, batch_size=4)
    assert b.shape == a.shape and b.dtype == a.dtype == np.float16
    assert _min_cosine(np.asarray(a, np.float32), np.asarray(b, np.float32)) > 0.99
    assert np.array_equal(a, b) == (forced == "float32")
    assert keras.mixed_precision.global_policy().name == "float32"
    assert {w.dtype for w in model.weights} == {"float32"}
    with pytest.raises(ConfigError, match="Choose one of"):
        precision.choose_precision("half", model, backbone="mobilenet", image_size=32)


@needs_shared_weights
def test_bfloat16_features_of_the_real_mobilenet_are_close_to_float32(monkeypatch):
    # At 224 px, the size a run uses: at 64 px ImageNet features come from a 2 x 2 map and are fragile
    # (a CPU without native bfloat16, which TensorFlow emulates, gave a min cosine of 0.988 there, 0.998 here).
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(SHARED_WEIGHTS))
    model = _feature_model("mobilenet", size=224, weights="imagenet")
    x = np.random.default_rng(3).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    a = np.asarray(extract_features(model, x), np.float32)
    b = np.asarray(extract_features(precision.bfloat16_twin(model), x), np.float32)
    assert a.shape == b.shape == (8, 1024)
    assert _min_cosine(a, b) > 0.99
    assert keras.mixed_precision.global_policy().name == "float32"


def test_the_features_cache_key_names_the_precision():
    args = (["h1", "h2"], "mobilenet", "imagenet-abc", 224)
    assert features_key(*args) == features_key(*args, precision="float32")  # the caches of before stay valid
    assert features_key(*args, precision="bfloat16") != features_key(*args)
    assert features_key(*args, cut=2, precision="bfloat16") != features_key(*args, precision="bfloat16")
    with pytest.raises(ValueError, match="not 'auto'"):
        features_key(*args, precision="auto")


def test_the_probe_times_both_models_on_the_same_images():
    model = _feature_model()
    twin = precision.bfloat16_twin(model)
    seconds = precision._probe_seconds([model, twin], 32, rounds=1)
    assert len(seconds) == 2 and all(0 < s < 60 for s in seconds)


def test_an_unknown_precision_is_a_clear_error():
    with pytest.raises(ConfigError, match="Unknown precision 'half'. Choose one of: auto, float32, bfloat16"):
        TrainConfig(precision="half").validate()
    with pytest.raises(ConfigError, match="Choose one of: auto, float32, bfloat16"):
        precision.check_precision("fp8")


def test_the_bfloat16_twin_computes_nearly_the_same_features_and_leaves_float32_alone():
    model = _feature_model()
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    name, twin = precision.choose_precision("bfloat16", model, backbone="vgg16", image_size=32)
    assert name == "bfloat16" and twin is not model
    a = np.asarray(extract_features(model, x), np.float32)
    b = np.asarray(extract_features(twin, x), np.float32)
    assert a.shape == b.shape and b.dtype == np.float32
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.99 and not np.array_equal(a, b)  # bfloat16 rounds: close, not equal
    assert keras.mixed_precision.global_policy().name == "float32"
    assert {w.dtype for w in model.weights} == {"float32"}  # the model that trains and is saved


def test_auto_measures_once_and_remembers(tmp_path, monkeypatch):
    model = _feature_model()
    monkeypatch.setattr(precision, "bf16_supported", lambda: False)
    assert precision.choose_precision("auto", model, backbone="vgg16", image_size=32, cache_dir=tmp_path) == \
        ("float32", model)  # no native bfloat16: no probe at all
    assert not (tmp_path / "precision.json").exists()
    monkeypatch.setattr(precision, "bf16_supported", lambda: True)
    calls = []
    monkeypatch.setattr(precision, "_probe_seconds",
                        lambda models, size: calls.append(models) or [1.0 if m is model else 0.5 for m in models])
    name, chosen = precision.choose_precision("auto", model, backbone="vgg16", image_size=32, cache_dir=tmp_path)
    assert name == "bfloat16" and chosen is not model and len(calls) == 1 and calls[0][0] is model  # 2x faster
    precision.choose_precision("auto", model, backbone="vgg16", image_size=32, cache_dir=tmp_path)
    assert len(calls) == 1  # remembered: no second probe
    monkeypatch.setattr(precision, "_probe_seconds",
                        lambda models, size: [1.0 if m is model else 0.95 for m in models])
    assert precision.choose_precision("auto", model, backbone="vgg16", image_size=48, cache_dir=tmp_path)[0] == \
        "float32"  # 5% faster is within the margin: float32's exact numbers are kept


def test_a_run_records_its_precision_and_keys_its_features_cache_by_it(tmp_path, store):
    from tl_core.runner import run_training

    folder = make_toy_folder(tmp_path / "toy", n_per_class=6)
    tiny = dict(backbone="vgg16", weights="none", image_size=32, batch_size=8)
    runs = [run_training(folder, TrainConfig(precision=p, **tiny), store=store) for p in ("float32", "bfloat16")]
    assert [r["metrics"]["precision"] for r in runs] == ["float32", "bfloat16"]
    assert len(list((store.cache_dir / "features").glob("*.npy"))) == 2  # never one cache for both
    assert any("bfloat16" in note for note in runs[1]["metrics"]["notes"])
    model = keras.saving.load_model(runs[1]["model_path"], compile=False)
    assert "bfloat16" not in str(model.get_config())  # the saved model is float32
