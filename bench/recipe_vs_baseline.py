"""The feature extractor's default recipe against the one before it, on the same splits.

    python bench/recipe_vs_baseline.py [--seeds 42 43 44 45 46] [--datasets clipart8 fashion_mnist_2k] [--out FILE]

For each shared dataset (clipart8 at 224 px, fashion_mnist_2k at 64 px), MobileNet with ImageNet
weights from TL_WEIGHTS_DIR, float32 inference for both (the precision is measured on its own in
bench/precision_accuracy.py), on each seed's stratified 70/15/15 split:
- before: pictures stretched to the square, the last layer's features, a softmax head with C
  chosen on the validation split and fitted on the training split (the default until this bench);
- refit (a part of the new default, for the record): the same features and C, the head then
  refitted on the training and validation images together;
- default: what the app does now, through the runner itself (``run_training`` with the default
  TrainConfig and DataConfig): pictures padded to a square on white (their shape kept), the last
  layer or the earlier block LogME ranks first, whichever scores better on the validation split,
  and the head refitted on training + validation.
Every recipe is scored on the same test images of each split. Prints each seed, the mean and 95%
interval of each, and the paired difference against "before" (a paired bootstrap over the same
test images of every split). Results go to bench/results/recipe_vs_baseline.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, machine

from tl_core import backbones, data
from tl_core.config import DataConfig, TrainConfig
from tl_core.features import extract_features
from tl_core.heads import LinearHead
from tl_core.metrics import mean_accuracy_interval, paired_verdict
from tl_core.runner import run_training
from tl_core.store import PREDICTIONS_FILE, SPLIT_FILE, RunStore

SHARED = REPO.parent / "shared" / "datasets"
SIZES = {"clipart8": 224, "fashion_mnist_2k": 64}
RECIPES = ("before", "refit", "default")


def stretched_features(name: str, backbone: str) -> tuple[np.ndarray, data.DecodedDataset]:
    """The last layer's features of every picture stretched to the square (the recipe before)."""
    size = SIZES[name]
    decoded = data.decode_dataset(data.load_images(SHARED / name), size, DataConfig(resize="stretch"))
    spec = backbones.get_spec(backbone)
    base = backbones.build_base(spec, backbones.resolve_weights(spec, "imagenet"), size)
    model = backbones.build_feature_model(spec, base, size)
    return np.asarray(extract_features(model, decoded.x, 32), dtype=np.float32), decoded


def default_run(name: str, seed: int, backbone: str, store: RunStore) -> dict:
    """The app's default feature extractor on this split, through the runner."""
    config = TrainConfig(backbone=backbone, image_size=SIZES[name], precision="float32", seed=seed)
    run = run_training(SHARED / name, config, DataConfig(seed=seed), store=store)
    if run["status"] != "succeeded":
        raise SystemExit(f"{name} seed {seed}: the run {run['status']}: {run.get('error')}")
    return run


def run_dataset(name: str, seeds: list[int], backbone: str, store: RunStore) -> dict:
    started = time.perf_counter()
    features, decoded = stretched_features(name, backbone)
    print(f"\n{name}: {len(decoded.y)} images, {len(decoded.class_names)} classes, {SIZES[name]} px, "
          f"features {features.shape[1]} ({time.perf_counter() - started:.0f} s)")
    correct = {recipe: [] for recipe in RECIPES}
    rows = []
    for seed in seeds:
        splits = data.split_dataset(decoded, DataConfig(seed=seed))
        tr, va, te = splits["train"], splits["val"], splits["test"]
        row = {"seed": seed, "n_test": len(te)}
        for recipe, refit in (("before", False), ("refit", True)):
            t0 = time.perf_counter()
            head = LinearHead("softmax", seed=seed, refit=refit).fit(features[tr], decoded.y[tr], features[va], decoded.y[va])
            hits = (head.predict(features[te]) == decoded.y[te]).astype(np.int8)
            correct[recipe].append(hits)
            row[recipe] = {"accuracy": float(hits.mean()), "C": head.C_, "seconds": time.perf_counter() - t0}
        t0 = time.perf_counter()
        run = default_run(name, seed, backbone, store)
        folder = Path(run["model_path"]).parent
        test_names = json.loads((folder / SPLIT_FILE).read_text())["test"]
        predictions = json.loads((folder / PREDICTIONS_FILE).read_text())
        classes = run["metrics"]["class_names"]
        by_name = {n: classes[p] == classes[t] for n, p, t in zip(test_names, predictions["predicted"], predictions["true"])}
        if sorted(by_name) != sorted(decoded.names[i] for i in te):
            raise SystemExit(f"{name} seed {seed}: the runner's test split is not the bench's")
        hits = np.asarray([by_name[decoded.names[i]] for i in te], dtype=np.int8)  # the same order as "before"
        correct["default"].append(hits)
        row["default"] = {"accuracy": float(hits.mean()), "feature_cut": run["metrics"].get("feature_cut"),
                          "seconds": time.perf_counter() - t0, "notes": run["metrics"]["notes"][:2]}
        rows.append(row)
        print(f"  seed {seed}: before {row['before']['accuracy']:.3f} (C={row['before']['C']:g})  "
              f"refit {row['refit']['accuracy']:.3f}  default {row['default']['accuracy']:.3f} "
              f"(features {row['default']['feature_cut']} blocks down; the whole run {row['default']['seconds']:.0f} s)",
              flush=True)
    summary = {}
    for recipe in RECIPES:
        mean, low, high = mean_accuracy_interval(correct[recipe])
        summary[recipe] = {"mean": mean, "ci": [low, high]}
        print(f"  {recipe:<8} mean {mean:.3f} (95% CI {low:.3f}-{high:.3f}) over {len(seeds)} splits")
    paired = {}
    for candidate in ("refit", "default"):
        verdict = paired_verdict(correct[candidate], correct["before"])
        paired[candidate] = verdict
        print(f"  {candidate} - before: {verdict['difference'] * 100:+.1f} points "
              f"(95% CI {verdict['ci'][0] * 100:+.1f} to {verdict['ci'][1] * 100:+.1f}): {verdict['verdict']}")
    return {"dataset": name, "image_size": SIZES[name], "backbone": backbone, "seeds": rows, "summary": summary,
            "paired": paired}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44, 45, 46])
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--out", default="recipe_vs_baseline.json", help="file name in bench/results/")
    args = parser.parse_args()
    print(f"Machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="tl-recipe-bench-") as folder:
        store = RunStore(Path(folder))
        results = [run_dataset(name, args.seeds, args.backbone, store) for name in args.datasets]
    out = REPO / "bench" / "results" / args.out
    out.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    print(f"\nSaved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
