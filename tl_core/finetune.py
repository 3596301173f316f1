"""Keras classifiers: two-stage fine-tuning of a pretrained ConvNet, and training from scratch.

The two-stage recipe (keras-io's transfer-learning guide, fastai's ``fine_tune``):

1. freeze the ConvNet, train new fully connected layers (Adam 1e-3, early stopping);
2. unfreeze the top blocks, keep BatchNormalization in inference mode, recompile with a small
   learning rate (1e-5) and train on, again with early stopping.

Without augmentation the frozen part of the ConvNet gives the same output every epoch, so it runs
once: stage 1 trains the new layers on pooled features computed once, and stage 2 trains the
unfrozen blocks and the new layers on the activations entering the first unfrozen block, computed
once too (kept as float16, in a memory-mapped file on disk). The same computation as the end-to-end
recipe (``cache_stages=False``), without its redundant forward passes. Every stage reads its data
batch by batch (``data.make_batches``), so none needs the dataset in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tl_core.config import TrainConfig, env_number
from tl_core.data import iter_chunks, make_batches, take_rows
from tl_core.errors import CancelledError
from tl_core.features import OutputRows, inference_function
from tl_core.hardware import inference_batch, jit_compile
from tl_core.heads import LinearHead, fitted_scaler
from tl_core.progress import KerasProgressBridge, ProgressListener
from tl_core.fsutil import replacing, write_json_atomic

# Stage 2's activation cache is a file on disk (float16 unless the activations exceed its range);
# above this size, or without the disk space for it (and a margin), stage 2 runs end to end.
CACHE_LIMIT_ENV, CACHE_LIMIT_MB = "TL_ACTIVATION_CACHE_MB", 32768
DISK_MARGIN_BYTES = 1024**3


@dataclass
class TrainedModel:
    """A trained Keras classifier and the epoch history of each stage it went through."""

    model: keras.Model
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    feature_cut: int | None = None  # the feature extractor's block, as chosen (``feature_cut='auto'``)
    # After a refit on training + validation: the validation probabilities from before it (calibration's input).
    held_out_val: np.ndarray | None = None
    novelty: Any = None  # the run's "none of these" check (tl_core.novelty.Novelty), set by the runner


def build_augmentation(seed: int) -> keras.Sequential:
    """Random flip, rotation, zoom and contrast; active only while training."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.1, seed=seed),
            keras.layers.RandomZoom(0.1, seed=seed),
            keras.layers.RandomContrast(0.1, seed=seed),
        ],
        name="augmentation",
    )


def build_head(
    feature_dim: int, n_classes: int, config: TrainConfig, train_features: np.ndarray | None = None
) -> keras.Sequential:
    """The new layers: feature standardisation, dropout, a fully connected ReLU layer, dropout, softmax.

    Args:
        train_features: pooled features of the training images; when given, the first layer
            standardises features with their mean and variance (what ``StandardScaler`` does for the
            linear heads), so the new layers learn at one learning rate whatever the scale of the
            backbone's features. BatchNormalization cannot do this on small data: with a handful of
            steps per epoch its moving averages never reach the features' statistics.
    """
    layers: list = [keras.Input((feature_dim,))]
    if train_features is not None:
        scaler = fitted_scaler(train_features)
        mean, variance = scaler.mean_, scaler.var_
        # A feature that is (nearly) constant on the training images, say a unit that fired on one
        # image in 20,000, is not blown up by 1/its tiny standard deviation: variances are
        # floored at 1% of the average, so no feature is scaled more than 10x the typical one.
        variance = np.maximum(variance, 0.01 * float(variance.mean()) + 1e-12)
        layers.append(keras.layers.Normalization(mean=mean.astype(np.float32), variance=variance.astype(np.float32),
                                                 name="features_norm"))
    if config.dense_units:
        layers += [
            keras.layers.Dropout(config.dropout, seed=config.seed),
            keras.layers.Dense(config.dense_units, activation="relu", name="fc"),
        ]
    layers += [
        keras.layers.Dropout(config.dropout, seed=config.seed),
        # float32 output even under mixed precision: a float16 softmax loses small probabilities.
        keras.layers.Dense(n_classes, activation="softmax", name="predictions", dtype="float32"),
    ]
    return keras.Sequential(layers, name="head")


