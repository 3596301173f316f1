"""Time to the first result: from a finished upload to a trained, evaluated feature extractor with the
heat maps of its mistakes, through the app's own path (save the upload, the Data page's check that
decodes into the pixel cache, then Train: the queue, the worker, a training process), per stage.

    python bench/first_result.py [--data ../shared/datasets/clipart8] [--think 20] [--repeats 1]

Two set-ups in one invocation, each on a fresh data folder (nothing cached but what the upload step
makes), alternating, so the machine's noise hits both:
- before: what the app did until now: the worker starts when Train is pressed and starts a fresh
  process for the run (TensorFlow's imports on the clock); the head fitted with the BLAS library's
  default threads; float32 inference; the last layer's features of pictures stretched to the square
  (the recipe before bench/recipe_vs_baseline.py; its head refit on train + val is in both);
- after: the app now: it starts the worker when the dataset is loaded and the idle worker keeps a
  training process ready (TL_WORKER_STANDBY); the head fitted with one BLAS thread; inference
  precision ``auto`` (bfloat16 on a CPU with AVX512_BF16 or AMX, where it is faster); pictures
  padded to a square and the feature block chosen (every candidate block from one pass, a
  cross-validated choice: more work than before, measured here).
Both wait ``--think`` seconds between the upload and Train (a person reading the health report).
Prints each part of the time (tl_core.progress.time_breakdown) and the ratio after / before of the
total; results go to bench/results/first_result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_DATA, REPO, machine

from tl_core.backbones import get_spec
from tl_core.config import DataConfig, TrainConfig
from tl_core.data import decode_dataset, load_images
from tl_core.datasets import save_image_set
from tl_core.jobs import ensure_worker, submit
from tl_core.progress import STAGE_TITLES, TIMELINE_TITLES, time_breakdown
from tl_core.store import RunStore

RESULTS = REPO / "bench" / "results" / "first_result.json"
SETUPS = {
    "before": {"env": {"TL_WORKER_STANDBY": "0", "TL_HEAD_BLAS_THREADS": "0"}, "warm_on_load": False,
               "train": {"precision": "float32", "feature_cut": 0}, "data": {"resize": "stretch"}},
    "after": {"env": {"TL_WORKER_STANDBY": "1", "TL_HEAD_BLAS_THREADS": "1"}, "warm_on_load": True,
              "train": {}, "data": {}},
}


def one(name: str, data: Path, think: float, root: Path) -> dict:
    setup = SETUPS[name]
    os.environ.update(setup["env"])  # the worker and its processes inherit it
    store = RunStore(root / name)
    try:
        image_set = load_images(data)
        path = save_image_set(store, image_set, data.name)  # the upload, saved as the app saves it
        config = TrainConfig(**setup["train"])  # the app's default: feature extractor, MobileNet, ImageNet weights
        data_config = DataConfig(**setup["data"])
        # The Data page's health check decodes into the pixel cache training reads (ui.state.dataset_report).
        decode_dataset(load_images(path), get_spec(config.backbone).input_size, data_config,
                       cache_dir=store.cache_dir / "decoded")
        if setup["warm_on_load"]:
            ensure_worker(store)  # as ui.state.set_dataset does
        time.sleep(think)
        started = time.time()
        run_id = submit(store, path, config, data_config, name=data.name)
        ensure_worker(store)  # as the Train page does
        while (run := store.get_run(run_id))["status"] in ("queued", "running"):
            time.sleep(0.1)
        if run["status"] != "succeeded":
            raise SystemExit(f"{name}: the run {run['status']}: {run.get('error')}")
        total = run["updated_at"] - started
        return {"total": total, "parts": time_breakdown(run), "accuracy": run["metrics"]["test_accuracy"],
                "precision": (run["metrics"].get("precision") or "float32")}
    finally:
        subprocess.run(["pkill", "-f", f"tl_core worker --data-dir {store.data_dir.resolve()}"], check=False)
        subprocess.run(["pkill", "-f", f"tl_core worker --data-dir {store.data_dir}"], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--think", type=float, default=20.0, help="seconds between the upload and Train")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    titles = {**STAGE_TITLES, **TIMELINE_TITLES}
    print(f"machine: {machine()}; data: {args.data.name}; think time {args.think:g} s")
    results: dict[str, list[dict]] = {name: [] for name in SETUPS}
    root = Path(tempfile.mkdtemp(prefix="tl-first-result-"))
    try:
        for repeat in range(args.repeats):
            for name in SETUPS:
                result = one(name, args.data, args.think, root / str(repeat))
                results[name].append(result)
                print(f"\n{name} (repeat {repeat + 1}): {result['total']:.1f} s to the first result, test accuracy "
                      f"{result['accuracy']:.3f}, inference {result['precision']}")
                for part, seconds in result["parts"]:
                    print(f"  {titles.get(part, part):60s} {seconds:6.1f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mean = {name: sum(r["total"] for r in rs) / len(rs) for name, rs in results.items()}
    ratio = mean["after"] / mean["before"]
    print(f"\nfirst result: before {mean['before']:.1f} s, after {mean['after']:.1f} s: after / before = {ratio:.2f} "
          f"({1 - ratio:.0%} sooner)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "data": args.data.name, "think_seconds": args.think,
                                   "results": results, "mean_seconds": mean, "ratio_after_before": ratio}, indent=1))


if __name__ == "__main__":
    main()
