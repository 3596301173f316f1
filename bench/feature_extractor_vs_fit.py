"""The feature-extractor strategy against the canonical Keras recipe, same data, split and seed.

    python bench/feature_extractor_vs_fit.py [--data ../shared/datasets/clipart8] [--epochs 30]

Canonical recipe (keras-io): frozen base inside a Keras model, called with training=False,
global average pooling, a softmax Dense layer, `fit` for 30 epochs on the pixels (the frozen
ConvNet runs again every epoch). Ours: the ConvNet runs once, a logistic-regression head is fitted
on the features (C picked on the validation split). Both start from decoded pixels in memory.
Prints both test accuracies and the time ratio.
"""

from __future__ import annotations

import argparse
import time

import keras
from _common import DEFAULT_DATA, machine

from tl_core import backbones, data
from tl_core.config import DataConfig
from tl_core.features import extract_features
from tl_core.heads import LinearHead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    decoded = data.decode_dataset(data.load_images(args.data), 224)
    splits = data.split_dataset(decoded, DataConfig(seed=42))
    spec = backbones.get_spec(args.backbone)
    weights = backbones.resolve_weights(spec, "imagenet")
    n_classes = len(decoded.class_names)
    x = {part: decoded.x[idx] for part, idx in splits.items()}
    y = {part: decoded.y[idx] for part, idx in splits.items()}
    print(f"{len(decoded.y)} images, {n_classes} classes, split {[len(v) for v in y.values()]} on {machine()}")

    keras.utils.set_random_seed(42)
    base = backbones.build_base(spec, weights, 224)
    base.trainable = False
    features = backbones.build_feature_model(spec, base, 224)
    start = time.perf_counter()
    model = keras.Sequential([features, keras.layers.Dense(n_classes, activation="softmax")])
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.make_batches(x["train"], y["train"], args.batch_size, shuffle=True, seed=42),
              validation_data=data.make_batches(x["val"], y["val"], args.batch_size), epochs=args.epochs, verbose=0)
    canonical_acc = float((model.predict(data.make_batches(x["test"], None, args.batch_size), verbose=0).argmax(1) == y["test"]).mean())
    canonical = time.perf_counter() - start

    start = time.perf_counter()
    feats = extract_features(features, decoded.x, args.batch_size)
    head = LinearHead("softmax", seed=42, selection="validation").fit(feats[splits["train"]], y["train"], feats[splits["val"]], y["val"])
    ours_acc = float((head.predict(feats[splits["test"]]) == y["test"]).mean())
    ours = time.perf_counter() - start

    print(f"canonical fit ({args.epochs} epochs): test accuracy {canonical_acc:.3f} in {canonical:.1f} s")
    print(f"feature extractor (once + head):   test accuracy {ours_acc:.3f} in {ours:.1f} s")
    print(f"speed-up {canonical / ours:.1f}x, accuracy difference {ours_acc - canonical_acc:+.3f}")


if __name__ == "__main__":
    main()