def _softmax_dense(head: LinearHead) -> list[np.ndarray]:
    """A fitted softmax :class:`LinearHead` as the weights ``[W, b]`` of one softmax Dense layer."""
    W, b, mode = head.to_dense()
    if mode == "ovr":  # two classes: [-f, f] under softmax(log_sigmoid) is [-f/2, f/2] under softmax
        W, b = W / 2, b / 2
    return [W, b]


def build_probe_head(features, data, n_classes: int, config: TrainConfig):
    """Stage 1 of LP-FT: the softmax linear probe on the cached features, as one Dense layer on the
    raw features (its standardisation folded in), so the Keras model predicts what the probe does.

    Returns:
        ``(head, probe)``: the Keras head and the fitted :class:`~tl_core.heads.LinearHead`.
    """
    probe = LinearHead("softmax", seed=config.seed).fit(
        features["train"], data["train"][1], features["val"], data["val"][1])
    weights = _softmax_dense(probe)
    dense = keras.layers.Dense(n_classes, activation="softmax", name="predictions", dtype="float32")
    head = keras.Sequential([keras.Input((weights[0].shape[0],)), dense], name="head")
    dense.set_weights(weights)
    return head, probe


def refitted_probe(probe: LinearHead, features, data) -> list[np.ndarray]:
    """The probe's head at its C, fitted again on the training and validation features together (the
    feature extractor's own solution), as Dense weights: what LP-FT keeps when stage 2 does not help."""
    both = LinearHead("softmax", C=probe.C_, seed=probe.seed).fit(
        np.concatenate([take_rows(features["train"], np.arange(len(features["train"]))),
                        take_rows(features["val"], np.arange(len(features["val"])))]),
        np.concatenate([data["train"][1], data["val"][1]]))
    return _softmax_dense(both)


def attach_head(feature_model: keras.Model, head: keras.Model, augment: keras.Model | None) -> keras.Model:
    """Raw pixels -> [augmentation] -> features -> head, as one model."""
    inputs = keras.Input(feature_model.input_shape[1:], name="image")
    x = augment(inputs) if augment is not None else inputs
    outputs = head(feature_model(x))
    return keras.Model(inputs, outputs, name="classifier")


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile(),  # XLA with mixed precision on a GPU (hardware.use_acceleration)
    )


class _ResumableStopping(keras.callbacks.EarlyStopping):
    """Early stopping that, after a resume, goes on with its best loss, patience count and best weights."""

    restored: dict | None = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.restored:
            self.best, self.wait = self.restored["best"], self.restored["wait"]
            self.best_epoch, self.best_weights = self.restored["best_epoch"], self.restored.get("weights")


class _EpochGuard(keras.callbacks.Callback):
    """Placed first: tells whether the epoch now ending was cut short (stopped during its batches)."""

    cut_short = False

    def on_epoch_end(self, epoch, logs=None):
        # Set before any epoch-end callback runs: only a stop requested within the batches shows here.
        self.cut_short = bool(self.model.stop_training)


class _EpochBackup(keras.callbacks.Callback):
    """The weights (optimizer state included) after every completed epoch, and the epoch count.

    What Keras' ``BackupAndRestore`` does, without its side effect: that callback leaves the epoch
    to resume from on the model, so the next stage's ``fit`` on the same model would start late.
    Here the caller passes ``initial_epoch`` to ``fit`` (:meth:`StageCheckpoints.restored_epoch`).
    Each epoch's weights get a file of their own; the metadata file naming it is renamed into place
    last, so a kill at any moment leaves the previous complete epoch. An epoch cut short by a cancel
    is not saved (it did not complete).
    """

    METADATA = "training_metadata.json"
    LEGACY_WEIGHTS = "latest.weights.h5"  # the file of checkpoints written by BackupAndRestore

    def __init__(self, folder: Path, cut_short: Callable[[], bool]) -> None:
        super().__init__()
        self.folder = Path(folder)
        self._cut_short = cut_short

    @classmethod
    def saved(cls, folder: Path) -> tuple[int, Path | None]:
        """``(epochs completed, their weights file)`` of the backup in ``folder``; ``(0, None)`` if none."""
        try:
            meta = json.loads((Path(folder) / cls.METADATA).read_text())
            return int(meta["epoch"]), Path(folder) / meta.get("weights", cls.LEGACY_WEIGHTS)
        except (OSError, ValueError, KeyError, TypeError):
            return 0, None

    def on_train_begin(self, logs=None):
        epoch, weights = self.saved(self.folder)
        if epoch and weights is not None and weights.exists():
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)  # its state is in the file too
            self.model.load_weights(weights)

    def on_epoch_end(self, epoch, logs=None):
        if self._cut_short():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        _, previous = self.saved(self.folder)
        weights = self.folder / f"epoch-{epoch + 1}.weights.h5"
        with replacing(weights) as tmp:
            self.model.save_weights(tmp)
        write_json_atomic(self.folder / self.METADATA, {"epoch": epoch + 1, "weights": weights.name})
        if previous is not None and previous != weights:
            previous.unlink(missing_ok=True)


