"""One training run from a dataset source to a stored, measured model.

``run_training`` is what the CLI, the app's job worker and the tests call. It never raises for a
run that fails: the run is stored as ``failed`` with its error (or ``cancelled``) and returned.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import keras
import numpy as np

import tl_core
from tl_core import backbones, data
from tl_core.calibration import apply_temperature, calibrate
from tl_core.config import FEATURE_CUT_AUTO, DataConfig, TrainConfig, candidate_cuts, env_number, run_payload
from tl_core.errors import CancelledError, TLCoreError
from tl_core.fsutil import write_json_atomic
from tl_core.features import decode_and_extract, features_key
from tl_core.finetune import StageCheckpoints, TrainedModel, train_scratch, train_two_stage
from tl_core.explain import explain_mistakes
from tl_core.hardware import (
    describe_hardware,
    distribution_strategy,
    inference_batch,
    jit_compile,
    use_acceleration,
)
from tl_core.heads import CV_MAX_ROWS, LinearHead
from tl_core.metrics import evaluate, reliability
from tl_core.progress import EPOCH_STAGES, MultiProgress, NullProgress, ProgressListener, StageTimer
from tl_core.model_files import TEMPERATURE_LAYER, fold_temperature, save_model
from tl_core.novelty import NOVELTY_FILE, NOVELTY_MAX_ROWS, features_model, fit_novelty
from tl_core.precision import choose_precision
from tl_core.store import PREDICTIONS_FILE, SPLIT_FILE, RunStore


class StoreProgress(NullProgress):
    """Writes epoch metrics to the store as they arrive, and a progress snapshot at most twice a second."""

    def __init__(self, store: RunStore, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        # The run's timeline starts here: its process's start and the run's, for time_breakdown.
        self.snapshot: dict[str, Any] = {"stages": {}, "process_started_at": tl_core.PROCESS_STARTED_AT,
                                         "run_started_at": time.time(), "pid": os.getpid()}
        self._last_write = 0.0

    def _write(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_write >= 0.5:
            self._last_write = now
            self.snapshot["updated_at"] = now
            self.store.set_progress(self.run_id, self.snapshot)

    def on_stage_start(self, stage: str, total: int) -> None:
        if not stage.endswith(".epoch"):  # batches within an epoch are a sub-stage
            self.snapshot["current"] = stage
        self.snapshot["stages"][stage] = {"step": 0, "total": total, "started_at": time.time()}
        self._write(force=not stage.endswith(".epoch"))

    def on_step(self, stage: str, step: int, logs: dict[str, Any] | None = None) -> None:
        entry = self.snapshot["stages"].setdefault(stage, {"total": step, "started_at": time.time()})
        entry["step"] = step
        if logs:
            entry["logs"] = logs
        if stage in EPOCH_STAGES and logs is not None:
            self.store.add_epoch(self.run_id, stage, step, {k: v for k, v in logs.items() if k != "epoch"})
            self._write(force=True)
        else:
            self._write()

    def on_stage_end(self, stage: str, logs: dict[str, Any] | None = None) -> None:
        entry = self.snapshot["stages"].setdefault(stage, {"started_at": time.time()})
        entry["finished_at"] = time.time()
        self._write(force=True)


def run_training(
    source: Any,
    config: TrainConfig,
    data_config: DataConfig = DataConfig(),
    store: RunStore | None = None,
    progress: ProgressListener | None = None,
    run_id: str | None = None,
    name: str | None = None,
    *,
    group: str | None = None,
) -> dict[str, Any]:
    """Train one model on a dataset and store the run.

    Args:
        source: a folder, a zip (path or bytes) or upload tuples (see ``data.load_images``).
        config: what to train; validated before anything is stored.
        data_config: pixel limit and split.
        store: where the run goes; the default store when ``None``.
        progress: an observer (progress bar, job worker); may ask to stop.
        run_id: an existing ``queued`` run to execute (the job worker creates it first).
        name: a label shown in run lists.
        group: the comparison this run belongs to (a new run only).

    Returns:
        The stored run (``status``: ``succeeded``, ``failed`` with ``error``, or ``cancelled``).

    Raises:
        ConfigError: an invalid config (nothing is stored then).
    """
    config.validate()
    data_config.validate()
    store = store or RunStore()
    payload = run_payload(config, data_config, _describe(source), group)
    if run_id is None:
        run_id = store.create_run(payload, status="running", name=name)
    else:
        store.set_status(run_id, "running")
        # A resumed run's folder comes back from the artifacts location; on a fresh disk without
        # one (or killed before its first copy) the run starts again in a new, empty folder.
        store.run_dir(run_id).mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    listener = MultiProgress(progress or NullProgress(), StoreProgress(store, run_id), timer)
    started = time.perf_counter()
    try:
        metrics = _execute(RunContext(source, config, data_config, store, run_id, listener, timer))
        metrics["seconds"] = time.perf_counter() - started
        store.finish(run_id, "succeeded", metrics)
    except CancelledError as err:
        store.finish(run_id, "cancelled", error=str(err) or "Cancelled.")
    except KeyboardInterrupt:
        store.finish(run_id, "cancelled", error="Interrupted (Ctrl-C).")
        raise
    except TLCoreError as err:
        store.finish(run_id, "failed", error=str(err))
    except OSError as err:  # disk full, no permission, file too large: the reason, and a way on
        _write_error_log(store, run_id)
        store.finish(
            run_id,
            "failed",
            error=f"A file could not be written or read ({err.strerror or err}"
            f"{': ' + str(err.filename) if err.filename else ''}). Free disk space or fix the folder's "
            "permissions, then resume the run: it goes on from its last completed epoch.",
        )
    except Exception as err:  # noqa: BLE001 - a run must end 'failed', never stay 'running'
        _write_error_log(store, run_id)
        store.finish(run_id, "failed", error=f"Unexpected error: {err.__class__.__name__}: {err}")
    return store.get_run(run_id)


# With an artifacts location, checkpoints are copied there at most this often, so a run whose
# machine disappears (a hosted app's restart wipes its disk) resumes elsewhere from a recent epoch.
CHECKPOINT_MIRROR_ENV, CHECKPOINT_MIRROR_SECONDS = "TL_CHECKPOINT_MIRROR_SECONDS", 60.0


def _checkpoint_mirror(store: RunStore, run_id: str):
    """An ``on_saved`` hook that mirrors the run's folder (checkpoints included), rate-limited."""
    if store.artifacts is None:
        return None
    last = [0.0]
    every = env_number(CHECKPOINT_MIRROR_ENV, CHECKPOINT_MIRROR_SECONDS)

    def mirror() -> None:
        if time.monotonic() - last[0] >= every:
            last[0] = time.monotonic()
            store.publish_quietly(run_id)

    return mirror


