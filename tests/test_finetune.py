"""Two-stage fine-tuning and training from scratch, with real Keras models on a toy set.

Random-init VGG16 is used because its random features still separate the toy classes (random
MobileNets collapse to near-zero features without pretrained weights).
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import make_toy_folder
from tl_core import backbones, finetune
from tl_core.data import arrays as data_module
from tl_core import features as features_module
from tl_core.config import DataConfig, TrainConfig
from tl_core.data import decode_dataset, load_images, split_dataset
from tl_core.features import extract_features
from tl_core.finetune import train_scratch, train_two_stage
from tl_core.progress import NullProgress


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    decoded = decode_dataset(load_images(make_toy_folder(tmp_path_factory.mktemp("ft"), n_per_class=24)), 32)
    splits = split_dataset(decoded, DataConfig(seed=0))
    return decoded, splits


def _setup(name="vgg16", inference_mode=True):
    spec = backbones.get_spec(name)
    base = backbones.build_base(spec, backbones.resolve_weights(spec, "none"), 32)
    return spec, base, backbones.build_feature_model(spec, base, 32, inference_mode)


def _accuracy(model, x, y):
    return float((model.predict(x.astype("float32"), verbose=0).argmax(1) == y).mean())


def _two_stage(toy, cache_dir=None, **overrides):
    decoded, splits = toy
    spec, base, feature_model = _setup()
    data = {part: (decoded.x[idx], decoded.y[idx]) for part, idx in splits.items()}
    features = {part: extract_features(feature_model, x) for part, (x, _) in data.items()}
    settings = dict(
        backbone="vgg16", strategy="finetune", epochs=25, fine_tune_epochs=2, unfreeze_blocks=1,
        batch_size=8, dense_units=32, patience=25, start_from_probe=False,
    )
    config = TrainConfig(**{**settings, **overrides})
    kernels = {name: base.get_layer(name).get_weights()[0].copy() for name in ("block4_conv3", "block5_conv3")}
    result = train_two_stage(
        feature_model, data, 3, config=config, progress=NullProgress(), features=features,
        unfreeze=lambda n: backbones.set_trainable_blocks(spec, base, n),
        # With a folder for its cache, stage 2 trains on cached activations; without, end to end.
        split=(lambda n: backbones.split_at_block(spec, base, n, 32)) if cache_dir is not None else None,
        cache_dir=cache_dir,
    )
    return result, base, data, kernels


def test_two_stage_learns_and_stage2_unfreezes_only_the_top_block(toy, tmp_path, monkeypatch):
    scratch = []

    def create_npy(path, shape, dtype):  # the real one, recorded
        scratch.append((path, shape, np.dtype(dtype)))
        return data_module.create_npy(path, shape, dtype)

    monkeypatch.setattr(features_module, "create_npy", create_npy)
    result, base, data, kernels = _two_stage(toy, cache_dir=tmp_path)
    assert set(result.history) == {"stage1", "stage2"}
    assert len(result.history["stage2"]) == 2
    assert "cached ConvNet features" in result.notes[0]
    # Stage 2 trained on activations in scratch files on disk (VGG16's block5 input at 32 px: 2 x 2 x 512),
    # gone once training is over.
    assert "on disk, float16" in result.notes[1]
    assert [(p.parent, shape, dtype) for p, shape, dtype in scratch] == [
        (tmp_path, (len(data["train"][0]), 2, 2, 512), np.float16),
        (tmp_path, (len(data["val"][0]), 2, 2, 512), np.float16),
    ]
    assert list(tmp_path.iterdir()) == []
    assert base.get_layer("block5_conv3").trainable and not base.get_layer("block4_conv3").trainable
    np.testing.assert_array_equal(base.get_layer("block4_conv3").get_weights()[0], kernels["block4_conv3"])
    assert _accuracy(result.model, *data["test"]) >= 0.7  # chance is 1/3


def test_a_harmful_stage2_gives_back_the_stage1_model(toy):
    # A learning rate of 0.5 wrecks the unfrozen block: stage 2 trains (its weights move), its
    # validation loss is worse than stage 1's, and the stage-1 weights come back.
    result, base, data, kernels = _two_stage(toy, fine_tune_learning_rate=0.5)
    assert "the stage-1 model was kept" in result.notes[-2]
    assert result.notes[-1].startswith("The saved model's weights come from stage 1, epoch ")
    assert min(e["val_loss"] for e in result.history["stage2"]) > min(e["val_loss"] for e in result.history["stage1"])
    np.testing.assert_array_equal(base.get_layer("block5_conv3").get_weights()[0], kernels["block5_conv3"])
    assert _accuracy(result.model, *data["test"]) >= 0.7


def test_batchnorm_statistics_stay_put_in_stage2(toy):
    decoded, splits = toy
    spec, base, feature_model = _setup("mobilenet")
    data = {part: (decoded.x[idx], decoded.y[idx]) for part, idx in splits.items()}
    features = {part: extract_features(feature_model, x) for part, (x, _) in data.items()}
    bn = base.get_layer("conv_pw_13_bn")
    before = [w.copy() for w in bn.get_weights()]
    config = TrainConfig(strategy="finetune", epochs=1, fine_tune_epochs=1, unfreeze_blocks=-1, batch_size=8)
    train_two_stage(feature_model, data, 3, config=config, progress=NullProgress(), features=features,
                    unfreeze=lambda n: backbones.set_trainable_blocks(spec, base, n))
    assert base.get_layer("conv_pw_13").trainable
    for old, new in zip(before, bn.get_weights()):
        np.testing.assert_array_equal(old, new)  # gamma, beta, moving mean and variance


def test_augmentation_runs_stage1_end_to_end(toy):
    decoded, splits = toy
    spec, base, feature_model = _setup()
    data = {part: (decoded.x[idx], decoded.y[idx]) for part, idx in splits.items()}
    features = {part: extract_features(feature_model, x) for part, (x, _) in data.items()}
    config = TrainConfig(backbone="vgg16", epochs=1, fine_tune_epochs=0, augment=True, batch_size=8, start_from_probe=False)
    result = train_two_stage(feature_model, data, 3, config=config, progress=NullProgress(), features=features,
                             unfreeze=lambda n: backbones.set_trainable_blocks(spec, base, n))
    assert "augmentation" in result.notes[0] and list(result.history) == ["stage1"]
    assert any(layer.name == "augmentation" for layer in result.model.layers)


def test_scratch_trains_every_layer_and_fits_the_training_set(toy):
    decoded, splits = toy
    spec, base, feature_model = _setup("vgg16", inference_mode=False)
    first_kernel = base.get_layer("block1_conv1").get_weights()[0].copy()
    data = {part: (decoded.x[idx], decoded.y[idx]) for part, idx in splits.items()}
    config = TrainConfig(backbone="vgg16", strategy="scratch", epochs=8, batch_size=8, dense_units=32, patience=8)
    result = train_scratch(feature_model, data, 3, config=config, progress=NullProgress())
    history = result.history["scratch"]
    assert not np.allclose(base.get_layer("block1_conv1").get_weights()[0], first_kernel)
    assert history[-1]["loss"] < history[0]["loss"] * 0.8
    assert _accuracy(result.model, *data["train"]) > 0.6  # chance is 1/3


def test_stage2_caches_only_what_fits_on_disk_with_a_margin_and_under_the_limit(tmp_path, monkeypatch):
    mb = 1024**2
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=1536 * mb))
    assert finetune._no_room_for_cache(tmp_path, 400 * mb) is None
    refused = finetune._no_room_for_cache(tmp_path, 600 * mb)  # 1 GB of the free space stays free
    assert refused == f"its activation cache would take 600 MB and {tmp_path} has 1,536 MB free"
    monkeypatch.setenv("TL_ACTIVATION_CACHE_MB", "100")
    assert "(limit TL_ACTIVATION_CACHE_MB=100)" in finetune._no_room_for_cache(tmp_path, 400 * mb)


def test_the_notes_say_which_stage_and_epoch_the_saved_weights_come_from(toy):
    result, *_ = _two_stage(toy, epochs=4, fine_tune_epochs=2, patience=4)
    kept = [n for n in result.notes if n.startswith("The saved model's weights come from")]
    assert len(kept) == 1
    stage1, stage2 = result.history["stage1"], result.history["stage2"]
    if any("the stage-1 model was kept" in n for n in result.notes):
        stage, history = "stage 1", stage1
    else:
        stage, history = "stage 2", stage2
    best = min(history, key=lambda e: e["val_loss"])
    assert f"come from {stage}, epoch {best['epoch']} of {len(history)}" in kept[0]

    from tl_core.charts import stage_curves

    figure = stage_curves({"stage1": stage1, "stage2": stage2})
    boundaries = [shape.x0 for shape in figure.layout.shapes]
    assert boundaries == [len(stage1) + 0.5] * 2  # a dashed line on both panels where stage 2 starts


def test_lp_ft_starts_stage_2_from_the_linear_probe_and_its_validation_loss(toy):
    """With start_from_probe, stage 1 is the softmax probe folded into one Dense layer: before stage 2
    the model predicts what the probe predicts, and stage 2 starts at the probe's validation loss."""
    from sklearn.metrics import log_loss

    from tl_core.heads import LinearHead

    decoded, splits = toy
    # No stage 2: the model is the probe, refitted on training + validation at its C (the feature
    # extractor's solution); calibration gets the validation probabilities of the probe before that.
    result, base, data, _ = _two_stage(toy, start_from_probe=True, unfreeze_blocks=0)
    spec, _, feature_model = _setup()
    features = {part: extract_features(result.model.get_layer(index=1), x) for part, (x, _) in data.items()}
    probe = LinearHead("softmax", seed=TrainConfig().seed).fit(features["train"], data["train"][1],
                                                               features["val"], data["val"][1])
    refit = LinearHead("softmax", C=probe.C_, seed=TrainConfig().seed).fit(
        np.concatenate([features["train"], features["val"]]), np.concatenate([data["train"][1], data["val"][1]]))
    np.testing.assert_allclose(result.model.predict(data["test"][0].astype("float32"), verbose=0),
                               refit.predict_proba(features["test"]), atol=2e-4)
    np.testing.assert_allclose(result.held_out_val, probe.predict_proba(features["val"]), atol=2e-4)
    assert result.history["stage1"] == [] and "linear probe (LP-FT)" in result.notes[0]
    assert "refitted at C=" in result.notes[-2]
    assert result.notes[-1] == "The saved model's weights come from stage 1, the linear probe."

    # With stage 2: its starting validation loss is the probe's (log loss on the validation split).
    result, *_ = _two_stage(toy, start_from_probe=True, fine_tune_epochs=2)
    start = next(n for n in result.notes if n.startswith("Stage 2 starts at the probe's validation loss"))
    expected = log_loss(data["val"][1], probe.predict_proba(features["val"]), labels=[0, 1, 2])
    assert float(start.rsplit(" ", 1)[1].rstrip(".")) == pytest.approx(expected, abs=2e-3)
    assert len(result.history["stage2"]) >= 1
