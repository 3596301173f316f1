"""Calibration and plausible-class sets, measured: ECE before/after temperature scaling, the conformal
sets' coverage, and what happens to pictures of none of the classes.

    python bench/calibration.py [--seeds 42 43 44]

MobileNet v1 ImageNet features (TL_WEIGHTS_DIR) of clipart8 (224 px) and fashion_mnist_2k (64 px); on
each seed's 70/15/15 split the softmax head is fitted as the runner fits it, the temperature and the
conformal threshold (90%) on the validation split, everything measured on the test split. Out of
distribution: 300 Fashion-MNIST pictures (at 224 px) given to the clipart8 model: the share shown as
"not sure" by the Predict page (tl_core.calibration.how_sure). Results go to bench/results/calibration.json.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _common import REPO, machine

from tl_core import backbones, data
from tl_core.calibration import apply_temperature, calibrate, how_sure
from tl_core.config import DataConfig
from tl_core.features import extract_features
from tl_core.heads import LinearHead

SHARED = REPO.parent / "shared" / "datasets"
DATASETS = {"clipart8": 224, "fashion_mnist_2k": 64}


def features_of(source, size: int, limit: int | None = None):
    image_set = data.load_images(source)
    if limit:
        image_set.items = image_set.items[:: max(1, len(image_set.items) // limit)][:limit]
    decoded = data.decode_dataset(image_set, size)
    spec = backbones.get_spec("mobilenet")
    model = backbones.build_feature_model(spec, backbones.build_base(spec, backbones.resolve_weights(spec, "imagenet"),
                                                                     size), size)
    return decoded, np.asarray(extract_features(model, decoded.x), np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    args = parser.parse_args()
    print(f"machine: {machine()}")
    out: dict = {"machine": machine(), "datasets": {}}
    _, outside = features_of(SHARED / "fashion_mnist_2k", 224, limit=300)
    for name, size in DATASETS.items():
        decoded, features = features_of(SHARED / name, size)
        rows = []
        for seed in args.seeds:
            split = data.split_dataset(decoded, DataConfig(seed=seed))
            y = decoded.y
            head = LinearHead("softmax", seed=0).fit(features[split["train"]], y[split["train"]],
                                                     features[split["val"]], y[split["val"]])
            c = calibrate(head.predict_proba(features[split["val"]]), y[split["val"]],
                          head.predict_proba(features[split["test"]]), y[split["test"]])
            row = {"seed": seed, "temperature": c.temperature, "ece_before": c.ece_before, "ece_after": c.ece_after,
                   "coverage": c.test_coverage, "mean_set_size": c.mean_set_size}
            if name == "clipart8":
                p = apply_temperature(head.predict_proba(outside), c.temperature)
                verdicts = [how_sure(row_p, decoded.class_names, c.to_dict()) for row_p in p]
                row["outside_not_sure"] = float(np.mean([not v["sure"] for v in verdicts]))
                row["outside_set_size"] = float(np.mean([len(v["plausible"]) for v in verdicts]))
                test_p = apply_temperature(head.predict_proba(features[split["test"]]), c.temperature)
                row["inside_not_sure"] = float(np.mean([not how_sure(r, decoded.class_names, c.to_dict())["sure"]
                                                        for r in test_p]))
            rows.append(row)
            print(f"{name:18s} seed {seed}: T {c.temperature:.2f}, ECE {c.ece_before:.3f} -> {c.ece_after:.3f}, "
                  f"90% sets cover {c.test_coverage:.0%} (mean {c.mean_set_size:.1f} classes)"
                  + (f"; Fashion-MNIST pictures 'not sure' {row['outside_not_sure']:.0%} vs its own test images "
                     f"{row['inside_not_sure']:.0%}" if name == "clipart8" else ""))
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "seed"}
        print(f"{name:18s} mean: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
        out["datasets"][name] = {"rows": rows, "mean": mean}
    (REPO / "bench" / "results" / "calibration.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
