"""Finding label errors: flip 5% of clipart8's labels (seeded), rank, and count what is found.

    python bench/label_issues.py [--seeds 0 1 2] [--flip 0.05]

MobileNet v1 ImageNet features (TL_WEIGHTS_DIR) of clipart8 at 224 px, computed once (labels do not
change features); for each seed, ``--flip`` of the images get another class at random, then
tl_core.label_issues ranks likely errors (out-of-fold softmax probabilities, confident learning with
cleanlab). Reported: recall among the top-ranked 2x the number flipped (the flipped found there),
precision among the top-ranked as many as were flipped (flipped among them), and precision among the
top 2x, which is at most 0.5 by construction (half of it cannot be flipped images). The issue's bar:
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
    features = np.asarray(extract_features(model, decoded.x), np.float32)
    n, k = len(decoded.y), len(decoded.class_names)
    print(f"machine: {machine()}; clipart8: {n} images, {k} classes")
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
        rows.append({"seed": seed, "flipped": len(flipped), "flagged": len(issues), "recall_top2x": recall,
                     "precision_top1x": precision_1x, "precision_top2x": precision_2x, "seconds": seconds})
        print(f"seed {seed}: {len(flipped)} flipped, {len(issues)} flagged; recall in the top {len(top2)} {recall:.2f}; "
              f"precision in the top {len(top1)} {precision_1x:.2f}, in the top {len(top2)} {precision_2x:.2f} "
              f"({seconds:.1f} s)")
    mean = {m: float(np.mean([r[m] for r in rows]))
            for m in ("recall_top2x", "precision_top1x", "precision_top2x", "seconds")}
    print(f"mean: recall (top 2x) {mean['recall_top2x']:.2f}, precision (top 1x) {mean['precision_top1x']:.2f}, "
          f"precision (top 2x) {mean['precision_top2x']:.2f}, {mean['seconds']:.1f} s per ranking")
    (REPO / "bench" / "results" / "label_issues.json").write_text(
        json.dumps({"machine": machine(), "flip": args.flip, "rows": rows, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
