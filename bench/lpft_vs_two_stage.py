"""Two-stage fine-tuning started from the linear probe (LP-FT) against today's two-stage recipe and
the feature extractor, every one on the same splits.

    python bench/lpft_vs_two_stage.py [--seeds 42 43 44 45 46] [--datasets clipart8 fashion_mnist_2k]

Each dataset (clipart8 at 224 px, fashion_mnist_2k at 64 px) is trained through the app's own
runner with MobileNet ImageNet weights (TL_WEIGHTS_DIR) on each seed's stratified 70/15/15 split,
every other setting the app's default (pictures padded to a square, the feature block chosen by the
feature extractor's rule, inference precision auto): the feature extractor (softmax head),
two-stage fine-tuning (a new ReLU layer trained in stage 1, top 2 blocks at 1e-5 in stage 2) and
the same with stage 1 replaced by the linear probe (LP-FT, the default). The
comparison code of "Compare strategies" summarises them: means with 95% intervals and paired
verdicts on the same test images. Results go to bench/results/lpft_vs_two_stage.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from _common import REPO, machine

from tl_core import comparison
from tl_core.config import DataConfig, TrainConfig
from tl_core.store import RunStore

SHARED = REPO.parent / "shared" / "datasets"
SIZES = {"clipart8": 224, "fashion_mnist_2k": 64}


def run_dataset(name: str, seeds: list[int], store: RunStore) -> dict:
    from tl_core.runner import run_training

    base = TrainConfig(backbone="mobilenet", weights="imagenet", image_size=SIZES[name])
    recipes = {
        "feature extractor": TrainConfig(**{**base.to_dict(), "strategy": "feature_extractor"}),
        "two-stage": TrainConfig(**{**base.to_dict(), "strategy": "finetune", "start_from_probe": False}),
        "LP-FT": TrainConfig(**{**base.to_dict(), "strategy": "finetune", "start_from_probe": True}),
    }
    runs = []
    started = time.perf_counter()
    for seed in seeds:
        for recipe, config in recipes.items():
            run = run_training(SHARED / name, config, DataConfig(seed=seed), store, name=name, group=name)
            assert run["status"] == "succeeded", run["error"]
            runs.append(run)
            print(f"  seed {seed} {recipe:<18} {run['metrics']['test_accuracy']:.3f} in {run['metrics']['seconds']:.1f} s")
    summary = comparison.summarize(store, runs)
    print(f"{name}: {len(runs)} runs in {time.perf_counter() - started:.0f} s")
    for s in summary["strategies"]:
        print(f"  {'*' if s['best'] else ' '} {s['label']:<34} mean {s['mean_accuracy']:.3f} "
              f"(95% CI {s['accuracy_ci'][0]:.3f}-{s['accuracy_ci'][1]:.3f}), {s['seconds']:.1f} s a run")
    for verdict in summary["verdicts"]:
        print("  " + verdict["sentence"])
    return {"dataset": name, "image_size": SIZES[name], "summary": summary,
            "runs": [{"seed": r["config"]["data"]["seed"], "label": comparison.strategy_label(r["config"]["train"]),
                      "test_accuracy": r["metrics"]["test_accuracy"], "seconds": r["metrics"]["seconds"]} for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44, 45, 46])
    args = parser.parse_args()
    print(f"Machine: {machine()}")
    store = RunStore(tempfile.mkdtemp(prefix="tl-lpft-"))
    results = [run_dataset(name, args.seeds, store) for name in args.datasets]
    out = REPO / "bench" / "results" / "lpft_vs_two_stage.json"
    out.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    print(f"\nSaved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
