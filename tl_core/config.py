"""Frozen configuration dataclasses: everything a run needs to be repeated.

Change a config with :func:`dataclasses.replace`; call :meth:`validate` to get a
:class:`~tl_core.errors.ConfigError` that names the bad value instead of a failure mid-run.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from tl_core.errors import ConfigError

STRATEGIES = ("feature_extractor", "finetune", "scratch")
STRATEGY_LABELS = {"feature_extractor": "Feature extractor", "finetune": "Two-stage fine-tuning", "scratch": "From scratch"}
HEADS = ("softmax", "ovr", "svm")
# The frozen ConvNet's inference precision (tl_core.precision): auto, or one of the two forced.
PRECISIONS = ("auto", "float32", "bfloat16")
# What tl_core.precision's bfloat16 twin computes (2: BatchNormalization folded, the stem in float32): in the
# auto probe's record and the features cache key, so results of an older twin are never reused.
TWIN_VERSION = 2
# The model formats a finished run exports to (tl_core.export checks each against the app's model).
EXPORT_FORMATS = ("keras", "savedmodel", "tflite", "tflite-int8")
# TrainConfig.feature_cut's "auto": the feature extractor takes the last layer's features or those of
# the earlier block LogME ranks first among EARLY_CUTS, whichever scores better in cross-validation.
FEATURE_CUT_AUTO = -1
EARLY_CUTS = (2, 4, 6)  # candidate blocks below the top for earlier-layer features (advisor, auto)


def candidate_cuts(n_blocks: int) -> list[int]:
    """The blocks a backbone of ``n_blocks`` offers the feature extractor: the last layer (0) and
    those of :data:`EARLY_CUTS` it has."""
    return [0] + [c for c in EARLY_CUTS if c < n_blocks]


HEAD_NAMES = {"softmax": "softmax (multinomial logistic)", "ovr": "one-vs-rest logistic", "svm": "linear SVM"}
DEFAULT_MAX_PIXELS = 40_000_000
# How a picture becomes the model's square input (DataConfig.resize): padded to keep its shape, or stretched.
RESIZE_MODES = ("pad", "stretch")
DEFAULT_RESIZE = "pad"
DEFAULT_MAX_ZIP_BYTES = 8 * 1024**3
DEFAULT_MAX_ZIP_ENTRIES = 200_000
DEFAULT_MAX_ZIP_RATIO = 100.0
# An uploaded zip may expand to at most this many times its own size: images barely compress.
UPLOAD_ZIP_EXPANSION_ENV = "TL_MAX_ZIP_EXPANSION"
DEFAULT_UPLOAD_ZIP_EXPANSION = 4.0


def env_number(name: str, default: float) -> float:
    """The number in environment variable ``name``, or ``default`` when it is unset or empty.

    Raises:
        ConfigError: the variable holds something other than a number of 0 or more.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{name} is {raw!r}; it must be a number of 0 or more (e.g. {default:g}). "
                          "Fix it or unset it to use the default.")
    return value


