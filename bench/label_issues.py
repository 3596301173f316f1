"""Finding label errors: flip 5% of clipart8's labels (seeded), rank, and count what is found.

    python bench/label_issues.py [--seeds 0 1 2] [--flip 0.05]

MobileNet v1 ImageNet features (TL_WEIGHTS_DIR) of clipart8 at 224 px, computed once (labels do not
change features); for each seed, ``--flip`` of the images get another class at random, then
tl_core.label_issues ranks likely errors (out-of-fold softmax probabilities, confident learning with
cleanlab). Reported: recall among the top-ranked 2x the number flipped (the flipped found there),
precision among the top-ranked as many as were flipped (flipped among them), and precision among the
top 2x, which is at most 0.5 by construction (half of it cannot be flipped images), and the
precision and recall of the whole flagged set (every image cleanlab flags). The issue's bar:
recall >= 0.7 (top 2x) at precision >= 0.5 (read here as the top 1x). A flagged image that was not
flipped may be one of the dataset's own errors. Results go to bench/results/label_issues.json.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _common import REPO, machine

from tl_core import backbones, data
from tl_core.features import extract_features
from tl_core.label_issues import find_label_issues

CLIPART8 = REPO.parent / "shared" / "datasets" / "clipart8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--flip", type=float, default=0.05)
    args = parser.parse_args()
    decoded = data.decode_dataset(data.load_images(CLIPART8), 224)
    spec = backbones.get_spec("mobilenet")
    model = backbones.build_feature_model(spec, backbones.build_base(spec, backbones.resolve_weights(spec, "imagenet"),
                                                                     224), 224)
    started = time.perf_counter()
    features = np.asarray(extract_features(model, decoded.x), np.float32)
    extract_seconds = time.perf_counter() - started
    n, k = len(decoded.y), len(decoded.class_names)
    print(f"machine: {machine()}; clipart8: {n} images, {k} classes; features in {extract_seconds:.0f} s")
    rows = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        flipped = rng.choice(n, size=round(args.flip * n), replace=False)
        labels = decoded.y.copy()
        labels[flipped] = (labels[flipped] + rng.integers(1, k, size=len(flipped))) % k  # another class
        started = time.perf_counter()
        issues = find_label_issues(features, labels, decoded.class_names, list(decoded.names), seed=seed)
        seconds = time.perf_counter() - started
        index = {name: i for i, name in enumerate(decoded.names)}
        ranked = [index[issue.file] for issue in issues]
        found = set(flipped.tolist())
        top2, top1 = ranked[: 2 * len(flipped)], ranked[: len(flipped)]
        recall = len(set(top2) & found) / len(flipped)
        precision_1x = len(set(top1) & found) / max(len(top1), 1)
        precision_2x = len(set(top2) & found) / max(len(top2), 1)
        hits = len(set(ranked) & found)
        rows.append({"seed": seed, "flipped": len(flipped), "flagged": len(issues), "recall_top2x": recall,
                     "precision_top1x": precision_1x, "precision_top2x": precision_2x,
                     "recall_flagged": hits / len(flipped), "precision_flagged": hits / max(len(ranked), 1),
                     "seconds": seconds})
    metrics = ("recall_top2x", "precision_top1x", "precision_top2x", "recall_flagged", "precision_flagged", "seconds")
    mean = {m: float(np.mean([r[m] for r in rows])) for m in metrics}
    print(f"{'seed':>6} {'flipped':>7} {'flagged':>7} {'R@2x':>6} {'P@1x':>6} {'P@2x':>6} {'R flag':>6} {'P flag':>6} "
          f"{'s':>5}")
    for r in [*rows, {"seed": "mean", "flipped": "", "flagged": "", **mean}]:
        print(f"{r['seed']:>6} {r['flipped']:>7} {r['flagged']:>7} " + " ".join(f"{r[m]:6.2f}" for m in metrics[:-1])
              + f" {r['seconds']:5.2f}")
    print(f"bar: recall (top 2x) >= 0.7 at precision (top 1x) >= 0.5: "
          f"{'met' if mean['recall_top2x'] >= 0.7 and mean['precision_top1x'] >= 0.5 else 'NOT met'} (mean)")
    (REPO / "bench" / "results" / "label_issues.json").write_text(
        json.dumps({"machine": machine(), "flip": args.flip, "image_size": 224, "backbone": "mobilenet",
                    "extract_seconds": extract_seconds, "rows": rows, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
