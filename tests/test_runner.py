"""A whole run: data -> strategy -> metrics -> stored model, and how runs fail or stop."""

from __future__ import annotations

import dataclasses
import json
import shutil

import keras
import numpy as np
import pytest

from conftest import CLIPART8, SHARED_WEIGHTS, make_toy_folder, needs_clipart8, needs_shared_weights
from tl_core import backbones
from tl_core.config import DataConfig, TrainConfig, candidate_cuts
from tl_core.data import decode_dataset, load_images
from tl_core.errors import ConfigError
from tl_core.features import extract_features
from tl_core.progress import NullProgress
from tl_core.runner import run_training

# float32: these tests compare numbers between recipes and passes (precision "auto" may pick bfloat16 for the
# frozen ConvNet on a CPU that has it; tests/test_precision.py covers that path).
FAST = dict(backbone="vgg16", weights="none", image_size=32, batch_size=8, precision="float32")


@pytest.mark.parametrize("head", ["softmax", "ovr", "svm"])
def test_feature_extractor_run_is_stored_and_its_model_predicts_like_the_head(head, toy_folder, store):
    run = run_training(toy_folder, TrainConfig(strategy="feature_extractor", head=head, **FAST), store=store)
    assert run["status"] == "succeeded", run["error"]
    metrics = run["metrics"]
    assert metrics["test_accuracy"] >= 0.8  # chance is 1/3
    assert set(metrics["timing"]) >= {"decode", "extract", "head"}
    assert metrics["split"] == {"train": 30, "val": 6, "test": 6}
    assert run["dataset"]["n_images"] == 42 and run["dataset"]["per_class"]["red"] == 14

    # The stored .keras model takes raw pixels and reproduces the test accuracy on the test split.
    model = keras.saving.load_model(run["model_path"], safe_mode=True)
    decoded = decode_dataset(load_images(toy_folder), 32)
    split = (store.run_dir(run["id"]) / "split.json").read_text()
    test_names = __import__("json").loads(split)["test"]
    idx = [decoded.names.index(name) for name in test_names]
    predicted = model.predict(decoded.x[idx].astype("float32"), verbose=0).argmax(1)
    assert float((predicted == decoded.y[idx]).mean()) == pytest.approx(metrics["test_accuracy"])


def test_finetune_run_records_both_stages_epoch_by_epoch(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=24)
    config = TrainConfig(strategy="finetune", epochs=20, fine_tune_epochs=1, unfreeze_blocks=1, dense_units=32, start_from_probe=False, **FAST)
    run = run_training(root, config, store=store)
    assert run["status"] == "succeeded", run["error"]
    assert len(run["epochs"]["stage1"]) == len(run["metrics"]["history"]["stage1"]) >= 1
    assert len(run["epochs"]["stage2"]) == 1
    assert run["metrics"]["test_accuracy"] >= 0.6


