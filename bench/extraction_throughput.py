"""Feature extraction from files on disk against the backbone's raw forward throughput.

    python bench/extraction_throughput.py [--data ../shared/datasets/clipart8] [--backbones mobilenet vgg16]

For each backbone (224 px, ImageNet weights from TL_WEIGHTS_DIR when present, else random), in
one process: (1) raw forward throughput on pre-decoded uint8 tensors already in memory; (2) the
engine's path from the files (decode + resize, no cache, then the forward pass); (3) the same
with the decoded-pixel cache warm. Prints images/s and each path's ratio to the raw forward pass.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _common import DEFAULT_DATA, machine

from tl_core import backbones, data
from tl_core.features import extract_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--backbones", nargs="+", default=["mobilenet", "vgg16"])
    parser.add_argument("--limit", type=int, default=320, help="images used (the same for every path)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    image_set = data.load_images(args.data)
    image_set.items = image_set.items[: args.limit]
    print(f"{len(image_set.items)} images from {args.data} on {machine()}")
    for name in args.backbones:
        spec = backbones.get_spec(name)
        weights = backbones.resolve_weights(spec, "imagenet")
        if weights.keras_arg == "imagenet":
            weights = backbones.resolve_weights(spec, "none")  # offline: same cost, random weights
        model = backbones.build_feature_model(spec, backbones.build_base(spec, weights, 224), 224)
        pixels = data.decode_dataset(image_set, 224).x
        extract_features(model, pixels[: args.batch_size], args.batch_size)  # warm-up: tracing

        start = time.perf_counter()
        extract_features(model, pixels, args.batch_size)
        raw = len(pixels) / (time.perf_counter() - start)

        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            decoded = data.decode_dataset(image_set, 224, cache_dir=cache)
            extract_features(model, decoded.x, args.batch_size)
            cold = len(pixels) / (time.perf_counter() - start)
            start = time.perf_counter()
            decoded = data.decode_dataset(image_set, 224, cache_dir=cache)
            extract_features(model, decoded.x, args.batch_size)
            warm = len(pixels) / (time.perf_counter() - start)
        print(f"{spec.title:<14} raw forward {raw:7.1f} img/s | from files {cold:7.1f} img/s ({cold / raw:.2f}x) | "
              f"decoded cache warm {warm:7.1f} img/s ({warm / raw:.2f}x) | weights: {weights.description}")


if __name__ == "__main__":
    main()