def _write_error_log(store: RunStore, run_id: str) -> None:
    try:
        (store.run_dir(run_id) / "error.log").write_text(traceback.format_exc())
    except OSError:
        pass  # the disk that failed the run may refuse the log too; the store keeps the reason


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source).expanduser().resolve())
    if isinstance(source, (bytes, bytearray)):
        return f"zip upload ({len(source):,} bytes)"
    return f"{len(source)} uploaded files"


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every step of one run reads: its source and settings, where it is stored, who listens."""

    source: Any
    config: TrainConfig
    data_config: DataConfig
    store: RunStore
    run_id: str
    listener: ProgressListener
    timer: StageTimer

    @property
    def folder(self) -> Path:
        return self.store.run_dir(self.run_id)


@dataclasses.dataclass
class _Prepared:
    """The run's data and models once decoding, features and the split are done."""

    image_set: data.ImageSet
    decoded: data.DecodedDataset
    features: Any
    splits: dict[str, np.ndarray]
    size: int
    weights: Any
    spec: Any
    base: keras.Model
    feature_model: keras.Model
    fit_config: TrainConfig
    distribution: dict[str, Any]
    distribution_notes: list[str]
    precision: str  # of the frozen ConvNet's forward passes: float32 or bfloat16


def _execute(ctx: RunContext) -> dict[str, Any]:
    acceleration = use_acceleration(ctx.config.accelerate)
    try:
        metrics = _train_and_evaluate(ctx)
    finally:
        use_acceleration(False)  # the next run in this process starts from float32
    metrics["acceleration"] = acceleration
    return metrics


