"""The frozen ConvNet's inference precision: float32, bfloat16 where faster, never in training or the saved model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import make_toy_folder

from tl_core import backbones, precision
from tl_core.config import TrainConfig
from tl_core.errors import ConfigError
from tl_core.features import extract_features


def _feature_model(name="vgg16", size=32):
    spec = backbones.get_spec(name)
    base = backbones.build_base(spec, backbones.resolve_weights(spec, "none"), size, 0)
    return backbones.build_feature_model(spec, base, size)


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
    monkeypatch.setattr(precision, "_probe_seconds", lambda m, size: calls.append(m) or (1.0 if m is model else 0.5))
    name, chosen = precision.choose_precision("auto", model, backbone="vgg16", image_size=32, cache_dir=tmp_path)
    assert name == "bfloat16" and chosen is not model and len(calls) == 2  # 2x faster: chosen
    precision.choose_precision("auto", model, backbone="vgg16", image_size=32, cache_dir=tmp_path)
    assert len(calls) == 2  # remembered: no second probe
    monkeypatch.setattr(precision, "_probe_seconds", lambda m, size: 1.0 if m is model else 0.95)
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
