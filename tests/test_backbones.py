"""The backbone registry: building, preprocessing inside the model, blocks, weights lookup."""

from __future__ import annotations

import socket

import keras
import numpy as np
import pytest

from conftest import MOBILENET_NOTOP, SHARED_WEIGHTS, needs_shared_weights
from tl_core.backbones import (
    BACKBONES,
    block_output_layer,
    build_base,
    build_feature_model,
    get_spec,
    list_blocks,
    preprocessing_layer,
    resolve_weights,
    set_trainable_blocks,
    split_at_block,
)
from tl_core.errors import ConfigError, WeightsUnavailableError

EXPECTED_BLOCKS = {"vgg16": 5, "mobilenet": 13, "mobilenetv2": 17, "efficientnetb0": 7, "resnet50": 16,
                   "efficientnetv2b0": 6, "efficientnetv2s": 6, "convnexttiny": 18}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_and_pools_to_its_feature_size(name):
    spec = get_spec(name)
    base = build_base(spec, resolve_weights(spec, "none"), 32)
    model = build_feature_model(spec, base, 32)
    out = model(np.full((2, 32, 32, 3), 128.0, np.float32), training=False)
    assert tuple(out.shape) == (2, spec.feature_dim)
    assert len(list_blocks(spec, base)) == EXPECTED_BLOCKS[name] == spec.n_blocks

    # Cut below the top 2 blocks (stage 2's activation cache): bottom then top is the whole backbone.
    bottom, top = split_at_block(spec, base, 2, 32)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    pre = preprocessing_layer(spec)
    whole = base(pre(pixels) if pre is not None else pixels, training=False)
    np.testing.assert_allclose(top(bottom(pixels, training=False), training=False), whole, rtol=1e-4, atol=1e-4)
    assert split_at_block(spec, base, -1, 32) is None and split_at_block(spec, base, spec.n_blocks, 32) is None
    # Earlier-layer features: the block 2 below the top, and a clear error past the bottom.
    assert build_feature_model(spec, base, 32, cut=2).output_shape[-1] <= spec.feature_dim
    with pytest.raises(ConfigError, match="blocks below the top"):
        block_output_layer(spec, base, spec.n_blocks)


def test_required_backbones_are_registered():
    assert {"vgg16", "mobilenet", "mobilenetv2", "efficientnetb0", "resnet50"} <= set(BACKBONES)
    with pytest.raises(ConfigError, match="Unknown backbone 'alexnet'.*mobilenet"):
        get_spec("alexnet")


@pytest.mark.parametrize(
    "name, reference",
    [
        ("vgg16", keras.applications.vgg16.preprocess_input),
        ("resnet50", keras.applications.resnet50.preprocess_input),
        ("mobilenet", keras.applications.mobilenet.preprocess_input),
        ("mobilenetv2", keras.applications.mobilenet_v2.preprocess_input),
    ],
)
def test_preprocessing_layer_matches_keras_preprocess_input(name, reference):
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    ours = np.asarray(preprocessing_layer(get_spec(name))(pixels))
    np.testing.assert_allclose(ours, reference(pixels.copy()), atol=1e-4)


def test_unfreezing_top_blocks_leaves_lower_layers_and_batchnorm_frozen():
    spec = get_spec("mobilenet")
    base = build_base(spec, resolve_weights(spec, "none"), 32)
    blocks = list_blocks(spec, base)
    set_trainable_blocks(spec, base, 2)
    cut = blocks[-2][1]
    for index, layer in enumerate(base.layers):
        if isinstance(layer, keras.layers.BatchNormalization) or index < cut:
            assert not layer.trainable, layer.name
    assert base.get_layer("conv_dw_12").trainable and base.get_layer("conv_pw_13").trainable
    assert not base.get_layer("conv_pw_11").trainable
    assert set_trainable_blocks(spec, base, 0) == 0 and not base.trainable
    n_all = set_trainable_blocks(spec, base, -1)
    assert n_all > set_trainable_blocks(spec, base, 2)
    with pytest.raises(ConfigError, match="has 13 blocks; cannot unfreeze 14"):
        set_trainable_blocks(spec, base, 14)


def test_weights_dir_is_searched_for_the_documented_file(tmp_path, monkeypatch):
    spec = get_spec("mobilenet")
    (tmp_path / "mobilenet_v1_1.0_224_imagenet_notop.weights.h5").write_bytes(b"fake")
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(tmp_path))
    resolved = resolve_weights(spec, "imagenet")
    assert resolved.keras_arg == str(tmp_path / "mobilenet_v1_1.0_224_imagenet_notop.weights.h5")
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(tmp_path / "elsewhere"))
    assert resolve_weights(spec, "imagenet").keras_arg == "imagenet"
    assert resolve_weights(spec, "none", seed=3).identity == "none-seed3"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_weights(spec, str(tmp_path / "missing.h5"))