def test_cached_stages_train_what_the_end_to_end_recipe_trains(tmp_path, store):
    """Stage 1 on cached features and stage 2 on cached cut activations = both stages end to end."""
    root = make_toy_folder(tmp_path / "toy", n_per_class=24)
    config = TrainConfig(strategy="finetune", epochs=3, fine_tune_epochs=2, unfreeze_blocks=1, dense_units=16, start_from_probe=False, **FAST)
    cached = run_training(root, config, store=store)
    canonical = run_training(root, dataclasses.replace(config, cache_stages=False), store=store)
    assert cached["status"] == canonical["status"] == "succeeded", (cached["error"], canonical["error"])
    notes = " ".join(cached["metrics"]["notes"])
    assert "cached ConvNet features" in notes and "Stage 2 trained on activations cached" in notes
    assert "stage caching is off" in " ".join(canonical["metrics"]["notes"])
    # Stage 1: the same computation in another order of operations.
    for a, b in zip(cached["metrics"]["history"]["stage1"], canonical["metrics"]["history"]["stage1"], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
    # Stage 2 also rounds the cached activations to float16, and Adam's first steps (about the
    # learning rate per weight, whatever the gradient's size) carry such differences along.
    stage1_end = cached["metrics"]["history"]["stage1"][-1]["val_loss"]
    for a, b in zip(cached["metrics"]["history"]["stage2"], canonical["metrics"]["history"]["stage2"], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=0.05)
        assert max(a["val_loss"], b["val_loss"]) < stage1_end  # both fine-tune, not just one
    assert cached["metrics"]["test_accuracy"] == pytest.approx(canonical["metrics"]["test_accuracy"], abs=0.06)
    assert set(cached["metrics"]["timing"]) >= {"extract", "cache", "stage1", "stage2"}


def _test_split(root, store, run):
    decoded = decode_dataset(load_images(root), 32)
    names = json.loads((store.run_dir(run["id"]) / "split.json").read_text())["test"]
    idx = [decoded.names.index(name) for name in names]
    return decoded.x[idx].astype("float32"), decoded.y[idx]


def test_gpu_acceleration_path_trains_and_saves_a_float32_output_model(tmp_path, store, monkeypatch):
    """Mixed precision + XLA, forced on this CPU (on a GPU they switch on by themselves)."""
    monkeypatch.setenv("TL_FORCE_ACCELERATION", "1")
    root = make_toy_folder(tmp_path / "toy", n_per_class=24)
    for config in (TrainConfig(strategy="feature_extractor", **FAST),
                   TrainConfig(strategy="finetune", epochs=20, fine_tune_epochs=1, unfreeze_blocks=1, dense_units=32, start_from_probe=False, **FAST)):
        run = run_training(root, config, store=store)
        assert run["status"] == "succeeded", run["error"]
        assert run["metrics"]["acceleration"] == ["mixed precision (float16 compute, float32 weights)", "XLA compilation"]
        assert run["metrics"]["test_accuracy"] >= 0.6  # chance is 1/3
        model = keras.saving.load_model(run["model_path"], safe_mode=True)
        assert model(np.zeros((1, 32, 32, 3), np.float32)).dtype == "float32"
        assert '"mixed_float16"' not in json.dumps(model.get_config())  # saved at full precision
        x_test, y_test = _test_split(root, store, run)
        accuracy = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())
        assert accuracy == pytest.approx(run["metrics"]["test_accuracy"], abs=0.1)
    assert keras.mixed_precision.global_policy().name == "float32"  # reset for whatever runs next
    monkeypatch.delenv("TL_FORCE_ACCELERATION")
    run = run_training(root, TrainConfig(strategy="feature_extractor", **FAST), store=store)
    assert run["metrics"]["acceleration"] == []  # a CPU: off


class _Events(NullProgress):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_stage_start(self, stage, total):
        self.events.append(("start", stage))

    def on_step(self, stage, step, logs=None):
        self.events.append(("step", stage, logs))

    def on_stage_end(self, stage, logs=None):
        self.events.append(("end", stage))

    def of(self, stage: str) -> list[tuple]:
        return [event for event in self.events if event[1] == stage]


def test_extraction_overlaps_decoding_and_the_features_are_never_computed_twice(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=10)
    (root / "red" / "broken.png").write_bytes(b"not an image")
    config = TrainConfig(strategy="feature_extractor", **FAST)
    cold = _Events()
    run = run_training(root, config, store=store, progress=cold)
    assert run["status"] == "succeeded", run["error"]
    assert run["metrics"]["test_accuracy"] >= 0.8  # chance is 1/3
    # From files, the ConvNet ran on the first batches while the rest were still being decoded.
    first_extract = next(i for i, e in enumerate(cold.events) if e[:2] == ("step", "extract"))
    assert first_extract < cold.events.index(("end", "decode"))
    # Its features are those of one pass over the decoded pixels, and cached under their key.
    decoded = decode_dataset(load_images(root), 32, cache_dir=store.cache_dir / "decoded")
    assert len(decoded.x) == 30
    spec = backbones.get_spec("vgg16")
    model = backbones.build_feature_model(spec, backbones.build_base(spec, backbones.resolve_weights(
        spec, "none", config.seed), 32, config.seed), 32, cut=candidate_cuts(spec.n_blocks))  # auto: every candidate
    cached = sorted((store.cache_dir / "features").iterdir())
    assert len(cached) == 1  # no scratch file left
    np.testing.assert_allclose(np.load(cached[0]), extract_features(model, decoded.x, 8), rtol=1e-3, atol=1e-4)

    def rerun(folder):
        events = _Events()
        again = run_training(folder, config, store=store, progress=events)
        assert again["status"] == "succeeded", again["error"]
        assert again["metrics"]["test_accuracy"] == run["metrics"]["test_accuracy"]
        return events

    # Pixels cached: extraction reads the features' cache.
    warm = rerun(root)
    assert warm.of("extract")[1] == ("step", "extract", {"cached": 1.0})
    # The same files uploaded again (new folder, new times): decoded again, the features read from the
    # cache; known before decoding when every file decodes.
    shutil.copytree(root, tmp_path / "again", copy_function=shutil.copy)
    (tmp_path / "again" / "red" / "broken.png").unlink()
    again = rerun(tmp_path / "again")
    assert ("step", "decode", {"cached": 1.0}) not in again.events
    assert again.of("extract") == [("start", "extract"), ("step", "extract", {"cached": 1.0}), ("end", "extract")]
    # With a file that fails to decode, that is known after decoding: the cached features still stand.
    shutil.copytree(root, tmp_path / "third", copy_function=shutil.copy)
    third = rerun(tmp_path / "third")
    assert ("step", "extract", {"cached": 1.0}) in third.events
    assert len(list((store.cache_dir / "features").iterdir())) == 1


