"""Likely label errors: out-of-fold probabilities from the cached features, ranked by confident learning.

Real datasets carry wrong labels (about 3% of the test labels of ten common benchmarks, Northcutt et
al., NeurIPS 2021). A linear head on the frozen ConvNet's features is fitted k times, each time on
the other folds, so every image gets probabilities from a model that never saw its label. Confident
learning (Northcutt et al., JAIR 2021; the ``cleanlab`` package, which implements it and is
maintained by its authors) estimates each class's confidence threshold from those probabilities and
flags the images whose given label the evidence contradicts, most likely first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from tl_core.errors import DataError

N_FOLDS = 5
HEAD_C = 0.01  # no C search inside each fold (k fits, not 4k); 0.01 ranked flipped labels best of 0.01-1 (bench)


@dataclass(frozen=True)
class LabelIssue:
    """One image whose label the out-of-fold evidence contradicts."""

    file: str  # relative to the dataset's root: class/file.jpg
    given: str
    suggested: str
    score: float  # 1 - the out-of-fold probability of the given label: higher is more likely wrong

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def out_of_fold_probabilities(features, labels, *, n_folds: int = N_FOLDS, seed: int = 0) -> np.ndarray:
    """``(n, n_classes)`` probabilities of each image from a softmax head fitted on the other folds.

    Raises:
        DataError: a class with fewer than 2 images (it cannot be in two folds).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from tl_core.heads import head_blas_threads

    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if counts.size < 2 or counts[counts > 0].min() < 2:
        raise DataError("Looking for label errors needs at least 2 classes with 2 or more images each.")
    folds = int(min(n_folds, counts[counts > 0].min()))
    head = make_pipeline(StandardScaler(), LogisticRegression(C=HEAD_C, max_iter=3000, random_state=seed))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=head_blas_threads(), user_api="blas"):
        return cross_val_predict(head, np.asarray(features, np.float64), labels, cv=cv, method="predict_proba")


def find_label_issues(features, labels, class_names: list[str], files: list[str], *, n_folds: int = N_FOLDS,
                      seed: int = 0) -> list[LabelIssue]:
    """The images whose given label is likely wrong, most likely first.

    Args:
        features: ``(n, d)`` features of the images (from the frozen ConvNet).
        labels: the given class index of each image.
        class_names: the name of each class index.
        files: each image's name (relative to the dataset's root).
    """
    from cleanlab.filter import find_label_issues as flagged

    labels = np.asarray(labels)
    probabilities = out_of_fold_probabilities(features, labels, n_folds=n_folds, seed=seed)
    ranked = flagged(labels, probabilities, return_indices_ranked_by="self_confidence")
    return [LabelIssue(file=files[i], given=class_names[labels[i]], suggested=class_names[int(probabilities[i].argmax())],
                       score=float(1.0 - probabilities[i, labels[i]])) for i in ranked]


def label_issues_for(source, *, backbone: str = "mobilenet", weights: str = "imagenet", image_size: int | None = None,
                     data_config=None, cache_dir=None, progress=None, precision: str = "auto") -> list[LabelIssue]:
    """Likely label errors of a dataset (a folder of class folders, or a zip), from its features.

    The images are decoded and pushed through the frozen ConvNet as a feature-extractor run does it
    (both caches in ``cache_dir`` when given: a later run reuses them).

    Raises:
        WeightsUnavailableError: offline without the backbone's weights. DataError: unreadable data,
            or a class with fewer than 2 images.
    """
    from pathlib import Path

    from tl_core import backbones, data
    from tl_core.config import DataConfig
    from tl_core.features import extract_features, features_key
    from tl_core.precision import choose_precision
    from tl_core.progress import NullProgress

    data_config = data_config or DataConfig()
    progress = progress or NullProgress()
    spec = backbones.get_spec(backbone)
    size = image_size or spec.input_size
    image_set = data.load_images(source, data_config)
    decoded = data.decode_dataset(image_set, size, data_config, progress,
                                  None if cache_dir is None else Path(cache_dir) / "decoded")
    resolved = backbones.resolve_weights(spec, weights)
    model = backbones.build_feature_model(spec, backbones.build_base(spec, resolved, size), size)
    chosen, model = choose_precision(precision, model, backbone=spec.name, image_size=size, cache_dir=cache_dir)
    path = None
    if cache_dir is not None:
        identity = resolved.identity + ("|bf16" if chosen == "bfloat16" else "")
        path = Path(cache_dir) / "features" / (features_key(decoded.hashes, spec.name, identity, size) + ".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
    features = extract_features(model, decoded.x, 32, progress, path)
    files = [PurePosixPath(name).as_posix() for name in decoded.names]
    return find_label_issues(features, decoded.y, decoded.class_names, files)