class _EpochSaver(keras.callbacks.Callback):
    """After each completed epoch: the history so far, the early-stopping state and, when the epoch
    is the best so far, its weights (what early stopping would restore after a resume)."""

    def __init__(self, checkpoints: StageCheckpoints, stage: str, bridge, stopper: _ResumableStopping,
                 cut_short: Callable[[], bool]) -> None:
        super().__init__()
        self.checkpoints, self.stage, self.bridge, self.stopper = checkpoints, stage, bridge, stopper
        self._cut_short = cut_short

    def on_epoch_end(self, epoch, logs=None):
        if self._cut_short():
            return  # an epoch cut short by a cancel is not a completed one
        stopper, path = self.stopper, self.checkpoints._path
        if stopper.wait == 0 and stopper.best_epoch == epoch:  # this epoch is the best so far
            with replacing(path(self.stage, ".best.npz")) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, *self.model.get_weights())
        best = None if stopper.best is None else float(stopper.best)
        state = {"best": best, "wait": stopper.wait, "best_epoch": stopper.best_epoch}
        write_json_atomic(path(self.stage, ".history.json"), {"history": self.bridge.history, "stopper": state})


class _AfterEpoch(keras.callbacks.Callback):
    """Calls ``action`` after each completed epoch (placed last: the epoch's files are all written)."""

    def __init__(self, action: Callable[[], None], cut_short: Callable[[], bool]) -> None:
        super().__init__()
        self._action, self._cut_short = action, cut_short

    def on_epoch_end(self, epoch, logs=None):
        if not self._cut_short():
            self._action()


class StageCheckpoints:
    """Per-epoch checkpoints of a run's training stages, so a killed or cancelled run resumes.

    In ``folder``: ``<stage>/`` is Keras' ``BackupAndRestore`` backup (weights and epoch, written
    after every completed epoch); ``<stage>.history.json`` the epochs trained so far and the early
    stopping state, whose best weights are in ``<stage>.best.npz``; ``<stage>.weights.h5`` plus
    ``"done"`` in the history file mark a finished stage, which a resumed run loads instead of
    training again. The runner deletes the folder once the run succeeds; a failed or cancelled
    run keeps it, to resume.
    """

    def __init__(self, folder: str | os.PathLike, on_saved: Callable[[], None] | None = None) -> None:
        """``on_saved`` runs after each epoch's checkpoint is complete (the store mirrors it)."""
        self.folder = Path(folder)
        self.notes: list[str] = []
        self.on_saved = on_saved

    def _path(self, stage: str, suffix: str) -> Path:
        return self.folder / f"{stage}{suffix}"

    def _read(self, stage: str) -> dict:
        try:
            return json.loads(self._path(stage, ".history.json").read_text())
        except (OSError, ValueError):
            return {}

    def restored_epoch(self, stage: str) -> int:
        """The last completed epoch saved in the stage's backup (0 when there is none)."""
        return _EpochBackup.saved(self.folder / stage)[0]

    def finished(self, stage: str, model: keras.Model) -> list[dict[str, float]] | None:
        """The history of a stage finished before an interruption, its weights loaded into ``model``."""
        saved = self._read(stage)
        if not saved.get("done") or not self._path(stage, ".weights.h5").exists():
            return None
        with warnings.catch_warnings():  # the saved optimizer state is not needed: the stage is over
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(self._path(stage, ".weights.h5"))
        self.notes.append(f"Resumed: {stage} had finished before the interruption; its weights were reloaded.")
        return saved["history"]

    def callbacks(self, stage: str, bridge, stopper: _ResumableStopping, stopped) -> list[keras.callbacks.Callback]:
        """Save each completed epoch: history, early-stopping state and a Keras backup.

        On a resume, the earlier epochs go back into ``bridge.history`` and the early-stopping
        state into ``stopper``, so the stage goes on as if it had not been interrupted.
        """
        epoch = self.restored_epoch(stage)
        saved = self._read(stage)
        if epoch:
            self.notes.append(f"Resumed: {stage} went on from its last completed epoch ({epoch}).")
            bridge.history[:0] = [e for e in saved.get("history", []) if e.get("epoch", 0) <= epoch]
            state = saved.get("stopper")
            if state:
                try:
                    with np.load(self._path(stage, ".best.npz")) as best:
                        state["weights"] = [best[f"arr_{i}"] for i in range(len(best.files))]
                except (OSError, ValueError):
                    state["weights"] = None
                stopper.restored = state
        self.folder.mkdir(parents=True, exist_ok=True)
        callbacks = [_EpochSaver(self, stage, bridge, stopper, stopped), _EpochBackup(self.folder / stage, stopped)]
        if self.on_saved is not None:  # after the backup: the epoch's files are all written
            callbacks.append(_AfterEpoch(self.on_saved, stopped))
        return callbacks

    def mark_done(self, stage: str, model: keras.Model, history: list[dict[str, float]]) -> None:
        with replacing(self._path(stage, ".weights.h5")) as tmp:
            model.save_weights(tmp)
        write_json_atomic(self._path(stage, ".history.json"), {"history": history, "done": True})


