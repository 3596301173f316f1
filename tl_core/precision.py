"""Inference precision of the frozen ConvNet: float32, or bfloat16 where the hardware makes it faster.

Feature extraction (and stage 2's activation cache) only runs the pretrained network forward; CPUs
with AVX512_BF16 or AMX, and recent GPUs, do that in bfloat16. The bfloat16 twin folds each
BatchNormalization into the convolution before it (Keras computes BatchNormalization in float32, so
unfolded, every one of them adds two casts and a float32 pass over the activations: MobileNet v1 ran
at 0.8x its float32 speed here, 2x folded) and keeps its first two convolutions in float32.
``auto`` still measures: on hardware with bfloat16, the first extraction of a backbone at an image
size times a few batches both ways, once, and keeps the faster (remembered in the cache folder).
Heads, training updates and saved models stay float32.
"""

from __future__ import annotations

import json
import os
import platform
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tl_core.config import PRECISIONS, TWIN_VERSION  # noqa: F401 - TWIN_VERSION: part of this module's interface
from tl_core.errors import ConfigError

PROBE_IMAGES = 16  # per timed pass of the probe (three rounds each way, interleaved, after tracing)
PROBE_MARGIN = 1.1  # bfloat16 must be this much faster to be chosen: a tie keeps float32's exact numbers
# What the bfloat16 twin computes, in the probe's record and the features cache key (2: BatchNormalization
# folded, the first convolutions float32).
_FOLDABLE = ("Conv2D", "DepthwiseConv2D")  # linear convolutions a BatchNormalization can be folded into
# The twin's first convolutions (and the layers before them: the preprocessing) stay float32: an error
# there grows through the network (MobileNet v1's first depthwise layer most: with it in bfloat16,
# the head's test predictions on fashion_mnist_2k differed from float32's on 7% of images, 3% without).
FLOAT32_CONVS = 2


@lru_cache(maxsize=1)
def bf16_supported() -> bool:
    """Whether this machine computes bfloat16 natively: a CPU with AVX512_BF16 or AMX (Linux flags),
    an Apple silicon or other ARM CPU with BF16, or a GPU of compute capability 8.0 or more."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16", "bf16")):
        return True
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return True
    try:
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            capability = tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
            if tuple(capability) >= (8, 0):
                return True
    except Exception:  # noqa: BLE001 - no TensorFlow device query must stop a run
        pass
    return False


def check_precision(name: str) -> str:
    """``name`` if it is one of :data:`PRECISIONS`.

    Raises:
        ConfigError: anything else, naming the allowed values.
    """
    if name not in PRECISIONS:
        raise ConfigError(f"Unknown precision '{name}'. Choose one of: {', '.join(PRECISIONS)} "
                          "(auto: bfloat16 where this machine computes it faster, float32 elsewhere).")
    return name


def resolve_precision(name: str) -> str:
    """The precision ``name`` stands for on this machine, without measuring anything.

    Args:
        name: one of :data:`PRECISIONS`.

    Returns:
        ``float32`` or ``bfloat16``; ``auto`` is ``bfloat16`` where :func:`bf16_supported`. (A run's
        ``auto`` goes further: :func:`choose_precision` also times the backbone both ways.)

    Raises:
        ConfigError: anything else, naming the allowed values.
    """
    check_precision(name)
    if name == "auto":
        return "bfloat16" if bf16_supported() else "float32"
    return name


def bfloat16_twin(model):
    """The same network computing in bfloat16, for inference only; ``model`` is untouched.

    From its third convolution on (:data:`FLOAT32_CONVS`), every layer gets the ``mixed_bfloat16``
    policy (float32 variables, bfloat16 compute; the global policy is not changed), and each
    BatchNormalization that follows a linear convolution, the only user of its output, is folded into
    it with its moving statistics (it becomes an ``Identity``).
    """
    return _twin(model, "mixed_bfloat16", FLOAT32_CONVS)


def _twin(model, policy: str, float32_convs: int = 0):
    """``model`` rebuilt with its float32 layers in ``policy`` from its ``float32_convs + 1``-th
    convolution on (the ones before, and the layers up to it, stay float32), BatchNormalization
    folded, weights copied."""
    config = json.loads(json.dumps(model.get_config()))  # a copy to rewrite
    _set_policies(config, policy, float32_convs, [0])
    folded: dict[tuple[str, ...], str] = {}  # path of a folded BatchNormalization -> its convolution's name
    _fold_config(config, (), folded)
    twin = model.__class__.from_config(config)
    source = dict(_walk(model))
    norm_of = {path[:-1] + (conv,): source[path] for path, conv in folded.items()}
    for path, layer in _walk(twin):
        if path in folded or not layer.weights or hasattr(layer, "layers"):  # nested models: layer by layer
            continue
        weights = source[path].get_weights()
        if path in norm_of:
            weights = _folded_weights(source[path], weights, norm_of[path])
        layer.set_weights(weights)
    return twin


def _set_policies(config: dict, policy: str, float32_convs: int, convs_seen: list[int]) -> None:
    """Sets ``policy`` on every float32 layer of a functional config (in order, nested models'
    layers included) from the convolution after the first ``float32_convs`` on."""
    for entry in config.get("layers") or []:
        if entry["class_name"] in _FOLDABLE or entry["class_name"] in ("Conv1D", "Conv3D", "SeparableConv2D"):
            convs_seen[0] += 1
        layer = entry["config"]
        if "layers" in layer:
            _set_policies(layer, policy, float32_convs, convs_seen)
        dtype = layer.get("dtype")
        if (convs_seen[0] > float32_convs and isinstance(dtype, dict)
                and dtype.get("class_name") == "DTypePolicy" and dtype.get("config", {}).get("name") == "float32"):
            dtype["config"] = {**dtype["config"], "name": policy}


def _walk(model, prefix: tuple[str, ...] = ()):
    """``(path of names, layer)`` of every layer of ``model``, nested models' layers included."""
    for layer in model.layers:
        yield (*prefix, layer.name), layer
        if hasattr(layer, "layers"):
            yield from _walk(layer, (*prefix, layer.name))


