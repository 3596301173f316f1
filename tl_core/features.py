"""Run a frozen ConvNet once over a dataset and cache the pooled features on disk.

The features go into a memory-mapped ``.npy`` file as they are computed, so neither the pixels
(read from their own memory-mapped cache) nor the features of a large dataset are held in memory.
A :class:`FeaturePass` can also be fed the rows of a decoding pass as they are written, so the
network runs while the next images are decoded (:func:`decode_and_extract`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tl_core import data
from tl_core.config import DEFAULT_RESIZE, TWIN_VERSION, DataConfig
from tl_core.data.arrays import (
    RELEASE_BYTES,
    PageRelease,
    create_npy,
    iter_chunks,
    release_pages,
    take_rows,
    truncate_npy,
)
from tl_core.data.decode import DECODER_VERSION
from tl_core.errors import CancelledError
from tl_core.fsutil import temporary_path
from tl_core.progress import NullProgress, ProgressListener

FLOAT16_MAX = 60000.0  # outputs beyond float16's range (65,504) are kept as float32

# model -> {pixel dtype: its traced inference function}; an entry goes with its model.
_INFERENCE_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_function(model: keras.Model, dtype="uint8"):
    """``model`` in inference mode as a TensorFlow graph: a batch of raw pixels of ``dtype`` (any
    batch size) -> its outputs. Traced once per model and dtype, then reused by every pass over it
    (tracing MobileNet takes about as long as running it on 40 images on a 2-core CPU). The
    function holds the model weakly: it never keeps a model alive."""
    by_dtype = _INFERENCE_FUNCTIONS.setdefault(model, {})
    key = np.dtype(dtype).str
    if key not in by_dtype:
        model_ref = weakref.ref(model)
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.as_dtype(np.dtype(dtype)))
        by_dtype[key] = tf.function(
            lambda batch: model_ref()(tf.cast(batch, tf.float32), training=False), input_signature=[spec]
        )
    return by_dtype[key]


def features_key(hashes: list[str], backbone: str, weights_identity: str, image_size: int, cut: int = 0, *,
                 precision: str = "float32", resize: str = DEFAULT_RESIZE) -> str:
    """Cache key: the images (in order), how they were decoded (the decoder's version, padded or
    stretched), the backbone, its exact weights, the input size, the block the features come from
    (``-1``: every candidate block) and the precision they were computed in (``bfloat16`` keys
    name the twin's version)."""
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"features_key takes the precision chosen (float32 or bfloat16), not {precision!r}")
    layer = f"|cut{cut}" if cut else ""
    layer += f"|bf16v{TWIN_VERSION}" if precision == "bfloat16" else ""
    layer += "|stretch" if resize == "stretch" else ""
    digest = hashlib.sha256(f"{backbone}|{weights_identity}|{image_size}{layer}|decoder{DECODER_VERSION}\n".encode())
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
        cache_path: an ``.npy`` file; read if present, else written during the pass. Its name must
            tell precisions apart (``features_key(..., precision=...)``); the precision is the
            model's own (``precision.choose_precision`` gives the bfloat16 twin to pass).

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
    features = read_cached_features(cache_path, n, progress, stage) if cache_path is not None else None
    if features is not None:
        return features
    with FeaturePass(feature_model, n, batch_size, progress, None if cache_path is None else cache_path.parent,
                     stage) as feature_pass:
        return feature_pass.finish(x, n, cache_path)


def read_cached_features(cache_path: Path, n: int, progress: ProgressListener, stage: str = "extract"):
    """The cached features of ``n`` images at ``cache_path`` (reported as a finished stage), or ``None``."""
    features = _read_cache(Path(cache_path), n)
    if features is not None:
        progress.on_stage_start(stage, n)
        progress.on_step(stage, n, {"cached": 1.0})
        progress.on_stage_end(stage, {"cached": 1.0})
    return features


