"""Calibration and plausible-class sets, measured: ECE before/after temperature scaling (the temperature
fitted on the validation split, or on out-of-fold predictions of train+val), the conformal sets' coverage,
and what happens to pictures of none of the classes.

    nice -n 5 python bench/calibration.py [--seeds 42 43 44] [--folds 5]

MobileNet v1 ImageNet features (TL_WEIGHTS_DIR) of clipart8 (224 px) and fashion_mnist_2k (64 px). On
each seed's stratified 70/15/15 split (tl_core.data.split_dataset) the softmax head is fitted as the
runner fits it (LinearHead, C chosen on the validation split). Temperature:
  * ``val``: fitted on the head's validation probabilities (what a run does);
  * ``oof``: fitted on out-of-fold probabilities of train+val (k folds, the head's C, each fold's head
    fitted on the rest), then applied to the same head;
  * ``oracle``: fitted on the test split itself: the best one number can do there (a reference only).
ECE (15 bins) and NLL on the test split; ``ece_noise`` is the ECE a perfectly calibrated model with the
same confidences would show on this many images (mean of 200 draws): ECE differences below it are noise.
Conformal threshold from the validation split at 90% (after the ``val`` temperature); coverage and mean set
size on the test split. Out of distribution: every picture of the other dataset (at this model's size)
scored by this model: the share "flagged" (Predict's "not sure": top probability under NOT_SURE_BELOW,
or a set of 2+ classes, or an empty one) against the share of its own test images flagged, and the AUROC
of the top calibrated probability telling own test images from the others. And Predict's "None of these?"
check in feature space (tl_core.novelty: Mahalanobis distance to the nearest class mean, flagging beyond
the validation split's 95th percentile): its shares of own test images and of the others flagged.
Results go to bench/results/calibration.json; features are cached in --cache (default /tmp/calib/features).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import REPO, machine

from tl_core import backbones, data
from tl_core.calibration import (
    COVERAGE,
    NOT_SURE_BELOW,
    apply_temperature,
    calibrate,
    ece_noise,
    expected_calibration_error,
    fit_temperature,
    how_sure,
    negative_log_likelihood,
)
from tl_core.config import DataConfig, TrainConfig
from tl_core.heads import LinearHead
from tl_core.novelty import fit_novelty

SHARED = REPO.parent / "shared" / "datasets"
DATASETS = {"clipart8": 224, "fashion_mnist_2k": 64}
OTHER = {"clipart8": "fashion_mnist_2k", "fashion_mnist_2k": "clipart8"}
RESULT = REPO / "bench" / "results" / "calibration.json"


def features_of(name: str, size: int, cache: Path):
    """``(decoded, features)``: the dataset's decoded images at ``size`` and their MobileNet features."""
    from tl_core.features import extract_features

    decoded = data.decode_dataset(data.load_images(SHARED / name), size)
    file = cache / f"{name}_{size}.npy"
    if file.exists():
        features = np.load(file)
        if len(features) == len(decoded.y):
            return decoded, features
    spec = backbones.get_spec("mobilenet")
    model = backbones.build_feature_model(
        spec, backbones.build_base(spec, backbones.resolve_weights(spec, "imagenet"), size), size)
    started = time.perf_counter()
    features = np.asarray(extract_features(model, decoded.x), np.float32)
    print(f"  features of {name} at {size} px: {len(features)} images in {time.perf_counter() - started:.0f} s")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(file, features)
    return decoded, features


