"""Likely label errors: out-of-fold probabilities from the cached features, ranked by confident learning.

Real datasets carry wrong labels (about 3% of the test labels of ten common benchmarks, Northcutt et
al., NeurIPS 2021). A linear head on the frozen ConvNet's features is fitted k times, each time on
the other folds, so every image gets probabilities from a model that never saw its label. Confident
learning (Northcutt et al., JAIR 2021; the ``cleanlab`` package, which implements it and is
maintained by its authors) estimates each class's confidence threshold from those probabilities and
flags the images whose given label the evidence contradicts, most likely first.

Two entry points: :func:`find_label_issues` on features already computed, and
:func:`label_issues_for` from a dataset (folder or zip) to its issues, through the engine's own
loading, decoding and feature caches (a later run on the same images reuses them, and vice versa).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tl_core.errors import CancelledError, ConfigError, DataError

N_FOLDS = 5
HEAD_C = 0.01  # no C search inside each fold (k fits, not 4k); 0.01 ranked flipped labels best of 0.01-1 (bench)
RANKED_BY = "self_confidence"  # cleanlab's ranking: the out-of-fold probability of the given label, lowest first


@dataclass(frozen=True)
class LabelIssue:
    """One image whose label the out-of-fold evidence contradicts.

    Attributes:
        file: the image, relative to the dataset's root (``class/file.jpg``, ``/`` separators).
        given: its class as labelled.
        suggested: the class the out-of-fold head finds most likely.
        score: 1 - the out-of-fold probability of the given label (1 - cleanlab's self-confidence
            label quality), in [0, 1]: higher is more likely wrong.
    """

    file: str
    given: str
    suggested: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        """``{"file", "given", "suggested", "score"}``, for JSON."""
        return asdict(self)


def _check_labels(labels: np.ndarray, class_names: list[str] | None = None) -> np.ndarray:
    """The images per class index; raises unless there are 2+ classes, each with 2+ images."""
    if labels.ndim != 1 or (labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0)):
        raise DataError("Labels must be one non-negative class index per image.")
    if class_names is not None and labels.size and labels.max() >= len(class_names):
        raise DataError(f"Label {int(labels.max())} has no class name: there are {len(class_names)} class names.")
    counts = np.bincount(labels) if labels.size else np.zeros(0, int)
    present = np.flatnonzero(counts)
    if present.size < 2:
        raise DataError(f"Looking for label errors needs at least 2 classes with 2 or more images each; "
                        f"the data has {present.size} class(es).")
    small = [int(c) for c in present if counts[c] < 2]
    if small:
        named = ", ".join(f"'{class_names[c]}'" if class_names is not None else str(c) for c in small)
        raise DataError(f"Looking for label errors needs at least 2 classes with 2 or more images each: class(es) "
                        f"{named} have 1 image (each image is scored by a model fitted on the others of its class). "
                        "Add images to them or leave them out.")
    return counts


def out_of_fold_probabilities(features, labels, *, n_folds: int = N_FOLDS, seed: int = 0) -> np.ndarray:
    """Each image's class probabilities from a softmax head fitted on the other folds.

    Standardised features, multinomial logistic regression at C = :data:`HEAD_C`, stratified
    folds (shuffled with ``seed``), as many as ``n_folds`` but no more than the smallest class has
    images; fitted with the heads' BLAS thread limit (``tl_core.heads``).

    Args:
        features: ``(n, d)`` feature rows (an array or a memory-mapped cache).
        labels: ``(n,)`` class indices; only the classes present get a column.
        n_folds: folds at most (2 or more).
        seed: the folds' shuffle and the solver's random state.

    Returns:
        ``(n, k)`` float64 probabilities, column ``j`` for the ``j``-th smallest class index present.

    Raises:
        DataError: fewer than 2 classes, or a class with fewer than 2 images (it cannot be in two folds).
        ConfigError: ``n_folds`` below 2.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from tl_core.heads import head_blas_threads

    if int(n_folds) < 2:
        raise ConfigError(f"n_folds must be 2 or more (each image is scored by a head fitted on the other folds); "
                          f"got {n_folds}.")
    labels = np.asarray(labels)
    counts = _check_labels(labels)
    if len(features) != len(labels):
        raise DataError(f"{len(features)} feature rows for {len(labels)} labels: there must be one row per image.")
    folds = int(min(n_folds, counts[counts > 0].min()))
    head = make_pipeline(StandardScaler(), LogisticRegression(C=HEAD_C, max_iter=3000, random_state=seed))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=head_blas_threads(), user_api="blas"):
        return cross_val_predict(head, np.asarray(features, np.float64), labels, cv=cv, method="predict_proba")


