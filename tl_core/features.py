"""Run a frozen ConvNet once over a dataset and cache the pooled features on disk.

The features go into a memory-mapped ``.npy`` file as they are computed, so neither the pixels
(read from their own memory-mapped cache) nor the features of a large dataset are held in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tl_core.data import create_npy, iter_chunks, temporary_path
from tl_core.errors import CancelledError
from tl_core.progress import NullProgress, ProgressListener

FLOAT16_MAX = 60000.0  # features beyond float16's range (65,504) are kept as float32
CONVERT_ROWS = 4096  # feature rows converted to float16 at a time


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
    x,
    batch_size: int = 32,
    progress: ProgressListener | None = None,
    cache_path: Path | None = None,
    stage: str = "extract",
) -> np.ndarray:
    """Pooled features of every image, computed in inference mode, optionally cached.

    Args:
        feature_model: raw pixels -> feature vector (see ``backbones.build_feature_model``).
        x: ``(n, size, size, 3)`` uint8 pixels: an array, a memory-mapped cache or ``data.Rows``.
        batch_size: images per forward pass.
        progress: receives ``stage`` with one step per image.
        cache_path: an ``.npy`` file; read if present, else written during the pass.

    Returns:
        ``(n, feature_dim)`` float16 features (half the disk and memory; pooled ConvNet features
        need no more), float32 if some are beyond float16's range. With ``cache_path``, the cache
        file mapped read-only: a run that computes them sees exactly what a later run reading the
        cache sees, and they take no memory until read.

    Raises:
        CancelledError: the listener asked to stop.
    """
    progress = progress or NullProgress()
    n = len(x)
    cache_path = None if cache_path is None else Path(cache_path)
    features = _read_cache(cache_path, n) if cache_path is not None else None
    if features is not None:
        progress.on_stage_start(stage, n)
        progress.on_step(stage, n, {"cached": 1.0})
        progress.on_stage_end(stage, {"cached": 1.0})
        return features

    shape = (n, feature_model.output_shape[-1])
    if cache_path is None:
        raw = np.empty(shape, np.float32)
        fits_float16 = _forward_pass(feature_model, x, batch_size, progress, stage, raw)
        return raw.astype(np.float16) if fits_float16 else raw
    # float32 first, in a file beside the cache: whether float16 holds them is known at the end.
    scratch, final = temporary_path(cache_path), temporary_path(cache_path)
    try:
        raw = create_npy(scratch, shape, np.float32)
        fits_float16 = _forward_pass(feature_model, x, batch_size, progress, stage, raw)
        if fits_float16:
            features = create_npy(final, shape, np.float16)
            for start, rows in iter_chunks(raw, CONVERT_ROWS, written=[features]):
                features[start : start + len(rows)] = rows
            features.flush()
            os.replace(final, cache_path)
        else:
            raw.flush()
            os.replace(scratch, cache_path)
    finally:
        for path in (scratch, final):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    return np.load(cache_path, mmap_mode="r", allow_pickle=False)


def _forward_pass(feature_model, x, batch_size: int, progress: ProgressListener, stage: str, out) -> bool:
    """Writes the features of ``x`` into ``out``, batch by batch; whether they all fit float16."""
    forward = tf.function(lambda batch: feature_model(tf.cast(batch, tf.float32), training=False))
    progress.on_stage_start(stage, len(x))
    fits_float16 = True
    for start, batch in iter_chunks(x, batch_size, written=[out]):
        if progress.should_stop():
            raise CancelledError("Cancelled during feature extraction.")
        values = np.asarray(forward(batch))
        out[start : start + len(values)] = values
        fits_float16 = fits_float16 and float(np.abs(values).max(initial=0.0)) < FLOAT16_MAX  # NaN: no
        progress.on_step(stage, start + len(values), None)
    progress.on_stage_end(stage, {"images": float(len(x))})
    return fits_float16


def _read_cache(path: Path, n: int) -> np.ndarray | None:
    """The cached features of ``n`` images, mapped read-only; ``None`` when absent, damaged or for
    another number of images (they are then computed again). Never unpickles."""
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if features.ndim != 2 or features.dtype.kind != "f" or features.shape[0] != n:
        return None
    return features
