"""A candidate recipe against today's default, on the same splits: would it be a better default?

    python bench/recipe_vs_baseline.py [--seeds 42 43 44 45 46] [--datasets clipart8 fashion_mnist_2k]

For each shared dataset (clipart8 at 224 px, fashion_mnist_2k at 64 px) the frozen MobileNet
(ImageNet weights from TL_WEIGHTS_DIR) runs once; then, on each seed's stratified 70/15/15 split,
the feature extractor's softmax head is fitted two ways:
- baseline (today's default): C chosen on the validation split, fitted on the training split;
- recipe (a candidate): C, and balanced class weights on imbalanced data, chosen by stratified
  5-fold cross-validation on training + validation, then refitted on both;
- flip (a candidate): the features of each training image's mirror image added to the training
  rows, and test-time flip (the mean of the probabilities of a test image and of its mirror).
- layer (the advisor's rule, on the whole of training + validation instead of its sample): LogME
  ranks the features 2, 4 and 6 blocks below the top; a softmax head cross-validated on training +
  validation settles the best of them against the last layer; the head is then fitted as the
  baseline's on the chosen layer's features.
A candidate becomes the default only when the paired difference says "better" on both datasets.
Both are scored on the same test images. Prints each seed, the mean and 95% interval of each, and
the paired difference (a paired bootstrap over the same test images of every split). Results go
to bench/results/recipe_vs_baseline.json.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _common import REPO, machine

from tl_core import backbones, data
from tl_core.advisor import EARLY_CUTS, _pooled, cross_validated_layers
from tl_core.config import DataConfig
from tl_core.features import extract_features
from tl_core.heads import LinearHead
from tl_core.metrics import mean_accuracy_interval, paired_verdict
from tl_core.transferability import logme

SHARED = REPO.parent / "shared" / "datasets"
SIZES = {"clipart8": 224, "fashion_mnist_2k": 64}
RECIPES = {"baseline": "validation", "recipe": "cv"}
# Candidate 2: mirrored images' features added to the training rows, and test-time flip (the mean of
# the probabilities of each test image and its mirror); C on the validation split as the default.
FLIP = "flip"
LAYER = "layer"


def features_of(name: str, backbone: str) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray], data.DecodedDataset]:
    """Features of every image, of its mirror image (flipped left to right), and from blocks
    :data:`EARLY_CUTS` below the top (``{cut: features}``)."""
    size = SIZES[name]
    decoded = data.decode_dataset(data.load_images(SHARED / name), size)
    spec = backbones.get_spec(backbone)
    base = backbones.build_base(spec, backbones.resolve_weights(spec, "imagenet"), size)
    model = backbones.build_feature_model(spec, base, size)
    features = np.asarray(extract_features(model, decoded.x, 32), dtype=np.float32)
    mirrored = np.asarray(extract_features(model, np.ascontiguousarray(decoded.x[:, :, ::-1]), 32), dtype=np.float32)
    cuts = [c for c in EARLY_CUTS if c < spec.n_blocks]
    early = _pooled(base, [backbones.block_output_layer(spec, base, c) for c in cuts], decoded.x, 32,
                    backbones.preprocessing_layer(spec))
    return features, mirrored, {c: np.asarray(f, np.float32) for c, f in zip(cuts, early)}, decoded


def run_dataset(name: str, seeds: list[int], backbone: str) -> dict:
    started = time.perf_counter()
    features, mirrored, early, decoded = features_of(name, backbone)
    print(f"\n{name}: {len(decoded.y)} images, {len(decoded.class_names)} classes, {SIZES[name]} px, "
          f"features {features.shape[1]} ({time.perf_counter() - started:.0f} s)")
    correct = {recipe: [] for recipe in (*RECIPES, FLIP, LAYER)}
    rows = []
    for seed in seeds:
        splits = data.split_dataset(decoded, DataConfig(seed=seed))
        tr, va, te = splits["train"], splits["val"], splits["test"]
        row = {"seed": seed, "n_test": len(te)}
        for recipe, selection in RECIPES.items():
            t0 = time.perf_counter()
            head = LinearHead("softmax", seed=seed, selection=selection).fit(
                features[tr], decoded.y[tr], features[va], decoded.y[va])
            hits = (head.predict(features[te]) == decoded.y[te]).astype(np.int8)
            correct[recipe].append(hits)
            row[recipe] = {"accuracy": float(hits.mean()), "C": head.C_, "class_weight": head.class_weight_,
                           "seconds": time.perf_counter() - t0}
        t0 = time.perf_counter()
        head = LinearHead("softmax", seed=seed).fit(
            np.concatenate([features[tr], mirrored[tr]]), np.concatenate([decoded.y[tr], decoded.y[tr]]),
            features[va], decoded.y[va])
        probabilities = (head.predict_proba(features[te]) + head.predict_proba(mirrored[te])) / 2
        hits = (head.classes_[probabilities.argmax(axis=1)] == decoded.y[te]).astype(np.int8)
        correct[FLIP].append(hits)
        row[FLIP] = {"accuracy": float(hits.mean()), "C": head.C_, "seconds": time.perf_counter() - t0}
        t0 = time.perf_counter()
        fit = np.concatenate([tr, va])
        layers = {0: features, **early}
        ranked = max(early, key=lambda cut: logme(early[cut][fit], decoded.y[fit]))
        accuracy = cross_validated_layers({cut: layers[cut][fit] for cut in (0, ranked)}, decoded.y[fit], [0, ranked])
        chosen = ranked if accuracy[ranked] > accuracy[0] else 0
        head = LinearHead("softmax", seed=seed).fit(layers[chosen][tr], decoded.y[tr], layers[chosen][va], decoded.y[va])
        hits = (head.predict(layers[chosen][te]) == decoded.y[te]).astype(np.int8)
        correct[LAYER].append(hits)
        row[LAYER] = {"accuracy": float(hits.mean()), "cut": chosen, "logme_first": ranked,
                      "cv_accuracy": {str(k): v for k, v in accuracy.items()}, "seconds": time.perf_counter() - t0}
        print(f"  seed {seed}: layer {row[LAYER]['accuracy']:.3f} ({chosen} blocks down; LogME's first {ranked}, "
              f"cross-validated {accuracy[ranked]:.3f} vs last layer {accuracy[0]:.3f})")
        rows.append(row)
        print(f"  seed {seed}: flip {row[FLIP]['accuracy']:.3f} (C={row[FLIP]['C']:g})")
        print(f"  seed {seed}: baseline {row['baseline']['accuracy']:.3f} (C={row['baseline']['C']:g})  "
              f"recipe {row['recipe']['accuracy']:.3f} (C={row['recipe']['C']:g}, "
              f"{row['recipe']['class_weight'] or 'no'} class weights, {row['recipe']['seconds']:.1f} s)")
    summary = {}
    for recipe in (*RECIPES, FLIP, LAYER):
        mean, low, high = mean_accuracy_interval(correct[recipe])
        summary[recipe] = {"mean": mean, "ci": [low, high]}
        print(f"  {recipe:<8} mean {mean:.3f} (95% CI {low:.3f}-{high:.3f}) over {len(seeds)} splits")
    paired = {}
    for candidate in ("recipe", FLIP, LAYER):
        verdict = paired_verdict(correct[candidate], correct["baseline"])
        paired[candidate] = verdict
        print(f"  {candidate} - baseline: {verdict['difference'] * 100:+.1f} points "
              f"(95% CI {verdict['ci'][0] * 100:+.1f} to {verdict['ci'][1] * 100:+.1f}): {verdict['verdict']}")
    return {"dataset": name, "image_size": SIZES[name], "backbone": backbone, "seeds": rows, "summary": summary,
            "paired": paired}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44, 45, 46])
    parser.add_argument("--backbone", default="mobilenet")
    args = parser.parse_args()
    print(f"Machine: {machine()}")
    results = [run_dataset(name, args.seeds, args.backbone) for name in args.datasets]
    out = REPO / "bench" / "results" / "recipe_vs_baseline.json"
    out.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    print(f"\nSaved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
