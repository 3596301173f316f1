"""Feature extraction from files on disk against the backbone's raw forward throughput.

    python bench/extraction_throughput.py [--data ../shared/datasets/clipart8] [--backbones mobilenet vgg16]
    python bench/extraction_throughput.py --bf16 [--backbones mobilenet mobilenetv2 efficientnetb0 resnet50 vgg16]

For each backbone (224 px, ImageNet weights from TL_WEIGHTS_DIR when present, else random: the
same cost), in one process, the same images each time, ``--reps`` rounds of these timed passes:

1. raw forward: the network on pre-decoded uint8 tensors already in memory (the baseline, timed
   at the start and at the end of the round, its mean speed);
2. from files: the engine's path for a run on files not seen before (``features.decode_and_extract``:
   decoding on lowest-priority threads, overlapped with the forward pass, then the feature cache);
3. decode, then extract: the same work one after the other (what the engine did before);
4. decoded cache warm: the pixels read from the uint8 cache, then the forward pass.

Prints images/s and each path's ratio to the raw pass of the same round, then the median ratio
over the rounds (a shared machine's speed drifts; a ratio within one round does not).

Each round also prints the CPU budget: the CPU seconds per image of the raw forward pass and of
decoding alone (``process_time``, all threads), and the best ratio any overlap can reach on this
machine when the two together need more CPU than its cores give: raw wall time divided by
max(raw wall time, (forward CPU + decode CPU) / cores). ``--forward-threads 1`` leaves the network
one core and the decoding the others, as on a GPU machine where the network does not use the CPU.

``--bf16``: for each backbone (random weights unless its ImageNet file is on disk: the same cost),
rounds of the float32 raw forward (the baseline), the bfloat16 raw forward (tl_core.precision's
twin: mixed_bfloat16 from the third convolution on, each BatchNormalization folded into its
convolution) and extraction from files in bfloat16 (decoding overlapped, as a run does it), each as
a ratio to the float32 raw forward of the same round, and what ``--precision auto`` chooses here.
Each round also prints the CPU seconds per image (``process_time``, all threads) of the float32 and
bfloat16 forward passes, of decoding alone and of extraction from files, and the most extraction
from files can reach when the cores are busy: the bfloat16 forward and the decoding together need
(bfloat16 CPU + decoding CPU) / cores of wall time per image at best, and no less than the bfloat16
raw forward. On a machine shared with other jobs the cores are not all ours: that ceiling is then
optimistic, and the decoding threads (nice 19) get least of what the other jobs leave.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_DATA, machine

from tl_core import backbones, data
from tl_core.config import DataConfig
from tl_core.features import decode_and_extract, extract_features
from tl_core.progress import NullProgress

PATHS = ("from files", "decode, then extract", "decoded cache warm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--backbones", nargs="+", default=["mobilenet", "vgg16"])
    parser.add_argument("--limit", type=int, default=320, help="images used (the same for every path)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5, help="rounds of the passes")
    parser.add_argument("--forward-threads", type=int, default=0,
                        help="TensorFlow's threads for the network (0: its default, every core)")
    parser.add_argument("--bf16", action="store_true", help="the bfloat16 columns (see above)")
    args = parser.parse_args()
    if args.bf16:
        if args.backbones == ["mobilenet", "vgg16"]:
            args.backbones = ["mobilenet", "mobilenetv2", "efficientnetb0", "resnet50", "vgg16"]
        return bf16_rounds(args)
    if args.forward_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.forward_threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.forward_threads)
    cores = os.cpu_count() or 1

    image_set = data.load_images(args.data)
    image_set.items = image_set.items[: args.limit]
    print(f"{len(image_set.items)} images from {args.data} on {machine()}"
          + (f", network on {args.forward_threads} thread(s)" if args.forward_threads else ""))
    for name in args.backbones:
        spec = backbones.get_spec(name)
        weights = backbones.resolve_weights(spec, "imagenet")
        if weights.keras_arg == "imagenet":
            weights = backbones.resolve_weights(spec, "none")  # offline: same cost, random weights
        model = backbones.build_feature_model(spec, backbones.build_base(spec, weights, 224), 224)
        pixels = data.decode_dataset(image_set, 224).x
        extract_features(model, pixels[: args.batch_size], args.batch_size)  # warm-up: tracing
        n = len(pixels)
        ratios: dict[str, list[float]] = {path: [] for path in (*PATHS, "ceiling")}
        for rep in range(1, args.reps + 1):
            raw_cpu = time.process_time()
            raw_seconds = [timed(lambda: extract_features(model, pixels, args.batch_size))]
            raw_cpu = (time.process_time() - raw_cpu) / n
            decode_cpu = time.process_time()
            data.decode_dataset(image_set, 224)
            decode_cpu = (time.process_time() - decode_cpu) / n
            speeds = {}
            with tempfile.TemporaryDirectory() as cache:
                cache = Path(cache)
                features_path = lambda hashes, cache=cache: cache / "features" / f"{time.monotonic_ns()}.npy"  # noqa: E731
                speeds["from files"] = n / timed(lambda: decode_and_extract(
                    image_set, 224, DataConfig(), cache_dir=cache, feature_model=model, features_path=features_path,
                    batch_size=args.batch_size, progress=NullProgress()))
            with tempfile.TemporaryDirectory() as cache:
                speeds["decode, then extract"] = n / timed(lambda: extract_features(
                    model, data.decode_dataset(image_set, 224, cache_dir=Path(cache)).x, args.batch_size))
                speeds["decoded cache warm"] = n / timed(lambda: extract_features(
                    model, data.decode_dataset(image_set, 224, cache_dir=Path(cache)).x, args.batch_size))
            raw_seconds.append(timed(lambda: extract_features(model, pixels, args.batch_size)))
            raw = speeds["raw forward"] = n / statistics.mean(raw_seconds)
            for path in PATHS:
                ratios[path].append(speeds[path] / raw)
            raw_wall = raw_seconds[0] / n
            ratios["ceiling"].append(raw_wall / max(raw_wall, (raw_cpu + decode_cpu) / cores))
            print(f"{spec.title:<14} round {rep}: " + " | ".join(
                f"{path} {speed:6.1f} img/s" + ("" if path == "raw forward" else f" ({speed / raw:.2f}x)")
                for path, speed in speeds.items())
                + f" | CPU per image: forward {raw_cpu * 1e3:.1f} ms, decoding {decode_cpu * 1e3:.1f} ms"
                + f" on {cores} cores: ceiling {ratios['ceiling'][-1]:.2f}x")
        print(f"{spec.title:<14} median over {args.reps} rounds: " + " | ".join(
            f"{path} {statistics.median(values):.2f}x" for path, values in ratios.items())
            + f" of raw forward | weights: {weights.description}")


def bf16_rounds(args) -> None:
    from tl_core.precision import bf16_supported, bfloat16_twin, choose_precision

    image_set = data.load_images(args.data)
    image_set.items = image_set.items[: args.limit]
    pixels = data.decode_dataset(image_set, 224).x
    n = len(pixels)
    cores = os.cpu_count() or 1
    print(f"{n} images from {args.data} on {machine()}; native bfloat16: {bf16_supported()}")
    for name in args.backbones:
        spec = backbones.get_spec(name)
        weights = backbones.resolve_weights(spec, "imagenet")
        if weights.keras_arg == "imagenet":
            weights = backbones.resolve_weights(spec, "none")  # offline: same cost, random weights
        model = backbones.build_feature_model(spec, backbones.build_base(spec, weights, 224), 224)
        twin = bfloat16_twin(model)
        for m in (model, twin):
            extract_features(m, pixels[: args.batch_size], args.batch_size)  # warm-up: tracing
        ratios: dict[str, list[float]] = {"bfloat16 raw forward": [], "bfloat16 from files": [], "ceiling": []}
        for rep in range(1, args.reps + 1):
            f32, f32_cpu = cpu_timed(lambda: extract_features(model, pixels, args.batch_size))
            bf16, bf16_cpu = cpu_timed(lambda: extract_features(twin, pixels, args.batch_size))
            with tempfile.TemporaryDirectory() as cache:
                cache = Path(cache)
                features_path = lambda hashes, cache=cache: cache / "features" / f"{time.monotonic_ns()}.npy"  # noqa: E731
                files, files_cpu = cpu_timed(lambda: decode_and_extract(
                    image_set, 224, DataConfig(), cache_dir=cache, feature_model=twin, features_path=features_path,
                    batch_size=args.batch_size, progress=NullProgress()))
            _, decode_cpu = cpu_timed(lambda: data.decode_dataset(image_set, 224))
            f32_end, f32_end_cpu = cpu_timed(lambda: extract_features(model, pixels, args.batch_size))
            raw = n / statistics.mean([f32, f32_end])
            ceiling = min(n / bf16, cores * n / (bf16_cpu + decode_cpu)) / raw
            ratios["bfloat16 raw forward"].append(n / bf16 / raw)
            ratios["bfloat16 from files"].append(n / files / raw)
            ratios["ceiling"].append(ceiling)
            per_image = {"float32 forward": (f32_cpu + f32_end_cpu) / 2, "bfloat16 forward": bf16_cpu,
                         "decoding": decode_cpu, "from files": files_cpu}
            print(f"{spec.title:<16} round {rep}: float32 raw forward {raw:6.1f} img/s | bfloat16 raw forward "
                  f"{n / bf16:6.1f} img/s ({n / bf16 / raw:.2f}x) | bfloat16 from files {n / files:6.1f} img/s "
                  f"({n / files / raw:.2f}x) | CPU per image: " + ", ".join(
                      f"{stage} {seconds / n * 1e3:.1f} ms" for stage, seconds in per_image.items())
                  + f" on {cores} cores: ceiling {ceiling:.2f}x")
        with tempfile.TemporaryDirectory() as cache:
            chosen, _ = choose_precision("auto", model, backbone=name, image_size=224, cache_dir=cache)
        print(f"{spec.title:<16} median over {args.reps} rounds: " + " | ".join(
            f"{path} {statistics.median(values):.2f}x" for path, values in ratios.items())
            + f" of float32 raw forward | --precision auto chooses {chosen} | weights: {weights.description}")


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def cpu_timed(work) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of every thread of this process)`` of ``work()``."""
    cpu = time.process_time()
    wall = timed(work)
    return wall, time.process_time() - cpu


if __name__ == "__main__":
    main()
