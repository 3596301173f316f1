"""Inference precision of the frozen ConvNet: float32, or bfloat16 where the hardware makes it faster.

Feature extraction (and stage 2's activation cache) only runs the pretrained network forward; CPUs
with AVX512_BF16 or AMX, and recent GPUs, do that in bfloat16 at up to twice the float32 speed for
some networks (VGG16 here: 16.4 vs 8.4 img/s) and slower for others (MobileNet v1 here: 105 vs 126
img/s: its depthwise layers gain nothing). So ``auto`` measures: on hardware with bfloat16, the first
extraction of a backbone at an image size times a few batches both ways, once, and keeps the faster
(remembered in the cache folder). Heads, training updates and saved models stay float32.
"""

from __future__ import annotations

import json
import os
import platform
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from tl_core.config import PRECISIONS
from tl_core.errors import ConfigError

PROBE_IMAGES = 16  # per timed pass of the probe (two passes each way, after tracing)
PROBE_MARGIN = 1.1  # bfloat16 must be this much faster to be chosen: a tie keeps float32's exact numbers


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


def bfloat16_twin(model):
    """The same network computing in bfloat16 (weights copied), for inference only; ``model`` is untouched."""
    config = json.dumps(model.get_config())
    config = config.replace('"class_name": "DTypePolicy", "config": {"name": "float32"}',
                            '"class_name": "DTypePolicy", "config": {"name": "mixed_bfloat16"}')
    twin = model.__class__.from_config(json.loads(config))
    twin.set_weights(model.get_weights())
    return twin


def _probe_seconds(model, image_size: int, rounds: int = 2) -> float:
    import numpy as np

    from tl_core.features import inference_function

    x = np.random.default_rng(0).integers(0, 256, (PROBE_IMAGES, image_size, image_size, 3), dtype=np.uint8)
    run = inference_function(model)
    run(x)  # tracing is not the speed
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        np.asarray(run(x))
        best = min(best, time.perf_counter() - started)
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
    key = f"{_cpu_name()}|{backbone}|{image_size}|{getattr(model, 'name', '')}"
    record = Path(cache_dir) / "precision.json" if cache_dir is not None else None
    known = _read(record)
    if key not in known:
        float32_s, bfloat16_s = _probe_seconds(model, image_size), _probe_seconds(twin, image_size)
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