def _train_and_evaluate(ctx: RunContext) -> dict[str, Any]:
    """Data and models, training by the run's strategy, then metrics, the saved model and heat maps."""
    keras.utils.set_random_seed(ctx.config.seed)
    # Several GPUs (or TF_CONFIG, or TL_DISTRIBUTE=all): one model copy per device, built and
    # trained in the strategy's scope; each device takes `batch_size` images per step.
    strategy = distribution_strategy()
    with strategy.scope():
        prepared = _prepare(ctx, strategy)
        trained, probabilities = _train(ctx, prepared)
    metrics = _measure(ctx, prepared, trained, probabilities)
    save_model(trained.model, ctx.folder / "model.keras")
    if trained.novelty is not None:
        trained.novelty.save(ctx.folder / NOVELTY_FILE)
    shutil.rmtree(ctx.folder / "checkpoints", ignore_errors=True)  # the run is complete: nothing to resume
    _explain(ctx, prepared, trained, metrics)
    return metrics


def _prepare(ctx: RunContext, strategy) -> _Prepared:
    """Build the ConvNet, decode the images (and extract their features as they decode), report, split."""
    config, store = ctx.config, ctx.store
    spec = backbones.get_spec(config.backbone)
    size = config.image_size or spec.input_size
    image_set = data.load_images(ctx.source, ctx.data_config)
    replicas = int(strategy.num_replicas_in_sync)
    fit_config = dataclasses.replace(config, batch_size=config.batch_size * replicas)
    distribution = {"strategy": strategy.__class__.__name__, "replicas": replicas,
                    "global_batch": fit_config.batch_size}
    distribution_notes = [] if replicas == 1 else [
        f"Trained on {replicas} devices ({strategy.__class__.__name__}): {config.batch_size} images per device "
        f"per step, a global batch of {fit_config.batch_size}; learning rates as set "
        f"({config.learning_rate:g}, stage 2 {config.fine_tune_learning_rate:g}), not scaled."
    ]
    weights = backbones.resolve_weights(spec, "none" if config.strategy == "scratch" else config.weights, config.seed)
    base = backbones.build_base(spec, weights, size, config.seed)
    cut = config.feature_cut if config.strategy != "scratch" else 0
    feature_model = backbones.build_feature_model(  # auto: every candidate block's features, one pass
        spec, base, size, inference_mode=config.strategy != "scratch",
        cut=candidate_cuts(spec.n_blocks) if cut == FEATURE_CUT_AUTO else cut)
    need_features = config.strategy in ("feature_extractor", "finetune")
    # The frozen ConvNet's forward passes (not training, not the saved model) in bfloat16 where faster.
    precision, inference_model = (choose_precision(config.precision, feature_model, backbone=spec.name,
                                                   image_size=size, cache_dir=store.cache_dir)
                                  if need_features else ("float32", feature_model))

    def features_path(hashes) -> Path:
        identity = weights.identity + ("|mixed" if jit_compile() else "")
        key = features_key(hashes, spec.name, identity, size, cut, precision=precision, resize=ctx.data_config.resize)
        return store.cache_dir / "features" / (key + ".npy")

    decoded, features = decode_and_extract(
        image_set, size, ctx.data_config, cache_dir=store.cache_dir, feature_model=inference_model,
        features_path=features_path, batch_size=inference_batch(config.batch_size), progress=ctx.listener,
        need_features=need_features,
    )
    store.set_dataset(ctx.run_id, data.build_report(image_set, decoded))
    if ctx.listener.should_stop():
        raise CancelledError("Cancelled while decoding images.")
    splits = data.split_dataset(decoded, ctx.data_config)
    write_json_atomic(ctx.folder / SPLIT_FILE, {part: [decoded.names[i] for i in idx] for part, idx in splits.items()})
    return _Prepared(image_set, decoded, features, splits, size, weights, spec, base, feature_model, fit_config,
                     distribution, distribution_notes, precision)


