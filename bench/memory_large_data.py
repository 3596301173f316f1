"""Peak resident memory of real training runs as the dataset grows from 10,000 to 60,000 images.

    python bench/memory_large_data.py [--sizes 10000 30000 60000] [--image-size 96]
        [--strategy finetune|feature_extractor] [--no-stream] [--work DIR]

The full Fashion-MNIST (Debian package ``dataset-fashion-mnist``: 60,000 training + 10,000 test
images, 28 px) is written once as class folders of PNG files under ``--work`` (reused). For each
size, a stratified subset (the same share of every class, hard links to those PNGs) is trained
in a fresh Python process through the engine's entry point, ``tl_core.runner.run_training``, with
a fresh store, on MobileNet v1 (ImageNet weights from ../shared/weights, else random ones: the
same memory) at ``--image-size`` px, so the decoded pixels of 60,000 images (1.66 GB at 96 px)
are larger than the process itself. Each process's peak resident memory is the ``ru_maxrss`` of
its own ``wait4`` (the figure ``VmHWM`` gives). The smallest size of the same invocation is the
baseline of the ratios.

The default run is the frozen ConvNet's features with new layers trained on them: decoding into
the memory-mapped pixel cache, one pass of the ConvNet into the memory-mapped feature cache,
3 epochs of the new layers on features streamed from it, and the test predictions on pixels
streamed from the pixel cache (two-stage fine-tuning without its stage 2). ``--strategy
feature_extractor`` trains the scikit-learn softmax head instead: it holds the training features
in memory in float64 (42,000 training images of 60,000: 0.34 GB), so its peak grows with the data
(measured: 1.06 GB at 10,000, 1.43 GB at 60,000), and its choice of C takes about 4 minutes at
60,000 images on 2 cores. Then, unless ``--no-stream``, at the smallest and the largest size, in the
store of that size's first run (its pixel and feature caches reused): 1 epoch with augmentation,
so the ConvNet runs on every batch of pixels, streamed from the pixel cache by ``tf.data``.

About 12 minutes on 2 CPU cores with the defaults (8 without the streamed epochs). The figures
go to standard output and to ``bench/results/memory_large_data.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, machine
from PIL import Image

FASHION_IDX = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
RESULTS = REPO / "bench" / "results" / "memory_large_data.json"

# Runs in the fresh process: one training run, then what it measured of itself, as one JSON line.
CHILD = """
import json, sys
from pathlib import Path
from tl_core.config import TrainConfig
from tl_core.progress import NullProgress
from tl_core.runner import run_training
from tl_core.store import RunStore

from tl_core.hardware import process_memory as memory

class PeakByStage(NullProgress):
    # The peak so far at the end of each stage: where the peak was reached.
    def __init__(self):
        self.peaks = {}

    def on_stage_end(self, stage, logs=None):
        if not stage.endswith(".epoch"):
            self.peaks[stage] = memory("VmHWM")

folder, data_dir, config = sys.argv[1], sys.argv[2], TrainConfig(**json.loads(sys.argv[3]))
listener = PeakByStage()
run = run_training(folder, config, store=RunStore(data_dir), progress=listener)
metrics = run.get("metrics") or {}
print(json.dumps({"status": run["status"], "error": run.get("error"), "accuracy": metrics.get("test_accuracy"),
                  "split": metrics.get("split"), "timing": metrics.get("timing"), "notes": metrics.get("notes"),
                  "peak_by_stage": listener.peaks, "vm_hwm": memory("VmHWM")}))
"""


def fashion_folder(folder: Path) -> Path:
    """All 70,000 Fashion-MNIST images as ``folder/<class>/<part>_<index>.png``, written once."""
    if (folder / ".complete").exists():
        return folder
    if not FASHION_IDX.is_dir():
        raise SystemExit("Full Fashion-MNIST not found: apt-get install dataset-fashion-mnist")
    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for part, prefix in (("train", "train"), ("test", "t10k")):
        with gzip.open(FASHION_IDX / f"{prefix}-images-idx3-ubyte.gz") as handle:
            images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(FASHION_IDX / f"{prefix}-labels-idx1-ubyte.gz") as handle:
            labels = np.frombuffer(handle.read(), np.uint8, offset=8)
        for index, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image, "L").save(folder / CLASSES[label] / f"{part}_{index:05d}.png")
    (folder / ".complete").write_text("ok")
    return folder


def stratified_subset(source: Path, n: int, target: Path) -> Path:
    """The first ``n * share`` files of every class of ``source`` (by name), hard-linked into ``target``."""
    if target.exists():
        shutil.rmtree(target)
    files = {c.name: sorted(c.iterdir()) for c in sorted(source.iterdir()) if c.is_dir()}
    total = sum(len(v) for v in files.values())
    for name, paths in files.items():
        (target / name).mkdir(parents=True)
        for path in paths[: round(n * len(paths) / total)]:
            os.link(path, target / name / path.name)
    return target


def run_child(folder: Path, data_dir: Path, config: dict, log: Path) -> dict:
    """One training run in a fresh process; adds its peak resident memory (``wait4``) and wall time."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(data_dir), json.dumps(config)],
                                 env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        raise SystemExit(f"training process failed ({child.returncode}); see {log}")
    result = json.loads(lines[-1])
    if result["status"] != "succeeded":
        raise SystemExit(f"run {result['status']}: {result['error']}")
    return {**result, "peak_rss": usage.ru_maxrss * 1024, "wall_seconds": wall}


def gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 60_000])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--strategy", default="finetune", choices=["finetune", "feature_extractor"])
    parser.add_argument("--no-stream", action="store_true", help="skip the epochs streamed from the pixel cache")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tl-bench-large-data"))
    args = parser.parse_args()
    work = Path(args.work)
    weights_file = REPO.parent / "shared" / "weights" / "mobilenet_v1_1.0_224_imagenet_notop.weights.h5"
    weights = "imagenet" if weights_file.is_file() else "none"
    started = time.perf_counter()
    source = fashion_folder(work / "fashion-mnist-png")
    print(f"machine: {machine()}")
    print(f"Fashion-MNIST as PNG class folders: {source} ({time.perf_counter() - started:.0f} s, reused when present)")
    print(f"MobileNet v1 (weights {weights}), {args.image_size} px, batch {args.batch_size}; each run in a fresh process\n")

    base = {"backbone": "mobilenet", "weights": weights, "image_size": args.image_size,
            "batch_size": args.batch_size, "seed": 42}
    runs, stores = [], {}
    print(f"{'run':<34}{'images':>8}{'decoded pixels':>16}{'peak RSS':>10}{'vs first':>10}{'wall':>8}{'test acc':>10}")
    sizes = sorted(args.sizes)
    if args.strategy == "finetune":
        series = ("features + new layers, 3 epochs", {"strategy": "finetune", "epochs": 3, "fine_tune_epochs": 0})
    else:
        series = ("feature extractor + softmax head", {"strategy": "feature_extractor", "head": "softmax"})
    plans = [(*series, n) for n in sizes]
    if not args.no_stream:
        stream = {"strategy": "finetune", "augment": True, "epochs": 1, "fine_tune_epochs": 0}
        plans += [("1 epoch on streamed pixels (aug.)", stream, n) for n in sorted({sizes[0], sizes[-1]})]
    baseline = {}
    for title, settings, n in plans:
        folder = stratified_subset(source, n, work / f"subset-{n}")
        data_dir = stores.setdefault(n, work / f"store-{n}")
        if title == series[0] and data_dir.exists():
            shutil.rmtree(data_dir)  # a fresh store: decoded and feature caches built by this run
        result = run_child(folder, data_dir, {**base, **settings}, work / f"log-{len(runs)}-{n}.txt")
        decoded = n * args.image_size**2 * 3
        baseline.setdefault(title, result["peak_rss"])
        ratio = result["peak_rss"] / baseline[title]
        print(f"{title:<34}{n:>8,}{gb(decoded):>16}{gb(result['peak_rss']):>10}{ratio:>9.2f}x"
              f"{result['wall_seconds']:>7.0f}s{result['accuracy']:>10.3f}")
        peaks = ", ".join(f"{stage} {gb(peak)}" for stage, peak in result["peak_by_stage"].items())
        print(f"    peak so far at the end of each stage: {peaks}")
        runs.append({"run": title, "images": n, "decoded_bytes": decoded, "ratio_to_first": ratio, **result})
    for directory in [*stores.values(), *(work / f"subset-{n}" for n in stores)]:
        shutil.rmtree(directory, ignore_errors=True)

    first, *rest = [r for r in runs if r["run"] == series[0]]
    for run in rest:
        print(f"\npeak RSS {run['images'] // 1000}k / {first['images'] // 1000}k = {run['ratio_to_first']:.2f} "
              f"(decoded pixels: {gb(run['decoded_bytes'])} vs {gb(first['decoded_bytes'])}, "
              f"{run['decoded_bytes'] / first['decoded_bytes']:.0f}x)", end="")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "image_size": args.image_size, "weights": weights,
                                   "batch_size": args.batch_size, "strategy": args.strategy, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