def _fit(model, train, val, epochs, config, progress, stage, checkpoints=None) -> list[dict[str, float]]:
    if checkpoints is not None:
        finished = checkpoints.finished(stage, model)
        if finished is not None:
            return finished
    bridge = KerasProgressBridge(progress, stage, epochs)
    stopper = _ResumableStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    # The stopper, then the bridge, run before the checkpoint callbacks, so what is saved includes the epoch.
    guard = _EpochGuard()
    callbacks = [guard, stopper, bridge]
    if checkpoints is not None:
        callbacks += checkpoints.callbacks(stage, bridge, stopper, lambda: guard.cut_short)
    initial_epoch = checkpoints.restored_epoch(stage) if checkpoints is not None else 0
    # shuffle=False: the tf.data pipeline shuffles already.
    model.fit(train, validation_data=val, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks,
              verbose=0, shuffle=False)
    if progress.should_stop():
        raise CancelledError(f"Cancelled during {stage}.")
    if checkpoints is not None:
        checkpoints.mark_done(stage, model, bridge.history)
    return bridge.history


def train_two_stage(
    feature_model: keras.Model,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    n_classes: int,
    *,
    config: TrainConfig,
    progress: ProgressListener,
    features: dict[str, np.ndarray],
    unfreeze: Callable[[int], int],
    split: Callable[[int], tuple[keras.Model, keras.Model] | None] | None = None,
    checkpoints: StageCheckpoints | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> TrainedModel:
    """Stage 1 (new layers on the frozen ConvNet), then stage 2 (top blocks unfrozen).

    Args:
        feature_model: pixels -> pooled features, its ConvNet called in inference mode.
        unfreeze: ``unfreeze(n_blocks)`` makes the ConvNet's top blocks trainable (all with -1, none
            with 0) and returns the number of trainable weight tensors
            (``backbones.set_trainable_blocks``).
        data: ``{"train": (x, y), "val": (x, y)}`` uint8 pixels (arrays, memory-mapped caches or
            ``data.Rows`` of one) and class indices.
        features: features of each split from the frozen ConvNet: they set the head's feature
            standardisation and, when augmentation is off, stage 1 trains on them directly.
        split: ``callable(n_blocks)`` -> ``(bottom, top)`` models cut below the top blocks
            (``backbones.split_at_block``), or ``None``: stage 2 then runs end to end.
        checkpoints: where each epoch is checkpointed, so an interrupted run resumes.
        cache_dir: the folder of stage 2's activation cache (the system's temporary folder when
            ``None``): scratch files whose names are removed at once, their disk space freed when
            training is over, even if the process is killed.
    """
    keras.utils.set_random_seed(config.seed)
    probe = None
    if config.start_from_probe:
        head, probe = build_probe_head(features, data, n_classes, config)
    else:
        head = build_head(feature_model.output_shape[-1], n_classes, config, features["train"])
    augment = build_augmentation(config.seed) if config.augment else None
    model = attach_head(feature_model, head, augment)
    unfreeze(0)
    result = TrainedModel(model)

    cached = augment is None and config.cache_stages
    if probe is not None:
        result.history["stage1"] = []
        result.notes.append(f"Stage 1 is the linear probe (LP-FT): a softmax head on the cached features, "
                            f"{probe.describe()} Folded into the new Dense layer, stage 2 starts from it.")
    elif cached:
        train = make_batches(features["train"], data["train"][1], config.batch_size, shuffle=True, seed=config.seed)
        val = make_batches(features["val"], data["val"][1], config.batch_size)
        _compile(head, config.learning_rate)
        result.history["stage1"] = _fit(head, train, val, config.epochs, config, progress, "stage1", checkpoints)
        result.notes.append("Stage 1 trained the new layers on cached ConvNet features (no augmentation).")
    else:
        train, val = _pixel_batches(data, config)
        _compile(model, config.learning_rate)
        result.history["stage1"] = _fit(model, train, val, config.epochs, config, progress, "stage1", checkpoints)
        why = "augmentation changes its input" if augment is not None else "stage caching is off"
        result.notes.append(f"Stage 1 ran the frozen ConvNet every epoch ({why}).")
    kept = kept_epoch_note("stage 1", result.history["stage1"]) if probe is None else \
        "The saved model's weights come from stage 1, the linear probe."

    if config.unfreeze_blocks != 0 and config.fine_tune_epochs > 0:
        stage_model, train, val = model, None, None
        parts = split(config.unfreeze_blocks) if cached and split is not None else None
        if parts is not None:
            bottom, top = parts
            folder = Path(cache_dir if cache_dir is not None else tempfile.gettempdir())
            size = (len(data["train"][0]) + len(data["val"][0])) * int(np.prod(bottom.output_shape[1:])) * 2
            refused = _no_room_for_cache(folder, size)
            if refused is None:
                try:
                    stage_model, train, val = _cached_stage2(bottom, top, head, data, config, progress, folder)
                except OSError as err:  # the disk filled up meanwhile (or float32 activations need twice the room)
                    refused = f"its activation cache could not be written ({err.strerror or err})"
                else:
                    result.notes.append(
                        f"Stage 2 trained on activations cached below the unfrozen blocks "
                        f"({size / 1024**2:.0f} MB on disk, float16): the frozen layers ran once."
                    )
            if refused is not None:
                result.notes.append(f"Stage 2 ran end to end: {refused}.")
        if train is None:
            if cached and parts is None:
                result.notes.append("Stage 2 ran end to end: every block is unfrozen, so no frozen part could be cached.")
            train, val = _pixel_batches(data, config)
        _compile(stage_model, config.learning_rate)
        stage1_val_loss = float(stage_model.evaluate(val, verbose=0)[0])
        if probe is not None:
            result.notes.append(f"Stage 2 starts at the probe's validation loss, {stage1_val_loss:.4f}.")
        stage1_weights = model.get_weights()
        n_trainable = unfreeze(config.unfreeze_blocks)
        _compile(stage_model, config.fine_tune_learning_rate)  # recompile after changing trainable
        result.history["stage2"] = _fit(stage_model, train, val, config.fine_tune_epochs, config, progress, "stage2",
                                          checkpoints)
        blocks = "all layers" if config.unfreeze_blocks < 0 else f"the top {config.unfreeze_blocks} block(s)"
        result.notes.append(
            f"Stage 2 fine-tuned {blocks} ({n_trainable} weight tensors) at learning rate "
            f"{config.fine_tune_learning_rate:g}, BatchNormalization in inference mode."
        )
        best_stage2 = min((epoch["val_loss"] for epoch in result.history["stage2"]), default=float("inf"))
        if best_stage2 > stage1_val_loss:
            # Early stopping restores the best stage-2 epoch; the stage-1 model can be better still.
            model.set_weights(stage1_weights)
            result.notes.append(
                f"Stage 2 never beat stage 1 on validation loss ({best_stage2:.3f} vs "
                f"{stage1_val_loss:.3f}); the stage-1 model was kept."
            )
            if probe is not None:
                _refit_probe(result, head, probe, features, data)
        else:
            kept = kept_epoch_note("stage 2", result.history["stage2"])
    elif probe is not None:
        _refit_probe(result, head, probe, features, data)
    result.notes.append(kept)
    return result


def _refit_probe(result: TrainedModel, head: keras.Model, probe: LinearHead, features, data) -> None:
    """LP-FT ends at its probe: that probe refitted on training + validation, as the feature extractor
    does (validation has chosen its C and judged stage 2 already; its images now train the head)."""
    result.held_out_val = probe.predict_proba(take_rows(features["val"], np.arange(len(features["val"]))))
    head.get_layer("predictions").set_weights(refitted_probe(probe, features, data))
    result.notes.append(f"The probe was then refitted at C={probe.C_:g} on the training and validation images "
                        "together: the feature extractor's own solution.")


def kept_epoch_note(stage: str, history: list[dict[str, float]] | None) -> str:
    """Which epoch's weights a stage ends with: early stopping restores the lowest validation loss."""
    rows = [e for e in history or [] if e.get("val_loss") is not None]
    if not rows:
        return f"The saved model comes from {stage}."
    best = min(rows, key=lambda e: e["val_loss"])  # the first of equal losses, as early stopping keeps
    return (f"The saved model's weights come from {stage}, epoch {best['epoch']} of {len(history)} "
            f"(the lowest validation loss, {best['val_loss']:.4f}).")


def _no_room_for_cache(folder: Path, size: int) -> str | None:
    """Why stage 2's activations (``size`` bytes) cannot be cached in ``folder``; ``None`` if they can."""
    limit_mb = env_number(CACHE_LIMIT_ENV, CACHE_LIMIT_MB)  # read here: a bad value is a clear error, not an import crash
    if size > limit_mb * 1024**2:
        return (f"its activation cache would take {size / 1024**2:,.0f} MB "
                f"(limit {CACHE_LIMIT_ENV}={limit_mb:g})")
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if size > free - DISK_MARGIN_BYTES:
        return (f"its activation cache would take {size / 1024**2:,.0f} MB and {folder} has "
                f"{free / 1024**2:,.0f} MB free")
    return None


def _cached_stage2(bottom, top, head, data, config: TrainConfig, progress: ProgressListener, folder: Path):
    """Stage 2's model on cut activations (sharing the classifier's layers) and its batches.

    The activations go to scratch files in ``folder``, read back batch by batch while training.
    """
    total = len(data["train"][0]) + len(data["val"][0])
    progress.on_stage_start("cache", total)
    done, cached = 0, {}
    for part in ("train", "val"):
        x = data[part][0]
        # float16 unless some activation is beyond its range; the file's name is gone at once.
        out = OutputRows((len(x), *bottom.output_shape[1:]), folder / "activations.npy", anonymous=True)
        for start, chunk in iter_chunks(x, inference_batch(config.batch_size)):
            if progress.should_stop():
                raise CancelledError("Cancelled while caching activations for stage 2.")
            out.write(start, np.asarray(inference_function(bottom, chunk.dtype)(chunk)))
            done += len(chunk)
            progress.on_step("cache", done, None)
        out.pages.release()
        cached[part] = out.array
    progress.on_stage_end("cache", {"images": float(total)})
    inputs = keras.Input(bottom.output_shape[1:], name="activations")
    x = keras.layers.GlobalAveragePooling2D()(top(inputs, training=False))
    stage_model = keras.Model(inputs, head(x), name="stage2_on_cache")
    train = make_batches(cached["train"], data["train"][1], config.batch_size, shuffle=True, seed=config.seed)
    val = make_batches(cached["val"], data["val"][1], config.batch_size)
    return stage_model, train, val


def train_scratch(
    feature_model: keras.Model,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    n_classes: int,
    *,
    config: TrainConfig,
    progress: ProgressListener,
    checkpoints: StageCheckpoints | None = None,
) -> TrainedModel:
    """The same architecture from random weights, every layer trained (the no-transfer baseline)."""
    keras.utils.set_random_seed(config.seed)
    head = build_head(feature_model.output_shape[-1], n_classes, config)
    augment = build_augmentation(config.seed) if config.augment else None
    model = attach_head(feature_model, head, augment)
    model.trainable = True
    train, val = _pixel_batches(data, config)
    _compile(model, config.learning_rate)
    history = _fit(model, train, val, config.epochs, config, progress, "scratch", checkpoints)
    return TrainedModel(model, {"scratch": history},
                        ["Trained every layer from random weights.", kept_epoch_note("training", history)])


def _pixel_batches(data, config: TrainConfig):
    x_train, y_train = data["train"]
    x_val, y_val = data["val"]
    return (
        make_batches(x_train, y_train, config.batch_size, shuffle=True, seed=config.seed),
        make_batches(x_val, y_val, config.batch_size),
    )