def _train(ctx: RunContext, p: _Prepared) -> tuple[TrainedModel, dict[str, np.ndarray]]:
    """Train by the run's strategy; returns the trained model and its probabilities on the validation
    and test splits (``{"val": ..., "test": ...}``)."""
    config, listener, decoded, splits = ctx.config, ctx.listener, p.decoded, p.splits
    if config.strategy == "feature_extractor":
        return _train_linear_head(p, config, listener)
    # Each split reads its pixels from the decoded cache (a memory-mapped file) batch by batch.
    split_data = {part: (data.Rows(decoded.x, idx), decoded.y[idx]) for part, idx in splits.items()}
    n_classes = len(decoded.class_names)
    checkpoints = StageCheckpoints(ctx.folder / "checkpoints", _checkpoint_mirror(ctx.store, ctx.run_id))
    if config.strategy == "finetune":
        # One pass of the frozen ConvNet (cached): it sets the head's feature standardisation
        # and, without augmentation, is all stage 1 needs.
        spec, base, size, feature_model = p.spec, p.base, p.size, p.feature_model
        features = {part: data.Rows(p.features, idx) for part, idx in splits.items()}
        layer_notes, cut = [], None
        if config.feature_cut == FEATURE_CUT_AUTO:
            # The feature extractor's block (its rule, the same features): fine-tuning starts from that
            # solution, the ConvNet ending at that block and its top blocks unfrozen in stage 2.
            listener.on_stage_start("head", 1)
            cut, columns, _, note = _choose_layer(p, config, fewest_blocks_left=max(config.unfreeze_blocks, 0))
            listener.on_stage_end("head", None)
            features = {part: np.ascontiguousarray(data.take_rows(p.features, idx)[:, columns])
                        for part, idx in splits.items()}
            base = backbones.truncate_base(spec, base, cut)  # one model: unfreezing and the split act on it
            feature_model = backbones.build_feature_model(spec, base, size)
            layer_notes.append(note + (" Fine-tuning ends the ConvNet there." if cut else ""))
        trained = train_two_stage(
            feature_model, split_data, n_classes, config=p.fit_config, progress=listener, features=features,
            unfreeze=lambda n: backbones.set_trainable_blocks(spec, base, n),
            split=lambda n: backbones.split_at_block(spec, base, n, size),
            checkpoints=checkpoints, cache_dir=ctx.store.cache_dir / "activations",
        )
        trained.notes[:0] = layer_notes
        trained.feature_cut = cut
    else:
        trained = train_scratch(p.feature_model, split_data, n_classes, config=p.fit_config, progress=listener,
                                checkpoints=checkpoints)
    trained.notes[:0] = checkpoints.notes + p.distribution_notes
    listener.on_stage_start("evaluate", len(splits["val"]) + len(splits["test"]))
    probabilities = {part: trained.model.predict(
        data.make_batches(split_data[part][0], None, inference_batch(config.batch_size)), verbose=0)
        for part in ("val", "test")}
    if trained.held_out_val is not None:  # refitted on validation too: calibrate on the probabilities from before
        probabilities["val"] = trained.held_out_val
    trained.novelty = _trained_novelty(trained.model, decoded, splits, inference_batch(config.batch_size))
    listener.on_stage_end("evaluate", None)
    return trained, probabilities


def _measure(ctx: RunContext, p: _Prepared, trained: TrainedModel, split_probabilities: dict[str, np.ndarray]
             ) -> dict[str, Any]:
    """The run's metrics on its test split, with intervals and flags; the per-image predictions too.

    The probabilities are calibrated first (temperature scaling on the validation split, folded into
    the model: :func:`_calibrate`): the metrics, the saved model and the pages all see calibrated ones.
    """
    decoded, splits = p.decoded, p.splits
    test_idx = splits["test"]
    probabilities, calibration = _calibrate(trained, split_probabilities, decoded.y[splits["val"]], decoded.y[test_idx])
    # Per test image (in split.json's order): what paired comparisons between runs are made of.
    write_json_atomic(ctx.folder / PREDICTIONS_FILE,
                      {"true": decoded.y[test_idx].tolist(), "predicted": probabilities.argmax(axis=1).tolist()})
    metrics = evaluate(decoded.y[test_idx], probabilities, decoded.class_names, [decoded.names[i] for i in test_idx])
    metrics.update(
        {
            "test_accuracy": metrics["accuracy"],
            "class_names": decoded.class_names,
            "image_size": p.size,
            "weights": p.weights.description,
            "hardware": describe_hardware(),
            "split": {part: int(len(idx)) for part, idx in splits.items()},
            "distribution": p.distribution,
            "precision": p.precision,
            **({"feature_cut": trained.feature_cut} if trained.feature_cut is not None else {}),
            **({"novelty": trained.novelty.describe()} if trained.novelty is not None else {}),
            "history": trained.history,
            "notes": trained.notes,
            "timing": _timing(ctx.timer, trained.history, len(decoded.y), len(splits["train"]), len(splits["val"])),
        }
    )
    metrics.update(reliability(metrics))  # intervals, the largest-class baseline, flags
    if calibration is not None:
        metrics["calibration"] = calibration.to_dict()
    if p.precision == "bfloat16":
        metrics["notes"].append("The frozen ConvNet's features were computed in bfloat16 (faster on this machine); "
                                "the head, the training and the saved model are float32.")
    return metrics


