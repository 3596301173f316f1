"""``tf.data`` batches read from pixels (or features) on disk: the data package's only TensorFlow use."""

from __future__ import annotations

import numpy as np

from tl_core.data.arrays import PageRelease, take_rows

def make_batches(
    x,
    y: np.ndarray | None,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
):
    """A ``tf.data`` pipeline over uint8 pixels (or features): shuffle, batch, cast to float32, prefetch.

    Only row positions go through ``tf.data``; each batch's rows are read from ``x`` (an array, a
    memory-mapped cache or :class:`Rows` of one) when the batch is made, so memory holds a few
    batches, never the dataset. ``shuffle`` permutes all positions with ``seed``, anew each epoch.
    """
    import tensorflow as tf

    n = len(x)
    positions = tf.data.Dataset.range(n)
    if shuffle:
        # A full shuffle: positions are 8 bytes each, and a partial one on class-sorted files
        # would fill whole batches with one class.
        positions = positions.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    reader = _BatchReader(x, y)
    out_types = [tf.as_dtype(x.dtype)] + ([] if y is None else [tf.as_dtype(reader.y.dtype)])

    def load(batch):
        tensors = tf.numpy_function(reader, [batch], out_types, name="read_rows")
        images = tf.cast(tensors[0], tf.float32)
        images.set_shape((None, *x.shape[1:]))
        if y is None:
            return images
        labels = tensors[1]
        labels.set_shape((None,))
        return images, labels

    return positions.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class _BatchReader:
    """Reads the rows (and labels) of a batch of positions of ``x`` (:func:`take_rows`); pages an
    array read through its mapping brought in are released as reading goes (:class:`PageRelease`):
    scattered rows map far more than their own bytes."""

    def __init__(self, x, y: np.ndarray | None) -> None:
        self.x = x
        self.y = None if y is None else np.asarray(y)
        self.pages = PageRelease(x)

    def __call__(self, positions: np.ndarray) -> list[np.ndarray]:
        rows = take_rows(self.x, positions)
        self.pages.count(rows.nbytes)
        return [rows] if self.y is None else [rows, self.y[positions]]
