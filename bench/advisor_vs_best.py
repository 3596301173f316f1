"""Is the advisor's pick the best strategy? Every strategy, trained for real, on three datasets.

    python bench/advisor_vs_best.py [--datasets clipart8 fashion_mnist_2k fashion_mnist_20k] [--fresh]

For each dataset: the advisor's measurements and pick (``tl_core.advisor.advise``), then every
strategy trained through the engine on the same split and seed (feature extractor on the last
layer and on an earlier block, two-stage fine-tuning of the top 2 blocks and of all layers, from
scratch), the measured best, and the gap between the best and the pick. The advisor's pick must
be the best or within 2 points of it.

Datasets: ../shared/datasets/clipart8 (559 clip-art PNGs, 8 classes; 224 px), fashion_mnist_2k
(2,000 28 px Fashion-MNIST images; 64 px), and fashion_mnist_20k: the first 2,000 images of each
class of the full Fashion-MNIST training set (Debian package ``dataset-fashion-mnist``; 20,000
images at 32 px, the data's own resolution, to keep two CPU cores busy for minutes, not hours).

Finished runs are kept in ``bench/results/advisor_vs_best.json`` and reused (keyed by dataset and
config) unless ``--fresh``; the store with the models is ``$TL_DATA_DIR`` (default a folder in
the system's temp dir).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, machine
from PIL import Image

SHARED = REPO.parent / "shared" / "datasets"
FASHION_IDX = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
RESULTS = REPO / "bench" / "results" / "advisor_vs_best.json"
MARGIN = 0.02


def fashion_subset(per_class: int, folder: Path) -> Path:
    """The first ``per_class`` training images of each Fashion-MNIST class as PNG class folders."""
    if (folder / ".complete").exists():
        return folder
    if not FASHION_IDX.is_dir():
        raise SystemExit("Full Fashion-MNIST not found: apt-get install dataset-fashion-mnist")
    with gzip.open(FASHION_IDX / "train-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_IDX / "train-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), np.uint8, offset=8)
    for k, name in enumerate(FASHION_CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(labels == k)[:per_class]:
            Image.fromarray(images[index], "L").save(folder / name / f"{index:05d}.png")
    (folder / ".complete").write_text("ok")
    return folder


def datasets(cache: Path) -> dict[str, tuple[Path, int]]:
    """name -> (folder, image size of the strategy runs)."""
    return {
        "clipart8": (SHARED / "clipart8", 224),
        "fashion_mnist_2k": (SHARED / "fashion_mnist_2k", 64),
        "fashion_mnist_20k": (cache / "fashion_mnist_20k", 32),
    }


def strategies(size: int, large: bool) -> dict[str, dict]:
    """The strategies every dataset is trained with (TrainConfig fields)."""
    common = {"image_size": size, "seed": 42}
    return {
        "feature extractor (last layer)": {**common, "strategy": "feature_extractor", "head": "softmax"},
        "feature extractor (2 blocks below the top)": {**common, "strategy": "feature_extractor", "head": "softmax", "feature_cut": 2},
        "fine-tune top 2 blocks": {**common, "strategy": "finetune", "unfreeze_blocks": 2, "fine_tune_epochs": 10},
        "fine-tune all layers": {**common, "strategy": "finetune", "unfreeze_blocks": -1, "fine_tune_epochs": 8 if large else 10,
                                 "fine_tune_learning_rate": 1e-4 if large else 1e-5},
        "from scratch": {**common, "strategy": "scratch", "weights": "none", "epochs": 15 if large else 30,
                         "patience": 3 if large else 5},
    }


def config_key(dataset: str, fields: dict) -> str:
    return dataset + "|" + json.dumps(fields, sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["clipart8", "fashion_mnist_2k", "fashion_mnist_20k"])
    parser.add_argument("--fresh", action="store_true", help="retrain even when a result is stored")
    parser.add_argument("--skip", nargs="*", default=[], help="strategy titles not to train")
    args = parser.parse_args()

    from tl_core.advisor import advise
    from tl_core.config import DataConfig, TrainConfig
    from tl_core.runner import run_training
    from tl_core.store import RunStore

    cache = Path(tempfile.gettempdir()) / "tl_bench"
    store = RunStore(os.environ.get("TL_DATA_DIR") or cache / "store")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.fresh else {}
    print(f"machine: {machine()}")
    summary = []
    for name in args.datasets:
        if name == "fashion_mnist_20k":
            fashion_subset(2000, cache / "fashion_mnist_20k")
        folder, size = datasets(cache)[name]
        started = time.perf_counter()
        advice = advise(folder, image_size=size)
        advice_seconds = time.perf_counter() - started
        print(f"\n== {name}: {advice['n_images']} images, {advice['n_classes']} classes, smallest class "
              f"{advice['min_per_class']} -> {advice['size']}; similarity {advice['similarity']:.2f} "
              f"({', '.join(f'{k} {v:.2f}' for k, v in advice['similarity_parts'].items())}) -> {advice['domain']}; "
              f"advice in {advice_seconds:.1f} s")
        print(f"   pick: {advice['strategy']} {json.dumps(advice['settings'])}")
        runs = strategies(size, advice["size"] == "large")
        pick = {**{k: v for k, v in advice["settings"].items() if k in {f.name for f in dataclasses.fields(TrainConfig)}},
                "image_size": size, "seed": 42}
        pick_title = next((title for title, fields in runs.items() if _same(fields, pick)), None)
        if pick_title is None:
            cut = pick.get("feature_cut", 0)
            pick_title = (f"feature extractor ({cut} blocks below the top)" if pick["strategy"] == "feature_extractor" and cut
                          else f"advisor's pick ({pick['strategy']})")
            runs[pick_title] = pick
        table = {}
        for title, fields in runs.items():
            if title in args.skip and title != pick_title:
                continue
            key = config_key(name, fields)
            if key not in results:
                run = run_training(folder, TrainConfig(**fields), DataConfig(seed=42), store, name=f"bench {name}: {title}")
                if run["status"] != "succeeded":
                    print(f"   {title}: {run['status']} {run.get('error')}")
                    continue
                results[key] = {"accuracy": run["metrics"]["test_accuracy"], "seconds": run["metrics"]["seconds"],
                                "run_id": run["id"]}
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
            table[title] = results[key]
            print(f"   {title:45s} test acc {results[key]['accuracy']:.3f}  {results[key]['seconds']:7.1f} s")
        best = max(table, key=lambda t: table[t]["accuracy"])
        gap = table[best]["accuracy"] - table[pick_title]["accuracy"]
        verdict = "OK" if gap <= MARGIN + 1e-9 else "ADVISOR WRONG"
        summary_pick = pick_title
        print(f"   best: {best} ({table[best]['accuracy']:.3f}); pick: {summary_pick} "
              f"({table[pick_title]['accuracy']:.3f}); gap {100 * gap:.1f} points -> {verdict}")
        summary.append((name, advice, pick_title, best, table, gap, verdict, advice_seconds))

    print("\n| dataset | images (smallest class) | size | similarity | domain | advisor's pick | acc | measured best | acc | gap (points) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, advice, pick_title, best, table, gap, verdict, _ in summary:
        print(f"| {name} | {advice['n_images']} ({advice['min_per_class']}) | {advice['size']} | {advice['similarity']:.2f} | "
              f"{advice['domain']} | {pick_title} | {table[pick_title]['accuracy']:.3f} | {best} | "
              f"{table[best]['accuracy']:.3f} | {100 * gap:.1f} {'✓' if verdict == 'OK' else '✗'} |")


def _same(a: dict, b: dict) -> bool:
    from tl_core.config import TrainConfig

    return TrainConfig(**a) == TrainConfig(**b)


if __name__ == "__main__":
    main()