def _calibrate(trained: TrainedModel, probabilities: dict[str, np.ndarray], y_val: np.ndarray, y_test: np.ndarray):
    """Temperature scaling fitted on the validation split and folded into the trained model, and the
    conformal threshold; returns the calibrated test probabilities and the :class:`Calibration`
    (``None``, probabilities unchanged, when the validation split is too small to fit it)."""
    if len(y_val) < 2 or len(np.unique(y_val)) < 2:
        return probabilities["test"], None
    calibration = calibrate(probabilities["val"], y_val, probabilities["test"], y_test)
    fold_temperature(trained.model, calibration.temperature)
    trained.notes.append(
        f"Probabilities calibrated by temperature scaling on the validation split (T = {calibration.temperature:.2f}; "
        f"expected calibration error on the test split {calibration.ece_before:.3f} -> {calibration.ece_after:.3f}); "
        f"the saved model predicts the calibrated ones.")
    return apply_temperature(probabilities["test"], calibration.temperature), calibration


def _explain(ctx: RunContext, p: _Prepared, trained: TrainedModel, metrics: dict[str, Any]) -> None:
    """Heat maps of the mistakes for the Result page; a run never fails for want of them."""
    ctx.listener.on_stage_start("explain", 1)
    try:
        explain_mistakes({"metrics": metrics, "config": {"data": dataclasses.asdict(ctx.data_config)}},
                         ctx.folder, model=trained.model, items={item.name: item for item in p.image_set.items})
    except Exception as err:  # noqa: BLE001
        metrics["notes"].append(f"No Grad-CAM heat maps: {err.__class__.__name__}: {err}")
    ctx.listener.on_stage_end("explain", None)


def _fit_head(features, columns: slice | None, splits, y, config) -> LinearHead:
    """The run's linear head on ``features`` (their ``columns``: one candidate block's), C chosen on
    the validation split, then refitted on the training and validation images together."""
    def rows(part):
        return data.Rows(features, splits[part]) if columns is None else data.take_rows(features, splits[part])[:, columns]

    return LinearHead(config.head, seed=config.seed, refit=True).fit(
        rows("train"), y[splits["train"]], rows("val"), y[splits["val"]])


def _choose_layer(p: _Prepared, config, fewest_blocks_left: int = 0) -> tuple[int, slice, LinearHead, str]:
    """``feature_cut='auto'``: LogME ranks the earlier candidate blocks on the training and validation
    images; a head on the best of them and one on the last layer each choose C on the validation
    split; then 5-fold cross-validation on training + validation at those C settles which features
    are better (one validation split of a small dataset picked a worse block by chance: it decides
    only C). A tie keeps the last layer. ``bench/recipe_vs_baseline.py`` measures the rule.

    ``fewest_blocks_left``: earlier blocks are candidates only when at least this many blocks stay
    below the cut's top (fine-tuning unfreezes them).

    Returns:
        ``(cut, columns of its features in p.features, its head, a note for the run)``."""
    from tl_core.transferability import logme

    slices = backbones.feature_slices(p.spec, p.base, candidate_cuts(p.spec.n_blocks))
    y, fit = p.decoded.y, np.concatenate([p.splits["train"], p.splits["val"]])
    last = _fit_head(p.features, slices[0], p.splits, y, config)
    early = {cut: columns for cut, columns in slices.items() if cut and p.spec.n_blocks - cut >= fewest_blocks_left}
    if not early or len(p.splits["val"]) == 0:
        return 0, slices[0], last, "Features from the last layer."
    fit_rows = data.take_rows(p.features, fit)
    ranked = max(early, key=lambda cut: logme(fit_rows[:, early[cut]], y[fit]))
    heads = {0: last, ranked: _fit_head(p.features, early[ranked], p.splits, y, config)}
    if len(fit) > CV_MAX_ROWS:  # a validation split this large is a steady judge; folds would take minutes
        scores = {cut: max(head.validation_scores_.values()) for cut, head in heads.items()}
    else:
        scores = {cut: head.cross_validated_accuracy(fit_rows[:, slices[cut]], y[fit]) for cut, head in heads.items()}
    chosen = ranked if scores[ranked] > scores[0] else 0
    other = ranked if chosen == 0 else 0
    where = lambda cut: f"{cut} blocks below the top" if cut else "the last layer"  # noqa: E731
    judge = ("cross-validated accuracy on the training and validation images" if len(fit) <= CV_MAX_ROWS
             else "accuracy on the validation images")
    note = (f"Features from {where(chosen)}: {judge} {scores[chosen]:.3f}, "
            f"against {scores[other]:.3f} from {where(other)} (of the earlier blocks "
            f"{', '.join(str(c) for c in early)} below the top, LogME ranked {ranked} first).")
    return chosen, slices[chosen], heads[chosen], note