class OutputRows:
    """A network's outputs for ``shape[0]`` inputs, written a batch at a time: float16 (half the
    memory and disk; pooled ConvNet features and activations need no more) while every value fits
    its range, float32 from the first batch with a value that does not (the rows written so far are
    copied once, with their float16 precision). NaN does not count as out of range.

    Args:
        shape: the rows' shape, the first axis the number of inputs.
        file: the ``.npy`` file the rows are mapped from; ``None`` keeps them in memory.
        anonymous: the file's name is removed as soon as it is created (POSIX): its disk space comes
            back when the array is dropped, even if the process is killed.
    """

    def __init__(self, shape: tuple[int, ...], file: Path | None = None, anonymous: bool = False) -> None:
        self.shape, self.file, self.anonymous = tuple(shape), file, anonymous
        self.array = self._new(np.float16, file)
        self.pages = PageRelease(self.array)

    def _new(self, dtype, path: Path | None) -> np.ndarray:
        if path is None:
            return np.empty(self.shape, dtype)
        if self.anonymous:
            path = temporary_path(path)
        array = create_npy(path, self.shape, dtype)
        if self.anonymous:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        return array

    def write(self, start: int, values: np.ndarray) -> None:
        """Rows ``start..start + len(values)``."""
        if self.array.dtype == np.float16 and bool(np.any(np.abs(values) >= FLOAT16_MAX)):
            self._widen(start)
        self.array[start : start + len(values)] = values
        self.pages.count(values.nbytes)

    def _widen(self, n_rows: int) -> None:
        named = self.file is not None and not self.anonymous
        # A named file's float32 rows are written beside it, then take its name.
        beside = temporary_path(self.file) if named else self.file
        wide = self._new(np.float32, beside)
        step = max(1, RELEASE_BYTES // (wide.itemsize * int(np.prod(self.shape[1:]))))
        for start, rows in iter_chunks(self.array[:n_rows], step, written=[wide]):
            wide[start : start + len(rows)] = rows
        if named:
            os.replace(beside, self.file)
        self.array, self.pages = wide, PageRelease(wide)

    def publish(self, n: int, path: Path | None = None) -> np.ndarray:
        """The first ``n`` rows. With ``path`` (a named ``file`` only), the file cut to them and moved
        there, then mapped read-only from it; without, in memory."""
        self.pages.release()
        if path is None:
            return self.array[:n] if self.file is None and n == len(self.array) else np.array(self.array[:n])
        self.array.flush()
        self.array = None  # the mapping closes before the file changes
        truncate_npy(self.file, n)
        shutil.move(self.file, path)  # a rename on the same file system
        return np.load(path, mmap_mode="r", allow_pickle=False)


class FeaturePass:
    """One forward pass of the frozen ConvNet, fed rows as they become available.

    ``feed(x, n_ready)`` runs every whole batch among the first ``n_ready`` rows of ``x`` not yet
    run, so it can be handed to ``data.decode_dataset(on_rows=...)``: the network then works on
    the images decoded so far while the decoding threads go on with the next ones.
    ``finish(x, n)`` runs what is left and returns the features of the ``n`` rows. Use it as a
    context manager: its scratch file is removed however the pass ends.

    Args:
        feature_model: raw pixels -> feature vector.
        n_max: the most rows there can be (the number of images before any is skipped).
        batch_size: images per forward pass.
        progress: receives ``stage`` with one step per image (on the calling thread).
        folder: where the features are written (:class:`OutputRows`) before they take their cache
            file's name; ``None`` keeps them in memory.
        stage: the progress stage's name.
    """

    def __init__(self, feature_model, n_max: int, batch_size: int, progress: ProgressListener,
                 folder: Path | None = None, stage: str = "extract") -> None:
        self.batch_size, self.progress, self.stage = batch_size, progress, stage
        self.feature_model = feature_model
        self.scratch = None if folder is None else temporary_path(Path(folder) / "features.npy")
        self.rows: OutputRows | None = OutputRows((n_max, feature_model.output_shape[-1]), self.scratch)
        self.n_max = n_max
        self.done = 0
        self.pages: PageRelease | None = None  # of the rows read (the array fed changes once, at finish)
        self.stage_open = False  # the stage starts with the first batch, after the pass feeding it

    def __enter__(self) -> FeaturePass:
        return self

    def __exit__(self, *exc) -> None:
        if self.stage_open:  # cancelled, failed or left unfinished: the stage still ends
            self._end_stage(None)
        self.rows = None
        if self.scratch is not None:  # gone already when the features were published
            with contextlib.suppress(OSError):
                self.scratch.unlink(missing_ok=True)

    def feed(self, x, n_ready: int, last: bool = False) -> None:
        """Runs the whole batches among rows ``done..n_ready`` of ``x`` (with ``last``, the rest too)."""
        while n_ready - self.done >= (1 if last else self.batch_size):
            if not self.stage_open:
                self.stage_open = True
                self.progress.on_stage_start(self.stage, self.n_max)
            if self.progress.should_stop():
                raise CancelledError("Cancelled during feature extraction.")
            end = min(self.done + self.batch_size, n_ready)
            batch = take_rows(x, np.arange(self.done, end))
            self.rows.write(self.done, np.asarray(inference_function(self.feature_model, batch.dtype)(batch)))
            if self.pages is None or self.pages.arrays[0] is not x:
                self.pages = PageRelease(x)
            self.pages.count(batch.nbytes)
            self.done = end
            self.progress.on_step(self.stage, end, None)

    def _end_stage(self, logs: dict | None) -> None:
        if not self.stage_open:
            self.progress.on_stage_start(self.stage, self.n_max)
        self.stage_open = False
        self.progress.on_stage_end(self.stage, logs)

    def finish(self, x, n: int, cache_path: Path | None = None) -> np.ndarray:
        """The features of the ``n`` rows of ``x`` (float16 when they fit, else float32); with
        ``cache_path`` (a pass given a ``folder``, on the same file system), moved to that file
        and mapped read-only from it."""
        self.feed(x, n, last=True)
        release_pages(x)
        self._end_stage({"images": float(n)})
        return self.rows.publish(n, None if cache_path is None else Path(cache_path))


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


def decode_and_extract(
    image_set: data.ImageSet,
    size: int,
    data_config: DataConfig,
    *,
    cache_dir: Path,
    feature_model: keras.Model,
    features_path: Callable[[list], Path],
    batch_size: int,
    progress: ProgressListener,
    need_features: bool = True,
) -> tuple[data.DecodedDataset, Any]:
    """The decoded images and (with ``need_features``) their features, each from its cache if there.

    Images decoded from files go through the frozen ConvNet as they are decoded: the network runs
    on each batch as soon as it exists, while lowest-priority threads decode the next images on the
    cores it leaves idle. Not when the features of these files are cached already (their hashes,
    read first, say so: a re-upload of the same files).

    Args:
        cache_dir: holds ``decoded/`` (pixels) and ``features/`` (features and the pass's scratch file).
        features_path: the features' cache file for a list of image hashes.
        batch_size: images per forward pass.

    Returns:
        ``(decoded, features)``; ``features`` is ``None`` without ``need_features`` or after a cancel.
    """
    decoded_dir = Path(cache_dir) / "decoded"
    decoded = data.cached_decode(image_set, size, data_config, decoded_dir, progress)
    if decoded is None and need_features and not _features_of_files_cached(image_set, cache_dir, features_path):
        with FeaturePass(feature_model, len(image_set.items), batch_size, progress, Path(cache_dir) / "features") as feature_pass:
            decoded = data.decode_dataset(image_set, size, data_config, progress, decoded_dir, on_rows=feature_pass.feed)
            path = features_path(decoded.hashes)
            if not progress.should_stop() and not path.exists():  # else: cancelled; or skipped images, the rest cached
                return decoded, feature_pass.finish(decoded.x, len(decoded.x), path)
    if decoded is None:
        decoded = data.decode_dataset(image_set, size, data_config, progress, decoded_dir)
    if not need_features or progress.should_stop():
        return decoded, None
    return decoded, extract_features(feature_model, decoded.x, batch_size, progress, features_path(decoded.hashes))


def _features_of_files_cached(image_set: data.ImageSet, cache_dir: Path, features_path) -> bool:
    """Whether the features of every file of ``image_set`` are cached (when every image decodes:
    the usual case). Reads the files only when some features are cached at all."""
    if not any((Path(cache_dir) / "features").glob("*.npy")):
        return False
    hashes = data.file_hashes(image_set)
    return None not in hashes and features_path(hashes).exists()
