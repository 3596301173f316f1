"""A run's ``.keras`` file: where it is, saving it whole, loading it safely.

Training saves it (:mod:`tl_core.runner`); export, Grad-CAM and the pages load it. Both sides use
this module, so serving code never has to be imported by training code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tl_core.errors import ExportError
from tl_core.fsutil import replacing


def model_file(run: dict[str, Any]) -> Path | None:
    """The run's ``.keras`` file, if it was saved."""
    path = Path(run.get("model_path") or "")
    return path if run.get("status") == "succeeded" and path.is_file() else None


def load_model_file(path: str | Path):
    """Load a ``.keras`` file with Keras' safe mode: a file carrying Python code (a ``Lambda``
    layer's bytecode) is refused, never run. Our own models need no such code.

    Raises:
        ExportError: the file is not a loadable, safe Keras model.
    """
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except ValueError as err:
        if "safe_mode" in str(err) or "unsafe" in str(err).lower() or "lambda" in str(err).lower():
            raise ExportError(f"Refused to load {Path(path).name}: it contains Python code (unsafe).") from err
        raise ExportError(f"{Path(path).name} is not a Keras model this app can load: {err}") from err
    except (OSError, KeyError, TypeError) as err:
        raise ExportError(f"{Path(path).name} is not a Keras model this app can load: {err}") from err


def save_model(model, path: str | Path) -> None:
    """Save ``model`` in float32 under a unique temporary name, then rename it onto ``path``: a reader
    never sees half a model, and a failed save leaves none."""
    with replacing(path) as tmp:
        float32_copy(model).save(tmp)


def float32_copy(model):
    """The model with every layer in float32: what a run trained in mixed precision saves.

    Mixed precision is a training speed-up for GPUs; a saved model must predict at full precision
    anywhere (a float16 model on a CPU is slow and rounds). Same architecture, same weights.
    """
    import keras

    config = json.dumps(model.get_config())
    if '"mixed_float16"' not in config and '"mixed_bfloat16"' not in config:
        return model
    config = json.loads(config.replace('"mixed_float16"', '"float32"').replace('"mixed_bfloat16"', '"float32"'))
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = model.__class__.from_config(config)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


TEMPERATURE_LAYER = "temperature"  # a Rescaling(1 / T) before the final softmax, where the model has one


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def fold_temperature(model, temperature: float) -> None:
    """Make ``model`` predict ``softmax(scores / T)``: its calibrated probabilities (same classes).

    Into its :data:`TEMPERATURE_LAYER` when it has one (the linear heads' models), else into its
    final ``predictions`` softmax layer, whose weights and bias are divided by ``T``.

    Raises:
        ExportError: the model has neither (not one of this app's models).
    """
    layers = {layer.name: layer for layer in _layers(model)}
    if TEMPERATURE_LAYER in layers:
        layers[TEMPERATURE_LAYER].scale = 1.0 / temperature
        return
    dense = layers.get("predictions")
    if dense is None or getattr(dense.activation, "__name__", "") != "softmax":
        raise ExportError("This model has no softmax layer to calibrate.")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / temperature, bias / temperature])