def _train_linear_head(p: _Prepared, config, listener):
    splits, decoded, features = p.splits, p.decoded, p.features
    # scikit-learn fits in memory: the split's features (n x feature_dim), not its pixels.
    listener.on_stage_start("head", 1)
    notes, columns, feature_model = [], None, p.feature_model
    if config.feature_cut == FEATURE_CUT_AUTO:
        cut, columns, head, layer_note = _choose_layer(p, config)
        feature_model = backbones.build_feature_model(p.spec, p.base, p.size, cut=cut)
        notes.append(layer_note)
    else:
        cut, head = config.feature_cut, _fit_head(features, None, splits, decoded.y, config)
    listener.on_step("head", 1, {"C": head.C_})
    listener.on_stage_end("head", {"C": head.C_})
    W, b, mode = head.to_dense()
    logits = keras.layers.Dense(W.shape[1], name="head_logits", dtype="float32")
    x = logits(feature_model.output)
    logits.set_weights([W, b])
    if mode == "ovr":
        x = keras.layers.Activation("log_sigmoid", name="ovr_log_sigmoid", dtype="float32")(x)
    # The calibration's temperature (1 until it is fitted): softmax(scores / T).
    x = keras.layers.Rescaling(1.0, name=TEMPERATURE_LAYER, dtype="float32")(x)
    outputs = keras.layers.Activation("softmax", name="probabilities", dtype="float32")(x)
    model = keras.Model(feature_model.input, outputs, name=f"{feature_model.name}_{config.head}")
    notes.append(f"Linear head '{config.head}' on cached features; {head.describe()}")
    if head.held_out_proba_ is not None:
        notes.append("The head was refitted on the training and validation images, so its calibration (the temperature "
                     "and the plausible-class sets) comes "
                     "from the validation images' probabilities before that refit: the ones it had not trained on.")

    # Each split's features of the chosen block, read once: the probabilities and the "none of these" check.
    rows = {part: data.take_rows(features, idx) if columns is None else data.take_rows(features, idx)[:, columns]
            for part, idx in splits.items()}
    probabilities = {"test": head.predict_proba(rows["test"]),
                     "val": head.held_out_proba_ if head.held_out_proba_ is not None else head.predict_proba(rows["val"])}
    novelty = _fit_novelty(rows["train"], decoded.y[splits["train"]], rows["val"], rows["test"])
    return TrainedModel(model, {}, notes, feature_cut=cut, novelty=novelty), probabilities


def _trained_novelty(model, decoded, splits, batch_size: int):
    """The "none of these" check of a trained model (fine-tuned, from scratch) on its own features: one
    more forward pass over at most NOVELTY_MAX_ROWS images of each split (evenly spread, seeded)."""
    if len(splits["val"]) == 0:
        return None
    inner = features_model(model)
    rng = np.random.default_rng(0)
    sampled = {part: np.sort(rng.permutation(idx)[:NOVELTY_MAX_ROWS]) for part, idx in splits.items()}
    features = {part: inner.predict(data.make_batches(data.Rows(decoded.x, idx), None, batch_size), verbose=0)
                if len(idx) else np.zeros((0, 1)) for part, idx in sampled.items()}
    return _fit_novelty(features["train"], decoded.y[sampled["train"]], features["val"], features["test"])


def _fit_novelty(train, y_train, val, test):
    """The "none of these" check (tl_core.novelty) and the share of the test images it flags; ``None``
    without validation images (nothing to set its limit)."""
    if len(val) == 0:
        return None
    check = fit_novelty(train, y_train, val)
    check.test_flagged = float(check.flags(test).mean()) if len(test) else None
    return check


def _timing(timer: StageTimer, history, n_images: int, n_train: int, n_val: int) -> dict[str, dict[str, float]]:
    timing = {}
    for stage, seconds in timer.seconds.items():
        if stage in ("decode", "extract"):
            images = n_images
        elif stage in history:
            images = (n_train + n_val) * len(history[stage])
        else:
            images = 0
        timing[stage] = {"seconds": seconds, "images_per_second": images / seconds if seconds and images else None}
    return timing