def out_of_fold(features, y, C: float, seed: int, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities of ``features`` (every row predicted by a head not fitted on it)."""
    from sklearn.model_selection import StratifiedKFold

    k = len(np.unique(y))
    out = np.zeros((len(y), k))
    for fit_rows, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, y):
        head = LinearHead("softmax", C=C, seed=seed).fit(features[fit_rows], y[fit_rows])
        out[np.ix_(held, head.classes_)] = head.predict_proba(features[held])
    return out, y


def flagged(probabilities, class_names, calibration) -> dict[str, float]:
    """How Predict would speak of these calibrated probabilities."""
    verdicts = [how_sure(row, class_names, calibration) for row in probabilities]
    sizes = np.array([len(v["plausible"]) for v in verdicts])
    return {"flagged": float(np.mean([not v["sure"] for v in verdicts])),
            "top_below": float(np.mean(probabilities.max(axis=1) < NOT_SURE_BELOW)),
            "set_2_plus": float(np.mean(sizes >= 2)), "set_empty": float(np.mean(sizes == 0)),
            "mean_set_size": float(sizes.mean())}


def auroc(inside_top, outside_top) -> float:
    """P(an own test image's top probability > an outside picture's), ties counted half."""
    from sklearn.metrics import roc_auc_score

    scores = np.concatenate([inside_top, outside_top])
    return float(roc_auc_score(np.r_[np.ones(len(inside_top)), np.zeros(len(outside_top))], scores))


def one_seed(name, decoded, features, outside_features, seed, folds) -> dict:
    y = decoded.y
    split = data.split_dataset(decoded, DataConfig(seed=seed))
    train, val, test = split["train"], split["val"], split["test"]
    started = time.perf_counter()
    head = LinearHead("softmax", seed=TrainConfig().seed).fit(features[train], y[train], features[val], y[val])
    p_val, p_test = head.predict_proba(features[val]), head.predict_proba(features[test])
    trainval = np.concatenate([train, val])
    p_oof, y_oof = out_of_fold(features[trainval], y[trainval], head.C_, seed, folds)
    temperatures = {"val": fit_temperature(p_val, y[val]), "oof": fit_temperature(p_oof, y_oof),
                    "oracle": fit_temperature(p_test, y[test])}
    row = {"seed": seed, "n": {"train": len(train), "val": len(val), "test": len(test)}, "C": head.C_,
           "accuracy": float((p_test.argmax(1) == y[test]).mean()),
           "ece_before": expected_calibration_error(p_test, y[test]), "nll_before": negative_log_likelihood(p_test, y[test]),
           "ece_noise": ece_noise(apply_temperature(p_test, temperatures["val"]), seed)}
    for method, t in temperatures.items():
        q = apply_temperature(p_test, t)
        row[f"T_{method}"] = t
        row[f"ece_{method}"] = expected_calibration_error(q, y[test])
        row[f"nll_{method}"] = negative_log_likelihood(q, y[test])
    for method in ("val", "oof"):
        c = calibrate(p_val, y[val], p_test, y[test], COVERAGE, temperature=temperatures[method])
        row[f"threshold_{method}"], row[f"coverage_{method}"] = c.threshold, c.test_coverage
        row[f"set_size_{method}"] = c.mean_set_size
        if method == "val":
            calibration = c.to_dict()
    inside = flagged(apply_temperature(p_test, temperatures["val"]), decoded.class_names, calibration)
    outside_p = apply_temperature(head.predict_proba(outside_features), temperatures["val"])
    outside = flagged(outside_p, decoded.class_names, calibration)
    row["own_test"] = inside
    row["outside"] = outside
    row["ood_auroc"] = auroc(apply_temperature(p_test, temperatures["val"]).max(1), outside_p.max(1))
    far = fit_novelty(features[train], y[train], features[val])  # Predict's "None of these?" (tl_core.novelty)
    row["distance_flag_own"] = float(far.flags(features[test]).mean())
    row["distance_flag_outside"] = float(far.flags(outside_features).mean())
    row["seconds"] = time.perf_counter() - started
    print(f"{name:16s} seed {seed}: acc {row['accuracy']:.3f} C {head.C_:g} | T val {temperatures['val']:.2f} "
          f"oof {temperatures['oof']:.2f} oracle {temperatures['oracle']:.2f} | ECE {row['ece_before']:.3f} -> "
          f"val {row['ece_val']:.3f} / oof {row['ece_oof']:.3f} (noise {row['ece_noise']:.3f}) | NLL "
          f"{row['nll_before']:.3f} -> {row['nll_val']:.3f} / {row['nll_oof']:.3f} | 90% sets cover "
          f"{row['coverage_val']:.0%}, {row['set_size_val']:.2f} classes | flagged: own {inside['flagged']:.0%}, "
          f"{OTHER[name]} {outside['flagged']:.0%} (AUROC {row['ood_auroc']:.2f}); feature distance flags own "
          f"{row['distance_flag_own']:.0%}, {OTHER[name]} {row['distance_flag_outside']:.0%} [{row['seconds']:.0f} s]")
    return row


def mean_of(rows: list[dict]) -> dict:
    out = {}
    for key, value in rows[0].items():
        if key in ("seed", "n"):
            continue
        if isinstance(value, dict):
            out[key] = {k: float(np.mean([r[key][k] for r in rows])) for k in value}
        else:
            out[key] = float(np.mean([r[key] for r in rows]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/calib/features"))
    args = parser.parse_args()
    print(f"machine: {machine()}")
    out: dict = {"machine": machine(), "backbone": "mobilenet (ImageNet)", "split": "stratified 70/15/15",
                 "head": "LinearHead('softmax'), C chosen on validation", "coverage_target": COVERAGE,
                 "not_sure_below": NOT_SURE_BELOW, "oof_folds": args.folds, "seeds": args.seeds, "datasets": {}}
    loaded = {}
    for name, size in DATASETS.items():
        loaded[name] = features_of(name, size, args.cache)
        loaded[(OTHER[name], size)] = features_of(OTHER[name], size, args.cache)[1]
    for name in DATASETS:
        decoded, features = loaded[name]
        rows = [one_seed(name, decoded, features, loaded[(OTHER[name], DATASETS[name])], seed, args.folds)
                for seed in args.seeds]
        out["datasets"][name] = {"image_size": DATASETS[name], "outside": OTHER[name], "rows": rows, "mean": mean_of(rows)}
    all_rows = [r for d in out["datasets"].values() for r in d["rows"]]
    oof_wins = {k: sum(r[f"{k}_oof"] < r[f"{k}_val"] for r in all_rows) for k in ("ece", "nll")}
    out["val_vs_oof"] = {"pairs": len(all_rows), "oof_lower_ece": oof_wins["ece"], "oof_lower_nll": oof_wins["nll"],
                         "mean_ece_val": float(np.mean([r["ece_val"] for r in all_rows])),
                         "mean_ece_oof": float(np.mean([r["ece_oof"] for r in all_rows])),
                         "mean_nll_val": float(np.mean([r["nll_val"] for r in all_rows])),
                         "mean_nll_oof": float(np.mean([r["nll_oof"] for r in all_rows]))}
    print()
    print(f"{'dataset':16s} {'acc':>5s} {'T val':>5s} {'T oof':>5s} {'ECE pre':>7s} {'ECE val':>7s} {'ECE oof':>7s} "
          f"{'noise':>5s} {'NLL pre':>7s} {'NLL val':>7s} {'NLL oof':>7s} {'cover':>5s} {'set':>4s} "
          f"{'flag own':>8s} {'flag OOD':>8s} {'AUROC':>5s} {'dist own':>8s} {'dist OOD':>8s}")
    for name, d in out["datasets"].items():
        m = d["mean"]
        print(f"{name:16s} {m['accuracy']:5.3f} {m['T_val']:5.2f} {m['T_oof']:5.2f} {m['ece_before']:7.3f} "
              f"{m['ece_val']:7.3f} {m['ece_oof']:7.3f} {m['ece_noise']:5.3f} {m['nll_before']:7.3f} {m['nll_val']:7.3f} "
              f"{m['nll_oof']:7.3f} {m['coverage_val']:5.0%} {m['set_size_val']:4.2f} {m['own_test']['flagged']:8.0%} "
              f"{m['outside']['flagged']:8.0%} {m['ood_auroc']:5.2f} {m['distance_flag_own']:8.0%} "
              f"{m['distance_flag_outside']:8.0%}")
    v = out["val_vs_oof"]
    print(f"out-of-fold temperature lower than validation's: ECE {v['oof_lower_ece']}/{v['pairs']}, "
          f"NLL {v['oof_lower_nll']}/{v['pairs']} (means ECE {v['mean_ece_val']:.3f} vs {v['mean_ece_oof']:.3f}, "
          f"NLL {v['mean_nll_val']:.3f} vs {v['mean_nll_oof']:.3f})")
    RESULT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