def test_a_weights_file_of_another_architecture_is_a_clear_error(tmp_path):
    wrong = tmp_path / "vgg.weights.h5"
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(wrong)
    spec = get_spec("mobilenet")
    with pytest.raises(ConfigError, match="does not fit MobileNet v1"):
        build_base(spec, resolve_weights(spec, str(wrong)), 32)


def _online() -> bool:
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_offline_imagenet_without_local_weights_names_tl_weights_dir(monkeypatch, tmp_path):
    if _online():
        pytest.skip("this machine is online: Keras would download the weights instead of failing")
    monkeypatch.delenv("TL_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    spec = get_spec("mobilenetv2")
    with pytest.raises(WeightsUnavailableError, match="TL_WEIGHTS_DIR") as info:
        build_base(spec, resolve_weights(spec, "imagenet"), 96)
    assert "mobilenet_v2_1.0_224_imagenet_notop.weights.h5" in str(info.value)


def test_tl_offline_never_downloads_and_says_where_weights_go(monkeypatch, tmp_path):
    """TL_OFFLINE=1 (a machine that must not download): imagenet without a local file is refused at
    once, online or not; a file in TL_WEIGHTS_DIR or in Keras' cache is still used."""
    monkeypatch.setenv("TL_OFFLINE", "1")
    monkeypatch.delenv("TL_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    spec = get_spec("vgg16")
    with pytest.raises(WeightsUnavailableError, match="TL_WEIGHTS_DIR") as info:
        resolve_weights(spec, "imagenet")
    assert "vgg16_imagenet_notop.weights.h5" in str(info.value)
    cached = tmp_path / "keras" / "models" / spec.weights_files[-1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"as Keras downloaded it")
    assert resolve_weights(spec, "imagenet").keras_arg == "imagenet"  # Keras reads its own cache
    (tmp_path / spec.weights_files[0]).write_bytes(b"fake")
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(tmp_path))
    assert resolve_weights(spec, "imagenet").keras_arg == str(tmp_path / spec.weights_files[0])


@needs_shared_weights
def test_real_mobilenet_weights_load_from_tl_weights_dir(monkeypatch):
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(SHARED_WEIGHTS))
    spec = get_spec("mobilenet")
    resolved = resolve_weights(spec, "imagenet")
    assert resolved.keras_arg == str(MOBILENET_NOTOP)
    base = build_base(spec, resolved, 64)
    random_base = build_base(spec, resolve_weights(spec, "none"), 64)
    # The real first-layer kernels are not the random initialisation.
    assert not np.allclose(base.get_layer("conv1").get_weights()[0], random_base.get_layer("conv1").get_weights()[0])


@pytest.mark.parametrize("weights, shown", [
    ("imagenet", "imagenet"), (None, "none"), ("ImageNet (Keras download)", "ImageNet (Keras download)"),
    ("ImageNet (/srv/models/mobilenet.h5)", "ImageNet (mobilenet.h5)"),
    ("ImageNet (/srv/a(1)/w.h5)", "ImageNet (w.h5)"),  # brackets in a folder's name
    ("file /home/me/my models/w.weights.h5", "file w.weights.h5"), ("C:\\w\\x.h5", "x.h5"),
])
def test_weights_are_shown_without_the_servers_folders(weights, shown):
    from tl_core.backbones import weights_label

    assert weights_label(weights) == shown


@pytest.mark.parametrize("name", ["efficientnetv2b0", "efficientnetv2s", "convnexttiny"])
def test_a_stronger_backbone_trains_exports_and_loads_its_weights_from_the_documented_file(name, tmp_path, store,
                                                                                         monkeypatch):
    """Random weights here (no download): build, a saved weights file under its documented name in
    TL_WEIGHTS_DIR, a feature-extractor run and its checked .keras export."""
    from conftest import make_toy_folder

    from tl_core.config import TrainConfig
    from tl_core.export import export_run
    from tl_core.runner import run_training

    spec = get_spec(name)
    base = build_base(spec, resolve_weights(spec, "none"), 32, seed=3)
    (tmp_path / "w").mkdir()
    base.save_weights(tmp_path / "w" / spec.weights_files[0])
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(tmp_path / "w"))
    again = build_base(spec, resolve_weights(spec, "imagenet"), 32)  # found on disk, never downloaded
    for a, b in zip(base.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)

    folder = make_toy_folder(tmp_path / "toy", n_per_class=6)
    run = run_training(folder, TrainConfig(backbone=name, weights="none", image_size=32, batch_size=8,
                                           precision="float32"), store=store)
    assert run["status"] == "succeeded", run["error"]
    result = export_run(run, "keras", tmp_path / "model.keras")
    assert result["passed"] and result["agreement"] == 1.0
