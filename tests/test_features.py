"""Feature extraction runs the frozen ConvNet once and reuses its on-disk cache."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import keras
import numpy as np
import pytest

from tl_core import backbones
from tl_core import features as features_module
from tl_core.data import Rows
from tl_core.errors import CancelledError
from tl_core.features import FeaturePass, OutputRows, extract_features, features_key, inference_function
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
    # float16 precision (about 3 significant digits): the cache file, mapped read-only.
    np.testing.assert_allclose(features[3], np.asarray(model(x[3:4].astype("float32")))[0], rtol=1e-3, atol=1e-4)
    assert features.dtype == np.float16 and np.load(cache).dtype == np.float16
    assert isinstance(features, np.memmap) and not features.flags.writeable
    assert Path(features.filename) == cache.resolve() and sorted(tmp_path.iterdir()) == [cache]  # no temporaries
    # A different model with the same cache path returns the cache: the ConvNet did not run again.
    cached = extract_features(_feature_model(seed=7), x, cache_path=cache)
    np.testing.assert_array_equal(cached, features)


def test_features_of_a_split_of_the_pixel_cache_equal_those_computed_in_memory(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    mapped = np.load(tmp_path / "pixels.npy", mmap_mode="r")
    index = np.array([9, 2, 5, 11, 0])
    model = _feature_model()
    on_disk = extract_features(model, Rows(mapped, index), batch_size=2, cache_path=tmp_path / "f.npy")
    in_memory = extract_features(model, pixels[index], batch_size=2)
    assert isinstance(on_disk, np.memmap) and type(in_memory) is np.ndarray
    assert on_disk.dtype == in_memory.dtype == np.float16
    np.testing.assert_array_equal(on_disk, in_memory)


def test_features_beyond_float16_range_are_kept_as_float32(tmp_path):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1000.0)(inputs)))
    x = np.full((6, 8, 8, 3), 200, np.uint8)  # features of 200,000: float16 would make them inf
    x[:3] = 10  # the first batches fit float16; the choice is made on all of them
    cached = extract_features(model, x, batch_size=2, cache_path=tmp_path / "f.npy")
    assert cached.dtype == np.float32 and np.load(tmp_path / "f.npy").dtype == np.float32
    np.testing.assert_array_equal(cached[:, 0], [10_000.0] * 3 + [200_000.0] * 3)
    np.testing.assert_array_equal(extract_features(model, x, batch_size=2), cached)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy"]


def test_the_network_is_traced_once_per_model_whatever_the_batch_sizes_and_passes():
    model = _feature_model()
    x = np.random.default_rng(2).integers(0, 255, (7, 32, 32, 3), dtype=np.uint8)
    first = extract_features(model, x, batch_size=3)  # batches of 3, 3 and 1
    second = extract_features(model, x[:5], batch_size=4)  # 4 and 1, in a new pass
    # The same rows; oneDNN may pick another kernel for another batch size (a float16 step apart).
    np.testing.assert_allclose(second, first[:5], rtol=2e-3, atol=1e-5)
    forward = inference_function(model, np.uint8)
    assert forward is inference_function(model, "uint8")
    assert forward.experimental_get_tracing_count() == 1  # tracing costs as much as ~40 images
    # Float pixels get their own function; the cache never keeps a model alive.
    np.testing.assert_allclose(np.asarray(inference_function(model, np.float32)(x[:2].astype(np.float32))),
                               first[:2], rtol=1e-3, atol=1e-4)
    gc.collect()  # the models of earlier tests go first
    alive, cached_models = weakref.ref(model), len(features_module._INFERENCE_FUNCTIONS)
    del model, forward
    gc.collect()
    assert alive() is None and len(features_module._INFERENCE_FUNCTIONS) == cached_models - 1


@pytest.mark.parametrize("where", ["memory", "named file", "anonymous file"])
def test_output_rows_are_float16_until_a_value_is_beyond_its_range_then_float32(tmp_path, where):
    file = None if where == "memory" else tmp_path / "rows.npy"
    rows = OutputRows((5, 2, 3), file, anonymous=where == "anonymous file")
    assert rows.array.dtype == np.float16
    small = np.full((2, 2, 3), 0.1234567, np.float32)
    rows.write(0, small)
    rows.write(2, np.full((1, 2, 3), np.nan, np.float32))  # NaN is not out of range
    assert rows.array.dtype == np.float16
    rows.write(3, np.full((2, 2, 3), 1e6, np.float32))
    assert rows.array.dtype == np.float32
    np.testing.assert_array_equal(rows.array[:2], small.astype(np.float16).astype(np.float32))  # copied once
    assert np.isnan(rows.array[2]).all() and (rows.array[3:] == 1e6).all()
    if where == "named file":
        assert sorted(tmp_path.iterdir()) == [file]  # widened in place of the file, no temporaries left
        published = rows.publish(4, tmp_path / "final.npy")  # cut to 4 rows and moved
        assert sorted(tmp_path.iterdir()) == [tmp_path / "final.npy"]
        assert isinstance(published, np.memmap) and published.shape == (4, 2, 3) and not published.flags.writeable
        assert published.dtype == np.float32 and (published[3] == 1e6).all()
    else:
        assert list(tmp_path.iterdir()) == []  # in memory, or files whose names are gone
        assert rows.publish(4).shape == (4, 2, 3)


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


class _Steps(CancelToken):
    """Records the extraction's progress steps; cancels after ``cancel_at`` images when given."""

    def __init__(self, cancel_at: int | None = None) -> None:
        super().__init__()
        self.steps: list[int] = []
        self.cancel_at = cancel_at

    def on_step(self, stage, step, logs=None):
        self.steps.append(step)
        if self.cancel_at is not None and step >= self.cancel_at:
            self.cancel()


def test_a_pass_fed_rows_as_they_are_decoded_gives_the_features_of_one_pass(tmp_path):
    x = np.random.default_rng(2).integers(0, 255, (23, 32, 32, 3), dtype=np.uint8)
    model = _feature_model()
    whole = extract_features(model, x, batch_size=4)
    progress = _Steps()
    # 30 files listed, 23 decoded: rows arrive one at a time, as decoding writes them.
    with FeaturePass(model, 30, 4, progress, tmp_path) as feature_pass:
        for n_ready in range(1, 24):
            feature_pass.feed(x, n_ready)
        assert feature_pass.done == 20  # whole batches only, until the rows are all there
        features = feature_pass.finish(x, 23, tmp_path / "f.npy")
    np.testing.assert_array_equal(features, whole)
    assert features.dtype == np.float16 and isinstance(features, np.memmap)
    assert progress.steps == [4, 8, 12, 16, 20, 23]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy"]  # the scratch file is gone


def test_a_fed_pass_stops_at_a_cancel_and_leaves_no_files(tmp_path):
    x = np.zeros((12, 32, 32, 3), np.uint8)
    progress = _Steps(cancel_at=4)
    with pytest.raises(CancelledError), FeaturePass(_feature_model(), 12, 4, progress, tmp_path) as feature_pass:
        for n_ready in range(1, 13):
            feature_pass.feed(x, n_ready)
    assert progress.steps == [4] and list(tmp_path.iterdir()) == []