def find_label_issues(features, labels, class_names: list[str], files: list[str], *, n_folds: int = N_FOLDS,
                      seed: int = 0) -> list[LabelIssue]:
    """The images whose given label is likely wrong, most likely first.

    Out-of-fold probabilities (:func:`out_of_fold_probabilities`), then confident learning
    (``cleanlab.filter.find_label_issues``, its default ``prune_by_noise_rate`` filter) flags the
    images and ranks them by self-confidence: the lowest out-of-fold probability of the given label
    first. Deterministic for a given ``seed``.

    Args:
        features: ``(n, d)`` features of the images (from the frozen ConvNet; an array or a
            memory-mapped cache).
        labels: ``(n,)`` the given class index of each image (into ``class_names``). A class
            without images (all of its files unreadable, say) is allowed.
        class_names: the name of each class index.
        files: each image's name, returned as is in :attr:`LabelIssue.file` (relative to the
            dataset's root, as ``DecodedDataset.names`` has them).
        n_folds: folds at most; fewer when the smallest class has fewer images.
        seed: the folds' shuffle and the heads' random state.

    Returns:
        The flagged images as :class:`LabelIssue`, scores non-increasing; empty when no label
        looks wrong.

    Raises:
        DataError: fewer than 2 classes, a class with fewer than 2 images, or ``features``, ``labels``
            and ``files`` of different lengths.
        ConfigError: ``n_folds`` below 2.
    """
    from cleanlab.filter import find_label_issues as flag_issues

    labels = np.asarray(labels)
    _check_labels(labels, class_names)
    if not len(features) == len(labels) == len(files):
        raise DataError(f"{len(features)} feature rows, {len(labels)} labels and {len(files)} file names: "
                        "there must be one of each per image.")
    present, encoded = np.unique(labels, return_inverse=True)  # cleanlab wants classes 0..k-1, each present
    probabilities = out_of_fold_probabilities(features, encoded, n_folds=n_folds, seed=seed)
    # n_jobs=1: no process pool (forking a process that runs TensorFlow threads can deadlock; and for a
    # few classes, starting the pool costs more than the work: 7 ms instead of 56 ms for 560 images).
    ranked = flag_issues(encoded, probabilities, return_indices_ranked_by=RANKED_BY, n_jobs=1)
    return [LabelIssue(file=str(files[i]), given=class_names[int(labels[i])],
                       suggested=class_names[int(present[probabilities[i].argmax()])],
                       score=float(np.clip(1.0 - probabilities[i, encoded[i]], 0.0, 1.0))) for i in ranked]


def label_issues_for(source, *, backbone: str = "mobilenet", weights: str = "imagenet", image_size: int | None = None,
                     data_config=None, cache_dir=None, progress=None, precision: str = "auto", n_folds: int = N_FOLDS,
                     seed: int = 0) -> list[LabelIssue]:
    """Likely label errors of a dataset (a folder of class folders, or a zip), from its features.

    The images are loaded, decoded and pushed through the frozen ConvNet as a feature-extractor run
    does it (``features.decode_and_extract``: the network runs while the next images decode), with the
    same caches: given ``cache_dir`` (``RunStore.cache_dir``), pixels and features are read from and
    written to it, so a run on the same images and backbone reuses them, and a second call takes a
    second or so. Then :func:`find_label_issues`.

    Args:
        source: a folder of class folders, or a ``.zip`` of them (what ``data.load_images`` takes).
        backbone: a ``backbones.BACKBONES`` name.
        weights: ``imagenet``, ``none`` or a weights file path.
        image_size: input size; ``None``: the backbone's own (224 for mobilenet).
        data_config: a ``config.DataConfig`` (the image size limit); ``None``: the defaults.
        cache_dir: where the caches live; ``None``: a temporary folder, removed afterwards.
        progress: a ``progress.ProgressListener`` (stages ``decode`` and ``extract``); it can cancel.
        precision: ``auto``, ``float32`` or ``bfloat16`` for the forward passes (``precision.choose_precision``).
        n_folds, seed: as :func:`find_label_issues`.

    Returns:
        As :func:`find_label_issues`, with :attr:`LabelIssue.file` relative to the dataset's root
        (``class/file.png``, ``/`` separators).

    Raises:
        WeightsUnavailableError: offline without the backbone's weights.
        DataError: unreadable data, fewer than 2 classes, or a class with fewer than 2 readable images.
        ConfigError: an unknown backbone or precision, or a weights path that does not exist.
        CancelledError: the listener asked to stop.
    """
    from tl_core import backbones, data
    from tl_core.config import DataConfig
    from tl_core.features import decode_and_extract, features_key
    from tl_core.hardware import inference_batch, jit_compile
    from tl_core.precision import choose_precision
    from tl_core.progress import NullProgress

    data_config = data_config or DataConfig()
    progress = progress or NullProgress()
    spec = backbones.get_spec(backbone)
    size = image_size or spec.input_size
    image_set = data.load_images(source, data_config)
    resolved = backbones.resolve_weights(spec, weights, seed)
    model = backbones.build_feature_model(spec, backbones.build_base(spec, resolved, size, seed), size)
    with tempfile.TemporaryDirectory(prefix="tl-label-issues-") if cache_dir is None \
            else contextlib.nullcontext(str(cache_dir)) as folder:
        chosen, inference_model = choose_precision(precision, model, backbone=spec.name, image_size=size,
                                                   cache_dir=folder)
        # The runner's key (runner._prepare): the same images, weights and precision share one cache file.
        identity = resolved.identity + ("|mixed" if jit_compile() else "")

        def features_path(hashes) -> Path:
            key = features_key(hashes, spec.name, identity, size, precision=chosen, resize=data_config.resize)
            return Path(folder) / "features" / (key + ".npy")

        (Path(folder) / "features").mkdir(parents=True, exist_ok=True)
        decoded, features = decode_and_extract(image_set, size, data_config, cache_dir=Path(folder),
                                               feature_model=inference_model, features_path=features_path,
                                               batch_size=inference_batch(32), progress=progress)
        if features is None or progress.should_stop():
            raise CancelledError("Cancelled while looking for label errors.")
        files = [PurePosixPath(str(name).replace("\\", "/")).as_posix() for name in decoded.names]
        return find_label_issues(features, decoded.y, list(decoded.class_names), files, n_folds=n_folds, seed=seed)

