"""Does bfloat16 inference change what a user sees? The feature extractor's test accuracy with
features computed in float32 and in bfloat16 (forced), same splits, same heads.

    python bench/precision_accuracy.py [--seeds 42 43 44 45 46]

MobileNet v1 with its ImageNet weights (TL_WEIGHTS_DIR) on clipart8 (224 px) and fashion_mnist_2k
(64 px): the features of every image once in each precision; on each seed's 70/15/15 split the
softmax head is fitted as the runner fits it on each. Prints the mean test accuracy of each, the
mean difference (the issue's bar: within 0.5 points) and the top-1 agreement of the two on the test
images. Results go to bench/results/precision_accuracy.json.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _common import REPO, machine

from tl_core import backbones, data
from tl_core.config import DataConfig
from tl_core.features import extract_features
from tl_core.heads import LinearHead
from tl_core.precision import bfloat16_twin

SHARED = REPO.parent / "shared" / "datasets"
DATASETS = {"clipart8": 224, "fashion_mnist_2k": 64}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    args = parser.parse_args()
    print(f"machine: {machine()}")
    out = {"machine": machine(), "datasets": {}}
    for name, size in DATASETS.items():
        decoded = data.decode_dataset(data.load_images(SHARED / name), size)
        spec = backbones.get_spec("mobilenet")
        model = backbones.build_feature_model(spec, backbones.build_base(spec, backbones.resolve_weights(
            spec, "imagenet"), size), size)
        features = {"float32": np.asarray(extract_features(model, decoded.x), np.float32),
                    "bfloat16": np.asarray(extract_features(bfloat16_twin(model), decoded.x), np.float32)}
        rows = []
        for seed in args.seeds:
            split = data.split_dataset(decoded, DataConfig(seed=seed))
            y = decoded.y
            predicted = {}
            for precision, f in features.items():
                head = LinearHead("softmax", seed=0).fit(f[split["train"]], y[split["train"]], f[split["val"]],
                                                         y[split["val"]])
                predicted[precision] = head.predict(f[split["test"]])
            accuracy = {p: float((predicted[p] == y[split["test"]]).mean()) for p in predicted}
            agreement = float((predicted["float32"] == predicted["bfloat16"]).mean())
            rows.append({"seed": seed, **accuracy, "agreement": agreement})
            print(f"{name:18s} seed {seed}: float32 {accuracy['float32']:.3f}, bfloat16 {accuracy['bfloat16']:.3f}, "
                  f"top-1 agreement {agreement:.3f}")
        mean = {p: float(np.mean([r[p] for r in rows])) for p in ("float32", "bfloat16", "agreement")}
        difference = 100 * (mean["bfloat16"] - mean["float32"])
        print(f"{name:18s} mean: float32 {mean['float32']:.3f}, bfloat16 {mean['bfloat16']:.3f} "
              f"({difference:+.1f} points), top-1 agreement {mean['agreement']:.3f}")
        out["datasets"][name] = {"rows": rows, "mean": mean, "difference_points": difference}
    (REPO / "bench" / "results" / "precision_accuracy.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