@dataclass(frozen=True)
class DataConfig:
    """How images are read and split.

    Attributes:
        max_pixels: images with more pixels than this are skipped (decompression-bomb guard).
        val_fraction: share of each class held out for validation (early stopping, head tuning).
        test_fraction: share of each class held out for the final test metrics.
        seed: seed of the stratified split.
        max_zip_bytes: a zip whose files add up to more than this (uncompressed, as its directory
            declares) is refused before anything is extracted (zip-bomb guard).
        max_zip_entries: a zip with more files than this is refused before anything is extracted.
        max_zip_ratio: a zip member over 1 MiB that expands more than this many times is not
            extracted (a photo compresses a little; a zip bomb's member expands ~1000 times), and a
            zip whose extracted members would add up to over 1 MiB and expand more than this many
            times together is refused before anything is extracted (many small members).
        max_zip_expansion: the members a zip would extract may add up to at most this many times
            the zip's own size, checked before anything is extracted; ``None``: no such cap (a
            zip on one's own disk). :meth:`for_uploads` sets it for uploads.
        resize: how a picture becomes the model's square input: ``pad`` (the default) keeps its
            shape, its longer side made the input size and the rest filled with white; ``stretch``
            stretches it to the square, as Keras' loaders do. Padding measured better on clipart8,
            whose pictures are rarely square (``bench/recipe_vs_baseline.py``); on square pictures
            the two are the same.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES
    max_zip_entries: int = DEFAULT_MAX_ZIP_ENTRIES
    max_zip_ratio: float = DEFAULT_MAX_ZIP_RATIO
    max_zip_expansion: float | None = None
    resize: str = DEFAULT_RESIZE

    @classmethod
    def stored(cls, values: dict[str, Any] | None) -> DataConfig:
        """The data config a run or job recorded; runs from before ``resize`` existed stretched."""
        values = dict(values or {})
        values.setdefault("resize", "stretch")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def for_uploads(cls) -> DataConfig:
        """The limits of an uploaded zip: it may expand to ``$TL_MAX_ZIP_EXPANSION`` (default 4)
        times its size; 0 lifts that cap.

        Raises:
            ConfigError: ``$TL_MAX_ZIP_EXPANSION`` is not a number of 0 or more.
        """
        return cls(max_zip_expansion=env_number(UPLOAD_ZIP_EXPANSION_ENV, DEFAULT_UPLOAD_ZIP_EXPANSION) or None)

    def validate(self) -> DataConfig:
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"Unknown resize '{self.resize}'. Choose one of: {', '.join(RESIZE_MODES)}.")
        for name in ("max_pixels", "max_zip_bytes", "max_zip_entries", "max_zip_ratio", "max_zip_expansion"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} is {getattr(self, name)}; it must be a positive number.")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ConfigError(f"{name} is {value}; it must be between 0 and 0.5 (e.g. 0.15).")
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ConfigError(
                f"val_fraction + test_fraction is {self.val_fraction + self.test_fraction:.2f}; "
                "leave at least 20% of the images for training."
            )
        return self


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes:
        backbone: a name from :data:`tl_core.backbones.BACKBONES`.
        strategy: ``feature_extractor``, ``finetune`` (two stages) or ``scratch``.
        head: linear head of the feature extractor: ``softmax``, ``ovr`` or ``svm``.
        feature_cut: the feature extractor takes its features this many blocks below the top of
            the backbone (0: the last layer). Earlier features are more generic, which can help
            small datasets unlike ImageNet (Yosinski et al. 2014). :data:`FEATURE_CUT_AUTO` (-1,
            the default): the last layer or the earlier block of :data:`EARLY_CUTS` that LogME
            ranks first, whichever scores better in 5-fold cross-validation on training +
            validation (both come from the same forward pass). Two-stage fine-tuning with ``auto``
            ends its ConvNet at the block so chosen; training from scratch uses the last layer.
        weights: ``imagenet``, ``none`` (random initialisation) or a path to a weights file.
        image_size: side in pixels images are resized to; ``None`` takes the backbone's own.
        batch_size: images per training / extraction batch.
        epochs: maximum epochs of stage 1 (new layers only) or of training from scratch.
        fine_tune_epochs: maximum epochs of stage 2 (unfrozen blocks).
        unfreeze_blocks: blocks of the backbone unfrozen in stage 2, counted from the top;
            0 skips stage 2 and -1 unfreezes all of them.
        learning_rate: Adam learning rate of the new layers (stage 1, scratch).
        fine_tune_learning_rate: Adam learning rate of stage 2, kept small so the pretrained
            layers move slowly.
        dense_units: units of the new fully connected layer (0: none, softmax on the features).
        dropout: dropout before the new layers.
        patience: epochs without validation-loss improvement before early stopping.
        augment: random flip, rotation, zoom and contrast during training.
        cache_stages: without augmentation, two-stage fine-tuning runs the frozen part of the
            ConvNet once: stage 1 trains on cached pooled features, stage 2 on cached activations
            at the cut below the unfrozen blocks (float16). ``False`` runs both stages end to end
            on pixels (the canonical recipe; same result, slower).
        accelerate: on a GPU, mixed precision (float16 compute) and XLA-compiled training steps;
            ``False`` keeps float32 and no XLA (a model that misbehaves in float16). No effect on a CPU.
        seed: seed of weight initialisation, shuffling and augmentation.
        start_from_probe: two-stage fine-tuning's stage 1 is the feature extractor's linear probe
            (a softmax head on the cached features, C chosen on the validation split) folded into
            one Dense layer, and stage 2 fine-tunes from that solution (LP-FT, Kumar et al. 2022).
            ``False``: stage 1 trains a new fully connected layer with Adam (``dense_units``,
            ``dropout``, ``epochs``, ``learning_rate``). The default since
            ``bench/lpft_vs_two_stage.py`` measured it better than that on both shared datasets.
        precision: the frozen ConvNet's inference (feature extraction) in ``float32``, ``bfloat16``,
            or ``auto``: bfloat16 where this machine computes it faster (:mod:`tl_core.precision`).
            Heads, training and the saved model stay float32.
    """

    backbone: str = "mobilenet"
    strategy: str = "feature_extractor"
    head: str = "softmax"
    feature_cut: int = FEATURE_CUT_AUTO
    weights: str = "imagenet"
    image_size: int | None = None
    batch_size: int = 32
    epochs: int = 30
    fine_tune_epochs: int = 10
    unfreeze_blocks: int = 2
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-5
    dense_units: int = 256
    dropout: float = 0.3
    patience: int = 5
    augment: bool = False
    cache_stages: bool = True
    accelerate: bool = True
    seed: int = 42
    start_from_probe: bool = True
    precision: str = "auto"

    def validate(self) -> TrainConfig:
        from tl_core.backbones import BACKBONES  # local: backbones imports keras

        if self.backbone not in BACKBONES:
            raise ConfigError(
                f"Unknown backbone '{self.backbone}'. Choose one of: {', '.join(BACKBONES)}."
            )
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"Unknown strategy '{self.strategy}'. Choose one of: {', '.join(STRATEGIES)}."
            )
        if self.head not in HEADS:
            raise ConfigError(f"Unknown head '{self.head}'. Choose one of: {', '.join(HEADS)}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"Unknown precision '{self.precision}'. Choose one of: {', '.join(PRECISIONS)}.")
        if self.image_size is not None and not 32 <= self.image_size <= 1024:
            raise ConfigError(f"image_size is {self.image_size}; it must be between 32 and 1024 pixels.")
        checks = {
            "batch_size": self.batch_size >= 1,
            "epochs": self.epochs >= 1,
            "fine_tune_epochs": self.fine_tune_epochs >= 0,
            "unfreeze_blocks": self.unfreeze_blocks >= -1,
            "learning_rate": self.learning_rate > 0,
            "fine_tune_learning_rate": self.fine_tune_learning_rate > 0,
            "dense_units": self.dense_units >= 0,
            "dropout": 0.0 <= self.dropout < 1.0,
            "patience": self.patience >= 1,
            "feature_cut": self.feature_cut >= FEATURE_CUT_AUTO,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"{name} is {getattr(self, name)!r}, which is out of range.")
        spec = BACKBONES[self.backbone]
        if self.feature_cut > 0 and self.strategy != "feature_extractor":
            raise ConfigError("feature_cut (features from an earlier block) applies to the feature "
                              "extractor only; set it to 0 for fine-tuning or training from scratch.")
        if self.feature_cut >= spec.n_blocks:
            raise ConfigError(f"{spec.title} has {spec.n_blocks} blocks; feature_cut must be 0-{spec.n_blocks - 1}.")
        if self.strategy == "finetune" and self.unfreeze_blocks > spec.n_blocks:
            raise ConfigError(
                f"{spec.title} has {spec.n_blocks} blocks; cannot unfreeze {self.unfreeze_blocks}. "
                f"Use 1-{spec.n_blocks}, or -1 for all layers."
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def comparison(self) -> list[TrainConfig]:
        """The runs of "Compare strategies", on this config's backbone, size, split and seed.

        The feature extractor with a softmax and a one-vs-rest head, two-stage fine-tuning (at least
        the top 2 blocks unfrozen in stage 2) and training from scratch. The transfer runs use
        ImageNet weights unless this config names a weights file.
        """
        weights = self.weights if self.weights not in ("none", "None", "") else "imagenet"
        transfer = dataclasses.replace(self, weights=weights)
        blocks = self.unfreeze_blocks if self.unfreeze_blocks != 0 else 2
        return [
            dataclasses.replace(transfer, strategy="feature_extractor", head="softmax"),
            dataclasses.replace(transfer, strategy="feature_extractor", head="ovr"),
            dataclasses.replace(transfer, strategy="finetune", unfreeze_blocks=blocks,
                                feature_cut=FEATURE_CUT_AUTO if self.feature_cut == FEATURE_CUT_AUTO else 0,
                                fine_tune_epochs=self.fine_tune_epochs or 10),
            dataclasses.replace(self, strategy="scratch", weights="none", feature_cut=0),
        ]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


QUOTA_DATASET_MB_ENV = "TL_QUOTA_DATASET_MB"
QUOTA_QUEUED_RUNS_ENV = "TL_QUOTA_QUEUED_RUNS"
QUOTA_RUN_EPOCHS_ENV = "TL_QUOTA_RUN_EPOCHS"
QUOTA_REFERENCE_SIZE = 224  # a run's cost is counted in epochs at this image size


@dataclass(frozen=True)
class QuotaConfig:
    """What one workspace of a hosted app may use on the shared server; 0 lifts a quota.

    Attributes:
        dataset_mb: megabytes its saved datasets may take on disk (``$TL_QUOTA_DATASET_MB``).
        queued_runs: runs it may have queued or running at once (``$TL_QUOTA_QUEUED_RUNS``); a
            comparison counts all its runs.
        run_epochs: what one run may train, in epochs at 224 px: epochs x (image size / 224)²
            (``$TL_QUOTA_RUN_EPOCHS``); 200 allows 200 epochs at 224 px or 38 at 512 px.
    """

    dataset_mb: float = 500
    queued_runs: int = 20
    run_epochs: float = 200

    @classmethod
    def from_env(cls) -> QuotaConfig:
        """The quotas set by ``$TL_QUOTA_*``, the defaults where unset.

        Raises:
            ConfigError: a variable is not a number of 0 or more.
        """
        default = cls()
        return cls(
            dataset_mb=env_number(QUOTA_DATASET_MB_ENV, default.dataset_mb),
            queued_runs=int(env_number(QUOTA_QUEUED_RUNS_ENV, default.queued_runs)),
            run_epochs=env_number(QUOTA_RUN_EPOCHS_ENV, default.run_epochs),
        )


# "Compare strategies" trains each strategy on the same repeated stratified splits.
COMPARE_FEATURE_SPLITS = 5  # the feature extractor's heads: one more split only refits a head (seconds)
COMPARE_COSTLY_SPLITS = 3  # two-stage fine-tuning and from scratch train again on each split (a setting)
COMPARE_MAX_SPLITS = 10


def run_payload(config: TrainConfig, data_config: DataConfig, source: str, group: str | None = None) -> dict[str, Any]:
    """What a stored run records of its settings; the job worker rebuilds the run from it."""
    return {"train": config.to_dict(), "data": dataclasses.asdict(data_config), "source": source, "group": group}
