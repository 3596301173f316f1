"""Feature extraction runs the frozen ConvNet once and reuses its on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from tl_core import backbones
from tl_core.errors import CancelledError
from tl_core.features import extract_features, features_key
from tl_core.progress import CancelToken


def _feature_model(seed=0, name="vgg16"):
    spec = backbones.get_spec(name)
    base = backbones.build_base(spec, backbones.resolve_weights(spec, "none", seed), 32, seed)
    return backbones.build_feature_model(spec, base, 32)


def test_features_are_computed_in_batches_and_cached(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)
    model = _feature_model()
    cache = tmp_path / "f.npy"
    features = extract_features(model, x, batch_size=4, cache_path=cache)
    assert features.shape == (10, 512) and cache.is_file()
    # float16 precision (about 3 significant digits), stored as float16, handed out as float32.
    np.testing.assert_allclose(features[3], np.asarray(model(x[3:4].astype("float32")))[0], rtol=1e-3, atol=1e-4)
    assert features.dtype == np.float32 and np.load(cache).dtype == np.float16
    # A different model with the same cache path returns the cache: the ConvNet did not run again.
    cached = extract_features(_feature_model(seed=7), x, cache_path=cache)
    np.testing.assert_array_equal(cached, features)


def test_cache_key_depends_on_images_backbone_weights_and_size():
    key = features_key(["a", "b"], "vgg16", "imagenet-1", 224)
    assert key != features_key(["b", "a"], "vgg16", "imagenet-1", 224)
    assert key != features_key(["a", "b"], "mobilenet", "imagenet-1", 224)
    assert key != features_key(["a", "b"], "vgg16", "none-seed0", 224)
    assert key != features_key(["a", "b"], "vgg16", "imagenet-1", 160)


def test_extraction_can_be_cancelled():
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        extract_features(_feature_model(), np.zeros((4, 32, 32, 3), np.uint8), progress=token)