def _fold_config(config: dict, prefix: tuple[str, ...], folded: dict) -> None:
    """Rewrites a functional model's config in place: each BatchNormalization (channels last) fed by a
    linear convolution that feeds nothing else becomes an ``Identity``, the convolution gets a bias."""
    layers = config.get("layers") or []
    by_name = {entry["config"]["name"]: entry for entry in layers}
    users: dict[str, int] = {}
    for entry in layers:
        for name in set(_tensor_sources(entry.get("inbound_nodes"))):
            users[name] = users.get(name, 0) + 1
    for name in _tensor_sources(config.get("output_layers")):
        users[name] = users.get(name, 0) + 1
    for entry in layers:
        name = entry["config"]["name"]
        if "layers" in entry["config"]:
            _fold_config(entry["config"], (*prefix, name), folded)
        if entry["class_name"] != "BatchNormalization":
            continue
        nodes = entry.get("inbound_nodes") or []
        sources = list(_tensor_sources(nodes))
        conv = by_name.get(sources[0]) if len(nodes) == 1 and len(sources) == 1 else None
        if (conv is None or conv["class_name"] not in _FOLDABLE or users.get(sources[0]) != 1
                or conv["config"].get("activation", "linear") not in ("linear", None)
                or conv["config"].get("data_format", "channels_last") != "channels_last"
                or entry["config"].get("axis") not in (-1, 3, [-1], [3])):
            continue
        folded[(*prefix, name)] = sources[0]
        conv["config"]["use_bias"] = True
        entry.update(module="keras.layers", class_name="Identity", registered_name=None,
                     config={"name": name, "trainable": False, "dtype": entry["config"]["dtype"]})
        entry.pop("build_config", None)
        for node in nodes:
            node["kwargs"] = {}  # BatchNormalization's mask and training: Identity takes neither


def _tensor_sources(value):
    """Names of the layers whose outputs a serialized node (or output list) refers to."""
    if isinstance(value, dict):
        if "keras_history" in value:
            yield value["keras_history"][0]
        else:
            for item in value.values():
                yield from _tensor_sources(item)
    elif isinstance(value, list):
        if len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], int):
            yield value[0]  # [layer name, node index, tensor index]
        else:
            for item in value:
                yield from _tensor_sources(item)


def _folded_weights(conv, weights: list, norm) -> list:
    """``conv``'s kernel and bias with BatchNormalization ``norm`` (inference mode) folded in."""
    variance = np.asarray(norm.moving_variance, np.float64)
    scale = 1.0 / np.sqrt(variance + norm.epsilon)
    if norm.scale:
        scale = scale * np.asarray(norm.gamma, np.float64)
    shift = -np.asarray(norm.moving_mean, np.float64) * scale
    if norm.center:
        shift = shift + np.asarray(norm.beta, np.float64)
    kernel = np.asarray(weights[0], np.float64)
    bias = np.asarray(weights[1], np.float64) if len(weights) > 1 else np.zeros_like(scale)
    if conv.__class__.__name__ == "DepthwiseConv2D":  # output channel c * multiplier + m
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    return [kernel.astype(np.float32), (bias * scale + shift).astype(np.float32)]


def _probe_seconds(models, image_size: int, rounds: int = 3) -> list[float]:
    """The best time of each of ``models`` on :data:`PROBE_IMAGES` images, their rounds interleaved
    (on a shared machine the speed drifts; a comparison within one round does not)."""
    from tl_core.features import inference_function

    x = np.random.default_rng(0).integers(0, 256, (PROBE_IMAGES, image_size, image_size, 3), dtype=np.uint8)
    runs = [inference_function(model) for model in models]
    for run in runs:
        np.asarray(run(x))  # tracing is not the speed
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            np.asarray(run(x))
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def choose_precision(name: str, model, *, backbone: str, image_size: int,
                     cache_dir: str | os.PathLike | None = None) -> tuple[str, Any]:
    """The precision to run ``model`` (float32) in, and the model to run: ``model`` or its bfloat16 twin.

    ``auto``: float32 without native bfloat16; otherwise the faster of the two by a short timed probe
    (:data:`PROBE_MARGIN`), remembered in ``cache_dir/precision.json`` per CPU, backbone and size.

    Raises:
        ConfigError: an unknown ``name``.
    """
    check_precision(name)
    if name == "float32" or (name == "auto" and not bf16_supported()):
        return "float32", model
    twin = bfloat16_twin(model)
    if name == "bfloat16":
        return "bfloat16", twin
    key = f"{_cpu_name()}|{backbone}|{image_size}|{getattr(model, 'name', '')}|twin{TWIN_VERSION}"
    record = Path(cache_dir) / "precision.json" if cache_dir is not None else None
    known = _read(record)
    if key not in known:
        float32_s, bfloat16_s = _probe_seconds([model, twin], image_size)
        known[key] = {"float32_s": float32_s, "bfloat16_s": bfloat16_s}
        _write(record, known)
    chosen = known[key]["float32_s"] > PROBE_MARGIN * known[key]["bfloat16_s"]
    return ("bfloat16", twin) if chosen else ("float32", model)


def _read(path: Path | None) -> dict:
    try:
        return json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path | None, known: dict) -> None:
    if path is None:
        return
    from tl_core.fsutil import write_json_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, known)
    except OSError:
        pass  # measured again next time