def test_bad_images_are_skipped_and_the_run_goes_on(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=8)
    (root / "red" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a full jpeg")
    (root / "blue" / "empty.png").write_bytes(b"")
    run = run_training(root, TrainConfig(**FAST), store=store)
    assert run["status"] == "succeeded", run["error"]
    skipped = {s["file"] for s in run["dataset"]["skipped"]}
    assert skipped == {"red/corrupt.jpg", "blue/empty.png"}
    assert run["dataset"]["n_images"] == 24


def test_a_class_too_small_marks_the_run_failed_with_the_reason(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=6)
    for path in sorted((root / "green").iterdir())[1:]:
        path.unlink()
    run = run_training(root, TrainConfig(**FAST), store=store)
    assert run["status"] == "failed"
    assert "Class 'green' has 1 distinct usable image(s)" in run["error"]
    assert store.get_run(run["id"])["status"] == "failed"


def test_invalid_settings_are_refused_before_anything_is_stored(toy_folder, store):
    with pytest.raises(ConfigError, match="Unknown strategy 'magic'"):
        run_training(toy_folder, TrainConfig(strategy="magic"), store=store)
    with pytest.raises(ConfigError, match="image_size is 8"):
        run_training(toy_folder, TrainConfig(image_size=8), store=store)
    assert store.list_runs() == []


class StopAfterFirstEpoch(NullProgress):
    def __init__(self):
        self.epochs = 0

    def on_step(self, stage, step, logs=None):
        if stage == "stage1" and logs is not None:
            self.epochs += 1

    def should_stop(self):
        return self.epochs >= 1


def test_cancelling_stops_within_an_epoch_and_keeps_what_was_done(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=8)
    config = TrainConfig(strategy="finetune", epochs=30, augment=True, start_from_probe=False, **FAST)
    run = run_training(root, config, store=store, progress=StopAfterFirstEpoch())
    assert run["status"] == "cancelled"
    assert len(run["epochs"]["stage1"]) == 1  # 30 were allowed
    assert run["dataset"]["n_images"] == 24


@needs_shared_weights
@needs_clipart8
def test_real_transfer_beats_random_features_on_clipart8(monkeypatch, store):
    """The acceptance figure: ImageNet MobileNet features + softmax on 559 clip-art images."""
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(SHARED_WEIGHTS))
    config = TrainConfig(backbone="mobilenet", strategy="feature_extractor", head="softmax", weights="imagenet")
    run = run_training(CLIPART8, config, DataConfig(), store=store)
    assert run["status"] == "succeeded", run["error"]
    assert run["metrics"]["test_accuracy"] >= 0.65  # 8 classes; the largest is 21% of the images
    assert len(run["dataset"]["skipped"]) == 4  # the four 168-megapixel drawings
    assert run["metrics"]["weights"] == "ImageNet (mobilenet_v1_1.0_224_imagenet_notop.weights.h5)"  # no server folder


def test_feature_extractor_from_an_earlier_block(toy_folder, store):
    run = run_training(toy_folder, TrainConfig(strategy="feature_extractor", feature_cut=2, **FAST), store=store)
    assert run["status"] == "succeeded", run["error"]
    assert run["metrics"]["test_accuracy"] >= 0.8  # chance is 1/3
    model = keras.saving.load_model(run["model_path"], safe_mode=True)
    assert model.get_layer("vgg16_cut2").layers[-1].name == "block3_pool"  # 2 of VGG16's 5 blocks cut off
    assert model.get_layer("head_logits").get_weights()[0].shape == (256, 3)  # block 3 has 256 channels
    with pytest.raises(ConfigError, match="feature extractor only"):
        TrainConfig(strategy="finetune", feature_cut=2, **FAST).validate()
    with pytest.raises(ConfigError, match="feature_cut must be 0-4"):
        TrainConfig(feature_cut=5, **FAST).validate()


