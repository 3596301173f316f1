"""Run a frozen ConvNet once over a dataset and cache the pooled features on disk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tl_core.errors import CancelledError
from tl_core.progress import NullProgress, ProgressListener

FLOAT16_MAX = 60000.0  # features beyond float16's range (65,504) are kept as float32


def features_key(hashes: list[str], backbone: str, weights_identity: str, image_size: int, cut: int = 0) -> str:
    """Cache key: the images (in order), the backbone, its exact weights, the input size and the
    block the features come from."""
    layer = f"|cut{cut}" if cut else ""
    digest = hashlib.sha256(f"{backbone}|{weights_identity}|{image_size}{layer}\n".encode())
    for h in hashes:
        digest.update(h.encode())
    return digest.hexdigest()[:32]


def extract_features(
    feature_model: keras.Model,
    x: np.ndarray,
    batch_size: int = 32,
    progress: ProgressListener | None = None,
    cache_path: Path | None = None,
    stage: str = "extract",
) -> np.ndarray:
    """Pooled features of every image, computed in inference mode, optionally cached.

    Args:
        feature_model: raw pixels -> feature vector (see ``backbones.build_feature_model``).
        x: ``(n, size, size, 3)`` uint8 pixels.
        batch_size: images per forward pass.
        progress: receives ``stage`` with one step per image.
        cache_path: an ``.npy`` file; read if present, written after a full pass.

    Returns:
        ``(n, feature_dim)`` float32 features, rounded to float16 precision: the cache keeps them
        as float16 (half the disk and memory; pooled ConvNet features need no more), and a run
        that computes them sees exactly what a later run reading the cache sees.

    Raises:
        CancelledError: the listener asked to stop.
    """
    progress = progress or NullProgress()
    n = len(x)
    features = _read_cache(cache_path) if cache_path is not None else None
    if features is not None:
        if features.shape[0] == n:
            progress.on_stage_start(stage, n)
            progress.on_step(stage, n, {"cached": 1.0})
            progress.on_stage_end(stage, {"cached": 1.0})
            return features.astype(np.float32)

    forward = tf.function(lambda batch: feature_model(tf.cast(batch, tf.float32), training=False))
    progress.on_stage_start(stage, n)
    chunks = []
    for start in range(0, n, batch_size):
        if progress.should_stop():
            raise CancelledError("Cancelled during feature extraction.")
        chunks.append(np.asarray(forward(x[start : start + batch_size])))
        progress.on_step(stage, min(start + batch_size, n), None)
    features = np.concatenate(chunks) if chunks else np.zeros((0, feature_model.output_shape[-1]), np.float32)
    progress.on_stage_end(stage, {"images": float(n)})
    if features.size == 0 or float(np.abs(features).max()) < FLOAT16_MAX:
        features = features.astype(np.float16)

    if cache_path is not None:
        cache_path = Path(cache_path)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp.npy")
        try:
            np.save(tmp, features, allow_pickle=False)
            os.replace(tmp, cache_path)
        finally:
            tmp.unlink(missing_ok=True)
    return features.astype(np.float32)


def _read_cache(path) -> np.ndarray | None:
    """A cached feature array, or ``None`` when absent or damaged (it is then rebuilt). Never unpickles."""
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return features if features.ndim == 2 and features.dtype.kind == "f" else None
