"""Two-stage fine-tuning with cached stages against the canonical end-to-end recipe.

    python bench/two_stage_vs_fit.py [--data ../shared/datasets/clipart8] [--unfreeze-blocks 2]

Both runs go through the engine (``run_training``) with the same data, split, seeds and settings
(MobileNet with ImageNet weights, 224 px, stage 1 up to 30 epochs at 1e-3, stage 2 the top 2
blocks up to 10 epochs at 1e-5, early stopping on validation loss):

- canonical (``cache_stages=False``): stage 1 fits the classifier with the frozen ConvNet inside
  it, on pixels, so the ConvNet runs forward every epoch; stage 2 fits the whole model end to end;
- ours (``cache_stages=True``): stage 1 trains on pooled features computed once, stage 2 on the
  activations entering the first unfrozen block, computed once (float16).

Prints both test accuracies, both training times and the ratio. The decoded-pixel cache is warmed
first, so neither run pays for decoding.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

from _common import DEFAULT_DATA, machine

from tl_core.config import DataConfig, TrainConfig
from tl_core.runner import run_training
from tl_core.store import RunStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--unfreeze-blocks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42, help="split, initialisation and shuffling seed")
    args = parser.parse_args()

    store = RunStore(tempfile.mkdtemp(prefix="tl-bench-two-stage-"))
    ours = TrainConfig(backbone=args.backbone, strategy="finetune", unfreeze_blocks=args.unfreeze_blocks,
                       epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs, seed=args.seed)
    canonical = dataclasses.replace(ours, cache_stages=False)
    print(f"machine: {machine()}")
    # Warm the decoded-pixel cache so that neither timed run decodes (a feature-extractor run).
    run_training(args.data, dataclasses.replace(ours, strategy="feature_extractor"), DataConfig(seed=args.seed), store)
    results = {}
    for title, config in (("canonical end-to-end fit", canonical), ("cached stages (ours)", ours)):
        # Each run extracts its own features: clear the feature cache the warm-up left.
        for file in (store.cache_dir / "features").glob("*.npy"):
            file.unlink()
        run = run_training(args.data, config, DataConfig(seed=args.seed), store)
        if run["status"] != "succeeded":
            raise SystemExit(f"{title}: {run['status']}: {run.get('error')}")
        m = run["metrics"]
        m["run"] = run
        epochs = {stage: len(h) for stage, h in m["history"].items()}
        results[title] = m
        print(f"{title:26s} test acc {m['test_accuracy']:.3f}  macro F1 {m['macro_f1']:.3f}  {m['seconds']:7.1f} s  "
              f"epochs {epochs}")
        for note in m["notes"]:
            print(f"    {note}")
    a, b = results["canonical end-to-end fit"], results["cached stages (ours)"]
    # Top-1 agreement of the two stored models on the test split (what "same accuracy" hides).
    import json

    import keras

    from tl_core import data

    decoded = data.decode_dataset(data.load_images(args.data), a["image_size"], DataConfig(seed=args.seed),
                                  cache_dir=store.cache_dir / "decoded")
    names = json.loads((store.run_dir(a["run"]["id"]) / "split.json").read_text())["test"]
    x = decoded.x[[decoded.names.index(n) for n in names]].astype("float32")
    predictions = [keras.saving.load_model(m["run"]["model_path"], safe_mode=True).predict(x, verbose=0).argmax(1) for m in (a, b)]
    agreement = float((predictions[0] == predictions[1]).mean())
    print(f"top-1 agreement of the two models on the {len(x)} test images: {agreement:.3f}")
    print(f"\ncached stages are {a['seconds'] / b['seconds']:.1f}x faster than the canonical recipe "
          f"({b['seconds']:.1f} s vs {a['seconds']:.1f} s); test accuracy {b['test_accuracy']:.3f} vs "
          f"{a['test_accuracy']:.3f} ({100 * (b['test_accuracy'] - a['test_accuracy']):+.1f} points)")


if __name__ == "__main__":
    main()
