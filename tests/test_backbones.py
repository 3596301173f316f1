"""The backbone registry: building, preprocessing inside the model, blocks, weights lookup."""

from __future__ import annotations

import re
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
    feature_slices,
    get_spec,
    list_blocks,
    preprocessing_layer,
    resolve_weights,
    set_trainable_blocks,
    split_at_block,
    truncate_base,
)
from tl_core.errors import ConfigError, WeightsUnavailableError

EXPECTED_BLOCKS = {"vgg16": 5, "mobilenet": 13, "mobilenetv2": 17, "efficientnetb0": 7, "resnet50": 16,
                   "efficientnetv2b0": 6, "efficientnetv2s": 6, "convnexttiny": 18, "dinov2_small": 12}


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
        ("dinov2_small", lambda x: keras.applications.imagenet_utils.preprocess_input(x, mode="torch")),
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


@pytest.mark.parametrize(("backbone", "other", "size"), [("mobilenet", "VGG16", 32), ("dinov2_small", "MobileNet", 56)])
def test_a_weights_file_of_another_architecture_is_a_clear_error(backbone, other, size, tmp_path):
    wrong = tmp_path / "other.weights.h5"
    getattr(keras.applications, other)(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(wrong)
    spec = get_spec(backbone)
    with pytest.raises(ConfigError, match=f"does not fit {re.escape(spec.title)}"):
        build_base(spec, resolve_weights(spec, str(wrong)), size)


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


# --------------------------------------------------------------------------- DINOv2 ViT-S/14 (KerasHub)
# Random weights at 56 px (4 x 4 patches of 14 px): 224 px costs too much on a CPU for the suite.


def _keras_hub_dinov2(size: int, seed: int):
    """KerasHub's own DINOv2 ViT-S/14 backbone, random weights: the reference the app's model must equal."""
    import keras_hub

    from tl_core.vit import DINOV2_SMALL

    keras.utils.set_random_seed(seed)
    return keras_hub.models.DINOV2Backbone(image_shape=(size, size, 3), **DINOV2_SMALL)


def test_dinov2_base_is_embeddings_transformer_blocks_and_a_patch_token_map():
    spec = get_spec("dinov2_small")
    base = build_base(spec, resolve_weights(spec, "none"), 56)
    names = [layer.name for layer in base.layers]
    assert names == ["images", "dinov2_embeddings", *(f"dinov2_block_{i}" for i in range(12)), "dinov2_layernorm",
                     "dinov2_patch_tokens", "dinov2_map"]
    assert tuple(base.output.shape) == (None, 4, 4, 384)
    assert [name for name, _ in list_blocks(spec, base)] == names[2:14]
    # A size that is not a multiple of 14 is resized inside the model to the nearest one (50 -> 56 px).
    odd = build_base(spec, resolve_weights(spec, "none"), 50)
    assert odd.layers[1].name == "dinov2_resize" and tuple(odd.output.shape) == (None, 4, 4, 384)
    # Earlier features: the block's patch tokens as a map, cut or side by side with the others.
    assert block_output_layer(spec, base, 2) == "dinov2_block_9"
    assert tuple(truncate_base(spec, base, 2).output.shape) == (None, 4, 4, 384)
    assert feature_slices(spec, base, [0, 2, 4]) == {0: slice(0, 384), 2: slice(384, 768), 4: slice(768, 1152)}
    assert build_feature_model(spec, base, 56, cut=[0, 2, 4]).output_shape == (None, 1152)


def test_dinov2_unfreezes_transformer_blocks_from_the_top():
    spec = get_spec("dinov2_small")
    base = build_base(spec, resolve_weights(spec, "none"), 56)
    n_two = set_trainable_blocks(spec, base, 2)
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert trainable == {"dinov2_block_10", "dinov2_block_11", "dinov2_layernorm"}
    assert n_two == len(base.trainable_weights) and 0 < n_two < set_trainable_blocks(spec, base, -1)
    with pytest.raises(ConfigError, match="has 12 blocks; cannot unfreeze 13"):
        set_trainable_blocks(spec, base, 13)


def test_dinov2_features_are_kerashub_dinov2_mean_patch_tokens_with_weights_from_tl_weights_dir(tmp_path, monkeypatch):
    """A KerasHub preset folder saved from a random DINOV2Backbone, put in TL_WEIGHTS_DIR under the
    documented name, is found and loaded: the app's features are that network's mean patch token
    (its final LayerNorm applied, the CLS token left out), its preprocessing inside the model."""
    spec = get_spec("dinov2_small")
    reference = _keras_hub_dinov2(56, seed=5)
    reference.save_to_preset(str(tmp_path / "w" / "dinov2_small"))
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(tmp_path / "w"))
    resolved = resolve_weights(spec, "imagenet")
    assert resolved.keras_arg == str(tmp_path / "w" / spec.weights_files[0])  # never downloaded
    model = build_feature_model(spec, build_base(spec, resolved, 56, seed=1), 56)

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 56, 56, 3)).astype(np.float32)
    normalised = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    tokens = np.asarray(reference({"images": normalised.astype(np.float32)}, training=False))
    np.testing.assert_allclose(model(pixels, training=False), tokens[:, 1:].mean(axis=1), rtol=1e-4, atol=1e-4)
    # The preset folder itself as the weights, and the weights file alone under its other name.
    again = build_base(spec, resolve_weights(spec, str(tmp_path / "w" / "dinov2_small")), 56)
    (tmp_path / "w" / spec.weights_files[0]).rename(tmp_path / "w" / spec.weights_files[-1])
    alone = build_base(spec, resolve_weights(spec, "imagenet"), 56)
    for a, b, c in zip(model.get_layer("dinov2_small").get_weights(), again.get_weights(), alone.get_weights()):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_dinov2_classifier_saves_loads_in_safe_mode_without_this_app_and_explains_on_the_token_grid(tmp_path):
    import subprocess
    import sys

    from tl_core.gradcam import grad_cam

    spec = get_spec("dinov2_small")
    features = build_feature_model(spec, build_base(spec, resolve_weights(spec, "none"), 56, seed=2), 56)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(features.output)
    model = keras.Model(features.input, outputs)
    pixels = np.random.default_rng(1).uniform(0, 255, (3, 56, 56, 3)).astype(np.float32)
    expected = model.predict(pixels, verbose=0)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", pixels)
    # A fresh process that never imports tl_core: standard Keras layers and KerasHub's, nothing custom.
    code = (f"import numpy as np, keras; m = keras.saving.load_model({str(tmp_path / 'm.keras')!r}, safe_mode=True); "
            f"np.save({str(tmp_path / 'y.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)

    cams, probabilities = grad_cam(model, pixels)
    assert cams.shape == (3, 4, 4)  # one value per patch token
    assert np.allclose(cams.reshape(3, -1).max(axis=1), 1.0) and cams.min() >= 0.0
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_dinov2_feature_extractor_run_learns_and_exports(tmp_path, store):
    from conftest import make_toy_folder

    from tl_core.config import TrainConfig
    from tl_core.export import export_run
    from tl_core.runner import run_training

    folder = make_toy_folder(tmp_path / "toy", n_per_class=8, size=56)
    run = run_training(folder, TrainConfig(backbone="dinov2_small", weights="none", image_size=56, batch_size=8,
                                           precision="float32"), store=store)
    assert run["status"] == "succeeded", run["error"]
    assert run["metrics"]["test_accuracy"] >= 0.6  # chance is 1/3: random ViT features still see colour
    result = export_run(run, "keras", tmp_path / "model.keras")
    assert result["passed"] and result["agreement"] == 1.0


def test_dinov2_offline_without_the_preset_names_the_folder_and_tl_weights_dir(monkeypatch, tmp_path):
    try:
        socket.create_connection(("api.kaggle.com", 443), timeout=3).close()
        pytest.skip("this machine is online: KerasHub would download the preset instead of failing")
    except OSError:
        pass
    monkeypatch.delenv("TL_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    spec = get_spec("dinov2_small")
    with pytest.raises(WeightsUnavailableError, match="TL_WEIGHTS_DIR") as info:
        build_base(spec, resolve_weights(spec, "imagenet"), 56)
    assert "'dinov2_small' preset folder" in str(info.value) and "dinov2_small/model.weights.h5" in str(info.value)
    monkeypatch.setenv("TL_OFFLINE", "1")  # refused at once, before any model is built
    with pytest.raises(WeightsUnavailableError, match="dinov2_small.weights.h5"):
        resolve_weights(spec, "imagenet")


def test_dinov2_domain_measurement_pools_its_token_grid_and_has_no_imagenet_classifier(tmp_path, monkeypatch):
    """The advisor on DINOv2 with its weights in TL_WEIGHTS_DIR: no ImageNet classifier to ask (said in a
    note), no BatchNormalization statistics; LogME of the mean patch tokens of the last and earlier blocks."""
    from tl_core.advisor import measure_domain

    _keras_hub_dinov2(224, seed=3).save_to_preset(str(tmp_path / "w" / "dinov2_small"))
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(tmp_path / "w"))
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 12)
    x = rng.integers(0, 80, (24, 224, 224, 3)).astype(np.uint8)
    x[y == 1, 60:160, 60:160] = (230, 40, 40)  # one class has a red square
    measured = measure_domain(x, y, "dinov2_small", "imagenet", batch_size=12)
    assert measured["parts"]["recognition"] is None and measured["parts"]["statistics"] is None
    assert any("no ImageNet classifier" in note for note in measured["notes"])
    assert set(measured["layers"]) == {0, 2, 4, 6} and all(np.isfinite(v) for v in measured["layers"].values())
    assert 0.0 <= measured["similarity"] <= 1.0
