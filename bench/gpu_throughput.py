"""Images per second on this machine's accelerator: extraction and fine-tuning, float32 vs mixed precision.

    python bench/gpu_throughput.py [--backbone mobilenetv2] [--images 1024] [--batch-size 64]

Made for a GPU machine (it runs on a CPU too, where mixed precision is expected to be slower).
In one process, on random pixels at 224 px (throughput does not depend on the content):

1. extraction: the frozen backbone's forward pass (``extract_features``), float32;
2. the same under mixed precision (``mixed_float16``);
3. fine-tuning: ``fit`` of the whole network with a softmax head, float32, no XLA;
4. the same with mixed precision and XLA (``jit_compile=True``), what a run with
   ``accelerate=True`` uses on a GPU.

Each line prints images/s and the ratio to its float32 baseline, and the device.
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np
from _common import machine

from tl_core import backbones
from tl_core.features import extract_features


def build(spec, size: int, n_classes: int) -> tuple[keras.Model, keras.Model]:
    base = backbones.build_base(spec, backbones.resolve_weights(spec, "none"), size)
    features = backbones.build_feature_model(spec, base, size)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32")(features.output)
    return features, keras.Model(features.input, outputs)


def extraction(spec, x, batch: int) -> float:
    features, _ = build(spec, x.shape[1], 10)
    extract_features(features, x[:batch], batch)  # trace and warm up
    start = time.perf_counter()
    extract_features(features, x, batch)
    return len(x) / (time.perf_counter() - start)


def fine_tuning(spec, x, y, batch: int, jit: bool) -> float:
    _, model = build(spec, x.shape[1], 10)
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy", jit_compile=jit)
    model.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, epochs=1, verbose=0)  # compile and warm up
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    spec = backbones.get_spec(args.backbone)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, args.images)
    print(f"device: {machine()}; {spec.title}, {args.images} images at {args.size} px, batch {args.batch_size}")

    keras.mixed_precision.set_global_policy("float32")
    base_extract = extraction(spec, x, args.batch_size)
    base_tune = fine_tuning(spec, x.astype(np.float32), y, args.batch_size, jit=False)
    keras.mixed_precision.set_global_policy("mixed_float16")
    fast_extract = extraction(spec, x, args.batch_size)
    fast_tune = fine_tuning(spec, x.astype(np.float32), y, args.batch_size, jit=True)
    keras.mixed_precision.set_global_policy("float32")

    print(f"extraction, float32:                        {base_extract:8.1f} img/s  1.00x")
    print(f"extraction, mixed precision:                {fast_extract:8.1f} img/s  {fast_extract / base_extract:.2f}x")
    print(f"fine-tuning all layers, float32:            {base_tune:8.1f} img/s  1.00x")
    print(f"fine-tuning all layers, mixed precision+XLA: {fast_tune:8.1f} img/s  {fast_tune / base_tune:.2f}x")


if __name__ == "__main__":
    main()