@pytest.mark.parametrize("signal", [0, 2])
def test_auto_feature_layer_takes_the_block_whose_features_score_better_on_validation(signal, monkeypatch):
    """feature_cut='auto' on features laid out as the runner extracts them (every candidate block side by
    side): the labels are readable from one block's columns only, and that block is chosen; the test
    split is never looked at (its rows are noise in every block)."""
    from types import SimpleNamespace

    from tl_core.runner import _choose_layer

    spec = backbones.get_spec("vgg16")
    base = backbones.build_base(spec, backbones.resolve_weights(spec, "none", 0), 32, 0)
    cuts = candidate_cuts(spec.n_blocks)
    slices = backbones.feature_slices(spec, base, cuts)
    rng = np.random.default_rng(0)
    n, classes = 240, 3
    y = np.repeat(np.arange(classes), n // classes)
    features = rng.normal(size=(n, max(s.stop for s in slices.values()))).astype(np.float32)
    columns = np.arange(slices[signal].start, slices[signal].start + classes)
    features[np.arange(n), columns[y]] += 3.0  # the class's own column is high in the signal block only
    order = rng.permutation(n)
    splits = {"train": order[:160], "val": order[160:200], "test": order[200:]}
    features[splits["test"]] = rng.normal(size=(40, features.shape[1]))
    p = SimpleNamespace(spec=spec, base=base, features=features, splits=splits, decoded=SimpleNamespace(y=y))
    chosen, columns, head, note = _choose_layer(p, TrainConfig(**FAST))
    assert chosen == signal and columns == slices[signal], note
    assert head.n_fit_ == 200 and head.held_out_proba_ is not None  # refitted on training + validation
    assert ("last layer" in note.split(":")[0]) == (signal == 0) and "cross-validated" in note
    # Above CV_MAX_ROWS images, the validation split judges (folds would take minutes there).
    monkeypatch.setattr("tl_core.runner.CV_MAX_ROWS", 100)
    chosen, _, _, note = _choose_layer(p, TrainConfig(**FAST))
    assert chosen == signal and "accuracy on the validation images" in note, note


def test_lpft_starts_from_the_feature_extractors_block(tmp_path, store, monkeypatch):
    """With feature_cut='auto', two-stage fine-tuning takes the block the feature extractor's rule
    chooses (forced to 2 blocks below the top here: random weights rarely prefer one): its model ends
    there, stage 2 unfreezes the top block of what is left, and the run says so."""
    import tl_core.runner as runner_module

    chosen = {}
    real = runner_module._choose_layer

    def forced(p, config, **kwargs):
        _, _, head, note = real(p, config, **kwargs)
        chosen["note"] = note
        columns = backbones.feature_slices(p.spec, p.base, candidate_cuts(p.spec.n_blocks))[2]
        return 2, columns, head, "Features from 2 blocks below the top (forced by the test)."

    monkeypatch.setattr(runner_module, "_choose_layer", forced)
    root = make_toy_folder(tmp_path / "toy", n_per_class=12)
    config = TrainConfig(strategy="finetune", fine_tune_epochs=1, unfreeze_blocks=1, **FAST)
    run = run_training(root, config, store=store)
    assert run["status"] == "succeeded", run["error"]
    assert run["metrics"]["feature_cut"] == 2 and "cross-validated accuracy" in chosen["note"]
    assert any("Fine-tuning ends the ConvNet there" in note for note in run["metrics"]["notes"])
    assert run["metrics"]["test_accuracy"] >= 0.8  # chance is 1/3
    spec = backbones.get_spec("vgg16")
    full = backbones.build_base(spec, backbones.resolve_weights(spec, "none", 0), 32, 0)
    model = keras.saving.load_model(run["model_path"], compile=False)

    def names(layer) -> set[str]:
        return {layer.name}.union(*(names(inner) for inner in getattr(layer, "layers", [])))

    inside = names(model)
    assert backbones.block_output_layer(spec, full, 2) in inside and full.layers[-1].name not in inside
