"""Grad-CAM heat maps (Selvaraju et al., 2017) for every model this app trains, whatever the backbone.

Every classifier here is ``pixels -> [preprocessing] -> ConvNet -> GlobalAveragePooling2D
("features") -> head``. Grad-CAM weighs the ConvNet's last feature maps ``A_k`` by the mean
gradient of the class score over each map; because the pooling is an average, that mean gradient
is the gradient with respect to the pooled feature ``f_k`` itself (divided by the map's area, a
constant). So the heat map needs only the feature maps and the head, for any backbone in the
registry, and for features cut from an earlier block too. The class score is the log-probability
of the class (its evidence against the other classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import numpy as np
from PIL import Image

FEATURES_LAYER = "features"
CHUNK = 2  # images per ConvNet call (see grad_cams)
# A perceptual blue -> cyan -> green -> yellow -> red ramp (like "jet", without its dark ends).
_RAMP = np.array(
    [[48, 18, 180], [30, 120, 240], [30, 200, 200], [90, 220, 90], [240, 220, 40], [240, 110, 20], [200, 20, 20]],
    dtype=np.float64,
)


def split_classifier(model):
    """``(conv_model, head)``: pixels -> the ConvNet's feature maps, and pooled features -> probabilities.

    Raises:
        ValueError: the model has no ``features`` pooling layer (not a model of this app).
    """
    import keras

    graph, chain = None, []
    if any(layer.name == FEATURES_LAYER for layer in model.layers):
        graph = model
        names = [layer.name for layer in model.layers]
        chain = model.layers[names.index(FEATURES_LAYER) + 1 :]
    else:
        for index, layer in enumerate(model.layers):
            if isinstance(layer, keras.Model) and any(sub.name == FEATURES_LAYER for sub in layer.layers):
                graph, chain = layer, model.layers[index + 1 :]
                break
    if graph is None:
        raise ValueError("No 'features' pooling layer: Grad-CAM works on the models this app trains.")
    conv_model = keras.Model(graph.inputs, graph.get_layer(FEATURES_LAYER).input, name="feature_maps")

    def head(features):
        return reduce(lambda x, layer: layer(x, training=False), chain, features)

    return conv_model, head


def grad_cam(model, pixels: np.ndarray, classes: Sequence[int] | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps of where each image's evidence for a class lies.

    Args:
        model: a classifier saved by this app (raw pixels in, probabilities out).
        pixels: ``(n, size, size, 3)`` images as the model takes them (uint8 or float 0-255).
        classes: the class to explain for each image (one int for all); ``None``: the predicted one.

    Returns:
        ``(heat maps (n, h, w) in [0, 1] at the feature maps' resolution, probabilities (n, classes))``.
    """
    (cams,), probabilities = grad_cams(model, pixels, [classes])
    return cams, probabilities


def grad_cams(model, pixels: np.ndarray, class_sets: Sequence) -> tuple[list[np.ndarray], np.ndarray]:
    """:func:`grad_cam` for several choices of class per image (e.g. predicted and true), with one
    pass of the ConvNet: ``([heat maps (n, h, w) per choice], probabilities (n, classes))``.

    The images go through the ConvNet :data:`CHUNK` at a time: called eagerly, a Keras model keeps
    every layer's output until the call ends (about 95 MB per 224 px image for MobileNetV2), so
    the 12 mistakes of a run in one call took 1.1 GB.
    """
    conv_model, head = split_classifier(model)
    class_sets = [None if c is None else np.broadcast_to(np.asarray(c), (len(pixels),)) for c in class_sets]
    parts = [
        _grad_cams(conv_model, head, pixels[start : start + CHUNK],
                   [None if c is None else c[start : start + CHUNK] for c in class_sets])
        for start in range(0, len(pixels), CHUNK)
    ]
    cams = [np.concatenate([part[0][i] for part in parts]) for i in range(len(class_sets))]
    return cams, np.concatenate([part[1] for part in parts])


def _grad_cams(conv_model, head, pixels: np.ndarray, class_sets: list) -> tuple[list[np.ndarray], np.ndarray]:
    import tensorflow as tf

    x = tf.convert_to_tensor(np.asarray(pixels, dtype=np.float32))
    maps = tf.cast(conv_model(x, training=False), tf.float32)
    pooled = tf.reduce_mean(maps, axis=(1, 2))
    all_cams = []
    for classes in class_sets:
        with tf.GradientTape() as tape:
            tape.watch(pooled)
            probabilities = tf.cast(head(pooled), tf.float32)
            if classes is None:
                chosen = tf.argmax(probabilities, axis=-1)
            else:
                chosen = tf.constant(classes, dtype=tf.int64)
            score = tf.math.log(tf.gather(probabilities, chosen, batch_dims=1) + 1e-9)
        weights = tape.gradient(score, pooled)  # (n, channels): each map's mean gradient, up to its area
        cams = tf.nn.relu(tf.einsum("nhwk,nk->nhw", maps, weights)).numpy()
        peaks = cams.reshape(len(cams), -1).max(axis=1).reshape(-1, 1, 1)
        all_cams.append(np.divide(cams, peaks, out=np.zeros_like(cams), where=peaks > 0))
    return all_cams, probabilities.numpy()


def colorize(cam: np.ndarray) -> np.ndarray:
    """``(h, w)`` values in [0, 1] -> ``(h, w, 3)`` uint8 colours (blue: none, red: most)."""
    position = np.clip(cam, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(_RAMP) - 1)
    t = (position - low)[..., None]
    return (_RAMP[low] * (1 - t) + _RAMP[high] * t).astype(np.uint8)


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A heat map resized (bilinear) to ``(width, height)``, values kept in [0, 1]."""
    image = Image.fromarray(cam.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(image), 0.0, 1.0)


def overlay(image: Image.Image, cam: np.ndarray, opacity: float = 0.45) -> Image.Image:
    """The picture with its heat map laid over it (the map stretched to the picture's size)."""
    picture = image.convert("RGB")
    heat = colorize(upsample(cam, picture.size))
    blended = np.asarray(picture, dtype=np.float64) * (1 - opacity) + heat * opacity
    return Image.fromarray(blended.astype(np.uint8))
