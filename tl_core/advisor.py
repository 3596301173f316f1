"""The strategy advisor: measure data size and domain similarity, then place the dataset in the matrix.

| data size | similar domain | different domain |
| --- | --- | --- |
| small | train only new layers on frozen features | the same, from an earlier layer when it transfers better |
| large | fine-tune all layers after a warm-up | train from scratch (from :data:`SCRATCH_MIN_PER_CLASS`; below, as small) |

**Size** is the number of usable images in the smallest class (the median is shown too): "large"
from :data:`LARGE_MIN_PER_CLASS`.

**Domain similarity** to the backbone's pretraining data (ImageNet) is measured on a stratified
sample of at most :data:`SAMPLE_SIZE` images, in one forward pass of the pretrained backbone:

- *statistics*: how close the activation statistics of the user's images are to the ImageNet
  statistics every BatchNormalization layer stores (its moving mean and variance): the symmetric
  KL divergence between the two per-channel Gaussians, median over channels, mean over layers;
  the part is ``exp(-divergence)``. The statistics shift is what a different domain *is* for a
  network (Li et al. 2016, "Revisiting Batch Normalization for Practical Domain Adaptation").
- *recognition*: how confidently the 1000-class ImageNet classifier recognises the images: the
  mean of its top-1 probability and of one minus its normalised prediction entropy.
- *transferability*: LogME of the pooled features for the user's labels (You et al. 2021), and
  as the part the share of label variance the evidence-maximising linear model explains.

The similarity is their mean weighted by :data:`PART_WEIGHTS` (renormalised over the parts that
could be measured); "similar" from :data:`SIMILAR_MIN`, which sits between the measured
:data:`SIMILARITY_ANCHORS` of clip art and of Fashion-MNIST.

Every threshold and figure here is a constant of this module or a results file of ``bench/``; the
pages, the reasons and the README render them from there (``python bench/readme_facts.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from tl_core.config import EARLY_CUTS, candidate_cuts
from tl_core.errors import ConfigError

# A class needs on the order of a thousand examples before retraining a deep ConvNet beats a
# linear classifier on its frozen features: Yosinski et al. 2014 fine-tuned with ~1,300 images per
# class; Kornblith et al. 2019 ("Do Better ImageNet Models Transfer Better?") find fine-tuning's
# lead over fixed features shrinks as per-class data falls to the tens and hundreds; the CS231n
# transfer-learning notes and the Keras guide call a few hundred per class "small". Our bench
# (BENCH below) did not find a size where retraining pays on a different domain: frozen features
# from an earlier block won at 200 and at 2,000 per class of Fashion-MNIST.
LARGE_MIN_PER_CLASS = 1000
# From scratch only pays with much more: He et al. 2019 ("Rethinking ImageNet Pre-training") need
# about 10k+ images and long schedules before random initialisation catches up. In our bench at
# 2,000 per class of Fashion-MNIST (large, different domain) a MobileNet from scratch trailed frozen
# earlier-layer features (BENCH). Between the two thresholds the large/different cell therefore
# takes the feature extractor from the layer that transfers best.
SCRATCH_MIN_PER_CLASS = 5000
# Test accuracies measured by bench/advisor_vs_best.py (MobileNet, Fashion-MNIST: a different
# domain), read from its results file: the one source of these figures for the pages, the reasons and
# the README. Each entry: the dataset in the results and, per strategy, what its settings must hold.
BENCH_RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "advisor_vs_best.json"
_BENCH_RUNS = {
    "small": ("fashion_mnist_2k", 200),
    "large": ("fashion_mnist_20k", 2000),
}
_BENCH_STRATEGIES = {
    "earlier_features": lambda s: s["strategy"] == "feature_extractor" and s.get("feature_cut") in EARLY_CUTS,
    "last_layer": lambda s: s["strategy"] == "feature_extractor" and not s.get("feature_cut"),
    "finetune_all": lambda s: s["strategy"] == "finetune" and s.get("unfreeze_blocks") == -1,
    "finetune_top": lambda s: s["strategy"] == "finetune" and (s.get("unfreeze_blocks") or 0) > 0,
    "scratch": lambda s: s["strategy"] == "scratch",
}


def _read_bench(path: Path = BENCH_RESULTS) -> dict[str, dict[str, Any]]:
    """``{"small"|"large": {"per_class": n, <strategy>: best test accuracy}}`` from the bench's results;
    empty when the file is missing (an install without ``bench/``)."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    bench: dict[str, dict[str, Any]] = {}
    for size, (dataset, per_class) in _BENCH_RUNS.items():
        figures: dict[str, Any] = {"per_class": per_class}
        for key, value in results.items():
            name, _, settings = key.partition("|")
            if name != dataset:
                continue
            for strategy, matches in _BENCH_STRATEGIES.items():
                if matches(json.loads(settings)):
                    figures[strategy] = max(figures.get(strategy, 0.0), round(value["accuracy"], 3))
        bench[size] = figures
    return bench


BENCH = _read_bench()
SIMILAR_MIN = 0.7
SAMPLE_SIZE = 300
# How long a recommendation takes (bench/results/advisor_vs_best.txt: 12.7-18.8 s inside the bench;
# `python -m tl_core advise` with its imports: 14-29 s).
ADVICE_TIME = "15-40 s on two CPU cores"
PART_WEIGHTS = {"statistics": 0.5, "recognition": 0.25, "transferability": 0.25}
# Similarities measured with MobileNet on samples of SAMPLE_SIZE images (python -m tl_core advise):
# SIMILAR_MIN sits between the clip art and Fashion-MNIST.
SIMILARITY_ANCHORS = {
    "crops of two photographs": 0.89,
    "clip art of everyday objects (clipart8)": 0.77,
    "Fashion-MNIST": 0.60,
    "scikit-learn's 8 x 8 digits": 0.54,
    "uniform noise": 0.12,
}
DOMAINS = ("similar", "different")
# LogME ranks the candidate layers; the best of them and the last layer are then settled by the
# cross-validated accuracy of a softmax head on their features (a LogME margin of 0.006 once chose
# a layer 1.3 points worse): this many folds, on the measured sample.
LAYER_CV_FOLDS = 5

CELLS = {
    ("small", "similar"): ("feature_extractor", "Retrain only the new layers on frozen features"),
    ("small", "different"): ("feature_extractor", "Retrain only the new layers (features from the layer that transfers best)"),
    ("large", "similar"): ("finetune", "Fine-tune all layers after a warm-up"),
    ("large", "different"): ("scratch", "Train from scratch"),
}


def anchors_sentence() -> str:
    """The measured similarity anchors in words, from :data:`SIMILARITY_ANCHORS`."""
    return ", ".join(f"{name} {value:.2f}" for name, value in SIMILARITY_ANCHORS.items())


def bench_sentence() -> str:
    """What the bench measured on a different domain at 2,000 images per class, from :data:`BENCH`."""
    large = BENCH["large"]
    return (f"our bench, {large['per_class']:,} per class of Fashion-MNIST: frozen features from an earlier "
            f"block {large['earlier_features']:.3f}, from scratch {large['scratch']:.3f}, fine-tuning "
            f"{large['finetune_all']:.3f}-{large['finetune_top']:.3f} (it keeps ImageNet's BatchNorm statistics)")


@dataclass(frozen=True)
class Recommendation:
    """The advisor's verdict and why."""

    size: str
    domain: str
    strategy: str
    cell: str
    settings: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- size


def measure_size(per_class: dict[str, int]) -> dict[str, Any]:
    """Smallest and median class, and ``small`` / ``large``.

    Raises:
        ConfigError: no usable image.
    """
    counts = [n for n in per_class.values() if n > 0]
    if not counts:
        raise ConfigError("The dataset has no usable image; load a dataset first.")
    smallest = min(counts)
    return {
        "n_images": int(sum(counts)),
        "n_classes": len(counts),
        "min_per_class": int(smallest),
        "median_per_class": float(median(counts)),
        "size": "large" if smallest >= LARGE_MIN_PER_CLASS else "small",
    }


# --------------------------------------------------------------------------- domain


def stratified_sample(y: np.ndarray, n: int = SAMPLE_SIZE, seed: int = 0) -> np.ndarray:
    """Indices of about ``n`` items, classes in proportion, at least 2 per class where possible
    (so more than ``n`` when there are over ``n / 2`` classes)."""
    y = np.asarray(y)
    if len(y) <= n:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        take = min(len(members), max(2, round(n * len(members) / len(y))))
        chosen.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(chosen))


def _bn_divergence(mean: np.ndarray, sq: np.ndarray, moving_mean: np.ndarray, moving_var: np.ndarray) -> float:
    """Median over channels of the symmetric KL divergence between N(mean, var) and the stored stats.

    Channels that were inactive on ImageNet (moving variance below 1e-3: a dead ReLU feeding the
    layer) say nothing about a shift and are left out.
    """
    live = moving_var >= 1e-3
    if not live.any():
        return 0.0
    var = np.maximum(sq - mean**2, 1e-6)[live]
    mean, moving_mean, moving_var = mean[live], moving_mean[live], moving_var[live]
    kl = 0.5 * (var / moving_var + moving_var / var - 2) + 0.5 * (mean - moving_mean) ** 2 * (1 / moving_var + 1 / var)
    return float(np.median(kl))


def _trunk_output(model) -> str:
    """Name of the last convolutional layer before the classifier (pooling or flatten)."""
    import keras

    for index, layer in enumerate(model.layers):
        if isinstance(layer, (keras.layers.GlobalAveragePooling2D, keras.layers.Flatten)):
            return model.layers[index - 1].name
    return model.layers[-1].name


def _load_model(spec, weights: str):
    """The backbone with its ImageNet classifier when those weights are at hand, else without.

    Returns ``(model, has_top, note)``.
    """
    from tl_core import backbones

    resolved = backbones.resolve_weights(spec, weights)
    note = None
    if not spec.top_weights_files:
        note = f"{spec.title} was trained without labels, so it has no ImageNet classifier to ask"
    elif weights == "imagenet":
        top_file = backbones.local_weights_file(spec.top_weights_files)
        # VGG16's classifier is a 528 MB download: only used when already on disk.
        if top_file is not None or (resolved.keras_arg == "imagenet" and spec.name != "vgg16"):
            try:
                model = spec.build(include_top=True, weights=str(top_file) if top_file else "imagenet")
                return model, True, None
            except Exception as err:  # noqa: BLE001 - offline or a bad file: measure without the head
                note = f"the ImageNet classifier could not be loaded ({err.__class__.__name__})"
        else:
            note = (f"the ImageNet classifier weights ('{spec.top_weights_files[0]}') are not in "
                    f"{backbones.WEIGHTS_DIR_ENV}")
    else:
        note = "the weights are not ImageNet's, so the ImageNet classifier does not apply"
    return backbones.build_base(spec, resolved, spec.input_size), False, note


def _pooled(model, names: list[str], x: np.ndarray, batch_size: int, pre, extra=()) -> list[np.ndarray]:
    """One forward pass of ``model`` over ``x``: the global average of each named layer (of its map: a
    vision transformer's tokens as their grid), then ``extra``."""
    import keras

    from tl_core.backbones import feature_map

    outputs = [keras.ops.mean(feature_map(model.get_layer(name).output, f"{name}_map"), axis=(1, 2))
               for name in names] + list(extra)
    probe = keras.Model(model.input, outputs)
    pixels = keras.Input(x.shape[1:], name="pixels")
    measure = keras.Model(pixels, probe(pre(pixels) if pre is not None else pixels))
    chunks = [measure.predict_on_batch(np.asarray(x[i : i + batch_size], np.float32)) for i in range(0, len(x), batch_size)]
    return [np.concatenate([np.asarray(c[k]) for c in chunks]) for k in range(len(outputs))]


def measure_domain(
    x: np.ndarray,
    y: np.ndarray,
    backbone: str = "mobilenet",
    weights: str = "imagenet",
    batch_size: int = 32,
    layer_pixels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Domain similarity of a sample of images to the backbone's pretraining data.

    Args:
        x: ``(n, size, size, 3)`` uint8 pixels at the backbone's input size (a few hundred).
        y: class index of each image (at least 2 classes).
        backbone: a registry name.
        weights: ``imagenet`` or a weights file (the statistics and LogME parts still apply).
        layer_pixels: the same images as training will see them, when that is not as ``x``
            (another size, or padded where ``x`` is stretched): the layers are compared there (a
            block's features depend on the scale and the framing).

    Returns:
        ``similarity`` in [0, 1], ``parts`` (each in [0, 1], or ``None`` when not measurable),
        the raw ``measurements``, ``layers`` (LogME of features from ``cut`` blocks below the top),
        ``notes`` and ``seconds``.

    Raises:
        WeightsUnavailableError: offline without the backbone's weights.
    """
    import keras

    from tl_core import backbones
    from tl_core.transferability import logme, logme_explained

    started = time.perf_counter()
    spec = backbones.get_spec(backbone)
    if weights in ("none", "None", ""):
        raise ConfigError("Domain similarity is measured with pretrained weights; 'none' has none.")
    model, has_top, note = _load_model(spec, weights)
    trunk = _trunk_output(model)
    cuts = candidate_cuts(spec.n_blocks)
    names = [trunk] + [backbones.block_output_layer(spec, model, c) for c in cuts[1:]]
    stop = [layer.name for layer in model.layers].index(trunk)
    bns = [layer for layer in model.layers[: stop + 1] if isinstance(layer, keras.layers.BatchNormalization)]
    pool = lambda t: keras.ops.mean(t, axis=(1, 2))  # noqa: E731
    extra = [t for layer in bns for t in (pool(layer.input), pool(keras.ops.square(layer.input)))]
    if has_top:
        extra.append(model.output)
    pre = backbones.preprocessing_layer(spec)
    results = _pooled(model, names, x, batch_size, pre, extra)
    layer_features = results[: len(cuts)]
    if layer_pixels is not None and layer_pixels.shape[1] != x.shape[1]:
        base = backbones.build_base(spec, backbones.resolve_weights(spec, weights), layer_pixels.shape[1])
        layer_names = [backbones.block_output_layer(spec, base, c) for c in cuts]
        layer_features = _pooled(base, layer_names, layer_pixels, batch_size, backbones.preprocessing_layer(spec))
    elif layer_pixels is not None:  # the same size, as training decodes them (padded): the same network
        layer_features = _pooled(model, names, layer_pixels, batch_size, pre)

    measurements: dict[str, Any] = {"sample": int(len(x))}
    parts: dict[str, float | None] = {"statistics": None, "recognition": None, "transferability": None}
    notes = [note] if note else []

    measurements["logme"], parts["transferability"] = logme_explained(results[0], y)
    layers = {cut: logme(features, y) for cut, features in zip(cuts, layer_features) if features is not results[0]}
    layers.setdefault(0, measurements["logme"])  # the last layer at this size: already computed
    layers = dict(sorted(layers.items()))
    measurements["explained_variance"] = parts["transferability"]
    layer_accuracy = cross_validated_layers(dict(zip(cuts, layer_features)), y, [0, max(layers, key=layers.get)])

    if bns:
        stats = results[len(cuts) : len(cuts) + 2 * len(bns)]
        divergences = [
            _bn_divergence(stats[2 * i].mean(0), stats[2 * i + 1].mean(0), np.asarray(layer.moving_mean), np.asarray(layer.moving_variance))
            for i, layer in enumerate(bns)
        ]
        measurements["bn_divergence"] = float(np.mean(divergences))
        parts["statistics"] = math.exp(-measurements["bn_divergence"])
    else:
        notes.append(f"{spec.title} has no BatchNormalization layers, so there are no stored ImageNet statistics to compare with")

    if has_top:
        probs = results[-1].astype(np.float64)
        top1 = float(probs.max(axis=1).mean())
        entropy = float((-(probs * np.log(np.clip(probs, 1e-12, 1))).sum(axis=1) / math.log(probs.shape[1])).mean())
        measurements.update({"imagenet_top1": top1, "imagenet_entropy": entropy})
        parts["recognition"] = (top1 + 1 - entropy) / 2

    present = {k: v for k, v in parts.items() if v is not None}
    total = sum(PART_WEIGHTS[k] for k in present)
    similarity = sum(PART_WEIGHTS[k] * v for k, v in present.items()) / total
    return {
        "backbone": spec.name,
        "similarity": float(similarity),
        "domain": "similar" if similarity >= SIMILAR_MIN else "different",
        "parts": parts,
        "measurements": measurements,
        "layers": layers,
        "layer_accuracy": layer_accuracy,
        "notes": notes,
        "seconds": time.perf_counter() - started,
    }


def cross_validated_layers(features: dict[int, np.ndarray], y: np.ndarray, cuts: list[int]) -> dict[int, float]:
    """Stratified k-fold accuracy of a softmax head (its C chosen inside, as training does) on each
    candidate layer's features: ``{cut: mean accuracy}``; empty when a class has under 2 images."""
    from tl_core.heads import LinearHead

    counts = np.unique(y, return_counts=True)[1]
    if len(counts) < 2 or counts.min() < 2:
        return {}
    accuracy = {}
    for cut in dict.fromkeys(cuts):
        head = LinearHead("softmax", selection="cv").fit(features[cut], y)
        accuracy[cut] = max(head.validation_scores_.values())
    return accuracy


def rank_backbones(x: np.ndarray, y: np.ndarray, candidates: list[tuple[str, str]], batch_size: int = 32, *,
                   precision: str = "auto", cache_dir=None) -> list[dict[str, Any]]:
    """LogME of each ``(backbone, weights)`` candidate's pooled features on the same sample, best first.

    ``x`` is at 224 px (every registry backbone's input size). ``precision``: of the forward passes
    (:func:`tl_core.precision.choose_precision`, its probe remembered in ``cache_dir``).
    """
    from tl_core import backbones
    from tl_core.features import extract_features
    from tl_core.precision import choose_precision
    from tl_core.transferability import logme

    ranked = []
    for name, weights in candidates:
        started = time.perf_counter()
        spec = backbones.get_spec(name)
        base = backbones.build_base(spec, backbones.resolve_weights(spec, weights), x.shape[1])
        _, model = choose_precision(precision, backbones.build_feature_model(spec, base, x.shape[1]), backbone=name,
                                    image_size=x.shape[1], cache_dir=cache_dir)
        features = extract_features(model, x, batch_size)
        ranked.append({"backbone": name, "title": spec.title, "weights": weights, "logme": logme(features, y),
                       "seconds": time.perf_counter() - started})
    return sorted(ranked, key=lambda r: r["logme"], reverse=True)


def available_backbones() -> list[str]:
    """Backbones whose ImageNet weights (without the top) are on disk: ranked without a download."""
    from tl_core.backbones import BACKBONES, local_weights_file

    return [name for name, spec in BACKBONES.items() if local_weights_file(spec.weights_files) is not None]


# --------------------------------------------------------------------------- the verdict


FINETUNE_SETTINGS = {"unfreeze_blocks": -1, "epochs": 20, "fine_tune_epochs": 8, "learning_rate": 1e-3,
                     "fine_tune_learning_rate": 1e-5}
SCRATCH_SETTINGS = {"weights": "none", "epochs": 15, "patience": 3}


@dataclass(frozen=True)
class _Decision:
    """What the matrix and the measurements decide, before any words: :func:`_reasons` explains it."""

    size: str
    domain: str
    strategy: str
    cell: str
    settings: dict[str, Any]
    short_of_scratch: bool  # the cell says from scratch, the data is below SCRATCH_MIN_PER_CLASS
    layer_check: str | None = None  # how the feature layer was chosen: "cv", "logme", "last" or None


def _decide(size_info: dict[str, Any], domain_name: str, measured: dict[str, Any] | None) -> _Decision:
    size = size_info["size"]
    strategy, cell = CELLS[(size, domain_name)]
    short_of_scratch = strategy == "scratch" and size_info["min_per_class"] < SCRATCH_MIN_PER_CLASS
    if short_of_scratch:
        strategy = "feature_extractor"
    layer_check = None
    if strategy == "feature_extractor":
        settings: dict[str, Any] = {"strategy": strategy, "head": "softmax", "feature_cut": 0}
        if domain_name == "different" and measured and measured.get("layers"):
            layers = {int(k): v for k, v in measured["layers"].items()}
            best = max(layers, key=layers.get)
            accuracy = {int(k): v for k, v in (measured.get("layer_accuracy") or {}).items()}
            if best != 0 and accuracy.get(best) is not None and 0 in accuracy:
                layer_check = "cv"  # the cross-validated accuracy of the two settles it
                if accuracy[best] > accuracy[0]:
                    settings["feature_cut"] = best
            elif best != 0 and layers[best] > layers[0]:
                layer_check = "logme"
                settings["feature_cut"] = best
            else:
                layer_check = "last"
    elif strategy == "finetune":
        settings = {"strategy": strategy, **FINETUNE_SETTINGS}
    else:
        settings = {"strategy": strategy, **SCRATCH_SETTINGS}
    return _Decision(size, domain_name, strategy, cell, settings, short_of_scratch, layer_check)


def _measured_reasons(measured: dict[str, Any], domain_name: str) -> list[str]:
    parts, m = measured["parts"], measured["measurements"]
    shown = ", ".join(f"{k} {v:.2f}" for k, v in parts.items() if v is not None)
    reasons = [f"Measured similarity to ImageNet: {measured['similarity']:.2f} ({shown}); "
               + ("at least" if domain_name == "similar" else "below") + f" {SIMILAR_MIN}, so the domain counts as {domain_name}."]
    if "imagenet_top1" in m:
        reasons.append(
            f"The ImageNet classifier's mean top-1 probability on your images is {m['imagenet_top1']:.2f} "
            f"(prediction entropy {m['imagenet_entropy']:.2f} of its maximum)"
            + ("; it recognises them well." if parts["recognition"] >= 0.6
               else "; it recognises some of them." if parts["recognition"] >= 0.5
               else "; it mostly does not know what they are.")
        )
    if "bn_divergence" in m:
        reasons.append(
            f"Inside the network, your images' activation statistics are {m['bn_divergence']:.2f} nats "
            "(mean symmetric KL) from ImageNet's" + (": close." if parts["statistics"] >= SIMILAR_MIN else ": far apart.")
        )
    reasons.append(
        f"A linear model on the pretrained features explains {100 * parts['transferability']:.0f}% of the variance "
        f"of your labels (LogME {m['logme']:.3f})."
    )
    reasons += [f"Not measured: {note}." for note in measured["notes"]]
    return reasons


def _layer_reason(decision: _Decision, measured: dict[str, Any]) -> str:
    layers = {int(k): v for k, v in measured["layers"].items()}
    best = max(layers, key=layers.get)
    if decision.layer_check == "cv":
        accuracy = {int(k): v for k, v in measured["layer_accuracy"].items()}
        return (f"LogME ranks features from {best} blocks below the top first ({layers[best]:.3f} vs the last "
                f"layer's {layers[0]:.3f}); a softmax head cross-validated on the sample settles it: "
                f"{accuracy[best]:.1%} from {best} blocks down vs {accuracy[0]:.1%} from the last layer, so use "
                + (f"the features from {best} blocks down." if decision.settings["feature_cut"] else "the last layer."))
    if decision.layer_check == "logme":
        return (f"Features from {best} blocks below the top fit your labels better than the last layer's "
                f"(LogME {layers[best]:.3f} vs {layers[0]:.3f}): earlier layers are more generic, so use them.")
    return (f"Earlier layers were checked (LogME {', '.join(f'{k} blocks down {v:.3f}' for k, v in sorted(layers.items()) if k)}) "
            f"and the last layer fits your labels best ({layers[0]:.3f}), so use it.")


def _strategy_reason(decision: _Decision) -> str:
    s = decision.settings
    if decision.strategy == "feature_extractor":
        return ("So keep the pretrained ConvNet frozen and train only a new softmax classifier on its features "
                "(its strength chosen on the validation split): fast, and "
                + ("the best of the measured options at this size." if decision.short_of_scratch
                   else "the least prone to overfitting."))
    if decision.strategy == "finetune":
        return (f"So warm up new fully connected layers on the frozen ConvNet (up to {s['epochs']} epochs, early "
                f"stopping, learning rate {s['learning_rate']:g}), then fine-tune all layers for up to "
                f"{s['fine_tune_epochs']} epochs at {s['fine_tune_learning_rate']:g} so the pretrained features move "
                "slowly; BatchNormalization stays in inference mode.")
    return ("ImageNet features transfer poorly to this domain and there is enough data to learn features of its "
            f"own: train the whole network from random weights (up to {s['epochs']} epochs, early stopping after "
            f"{s['patience']} without improvement).")


def _reasons(decision: _Decision, size_info: dict[str, Any], measured: dict[str, Any] | None) -> list[str]:
    """The decision in words, each reason citing the measurement or the threshold behind it."""
    smallest, middle = size_info["min_per_class"], size_info["median_per_class"]
    reasons = [
        f"The smallest class has {smallest} images (median {middle:g}): "
        + (f"at least {LARGE_MIN_PER_CLASS} per class, enough to retrain deep layers." if decision.size == "large"
           else f"fewer than {LARGE_MIN_PER_CLASS} per class, so retraining deep layers would overfit.")
    ]
    if measured:
        reasons += _measured_reasons(measured, decision.domain)
    else:
        reasons.append("You said your images are " + (
            "similar to everyday photos (ImageNet)." if decision.domain == "similar"
            else "unlike everyday photos (ImageNet)."))
    if decision.short_of_scratch:
        reasons.append(
            f"Training from scratch needs more: below {SCRATCH_MIN_PER_CLASS} images per class a network learned "
            f"from random weights trails pretrained features (He et al. 2019; {bench_sentence()})."
        )
    if decision.layer_check is not None:
        reasons.append(_layer_reason(decision, measured))
    reasons.append(_strategy_reason(decision))
    return reasons


def recommend(per_class: dict[str, int], domain: str | dict[str, Any] = "similar") -> Recommendation:
    """Place a dataset in the decision matrix and give the settings to train with.

    Args:
        per_class: usable images per class (from the dataset report).
        domain: a :func:`measure_domain` result, or (when it could not be measured) the user's
            answer: ``similar`` (everyday photos, like ImageNet) or ``different`` (scans,
            satellite tiles, drawings of symbols...).

    Raises:
        ConfigError: an unknown domain or an empty dataset.
    """
    measured = domain if isinstance(domain, dict) else None
    if measured is None and domain not in DOMAINS:
        raise ConfigError(f"Unknown domain '{domain}'. Choose 'similar' or 'different'.")
    size_info = measure_size(per_class)
    decision = _decide(size_info, measured["domain"] if measured else domain, measured)
    measurements = dict(size_info)
    if measured:
        measurements.update({"similarity": measured["similarity"], "parts": measured["parts"], **measured["measurements"]})
    return Recommendation(size=decision.size, domain=decision.domain, strategy=decision.strategy, cell=decision.cell,
                          settings=decision.settings, reasons=_reasons(decision, size_info, measured),
                          measurements=measurements)


def advise(
    source: Any,
    backbone: str = "mobilenet",
    weights: str = "imagenet",
    sample: int = SAMPLE_SIZE,
    rank: bool = True,
    data_config=None,
    progress=None,
    image_size: int | None = None,
    *,
    precision: str = "auto",
    cache_dir=None,
) -> dict[str, Any]:
    """Measure a dataset and recommend a strategy (what ``python -m tl_core advise`` prints).

    Decodes every image once to count the usable ones (no resizing), then decodes a stratified
    sample at the backbone's input size for the measurements (and at ``image_size`` too, when
    training will use another size, to compare layers there). ``precision`` applies to ranking the
    other backbones (:mod:`tl_core.precision`); the similarity itself is measured in float32, as its
    activation statistics (means of squares over hundreds of channels) would carry bfloat16's rounding.
    """
    from tl_core import data
    from tl_core.backbones import get_spec
    from tl_core.config import DataConfig
    from tl_core.progress import NullProgress

    started = time.perf_counter()
    data_config = data_config or DataConfig()
    progress = progress or NullProgress()
    spec = get_spec(backbone)
    image_set = data.load_images(source, data_config)
    inspected = data.decode_dataset(image_set, None, data_config, progress)
    report = data.build_report(image_set, inspected)
    size_info = measure_size(report["per_class"])
    chosen = stratified_sample(inspected.y, sample)
    by_name = {item.name: item for item in image_set.items}
    subset = data.ImageSet([by_name[inspected.names[i]] for i in chosen], source=image_set.source)
    # The similarity's threshold and anchors were measured on pictures stretched to the square: white
    # margins would read as "less like ImageNet", though they are not the user's content. The layers
    # are compared on the pictures as training will see them (size and resize).
    pixels = data.decode_dataset(subset, spec.input_size, dataclasses.replace(data_config, resize="stretch"))
    labels = np.asarray([inspected.class_names.index(subset.class_names[k]) for k in pixels.y])
    progress.on_stage_start("measure", 1)
    layer_pixels = None
    if (image_size and image_size != spec.input_size) or data_config.resize != "stretch":
        layer_pixels = data.decode_dataset(subset, image_size or spec.input_size, data_config).x
    measured = measure_domain(pixels.x, labels, backbone, weights, layer_pixels=layer_pixels)
    progress.on_stage_end("measure", None)
    rec = recommend(report["per_class"], measured)

    ranking = [{"backbone": spec.name, "title": spec.title, "weights": weights, "logme": measured["measurements"]["logme"],
                "seconds": measured["seconds"]}]
    others = [name for name in available_backbones() if name != spec.name] if rank and weights == "imagenet" else []
    if others:
        ranking = sorted(ranking + rank_backbones(pixels.x, labels, [(name, "imagenet") for name in others],
                                                  precision=precision, cache_dir=cache_dir),
                         key=lambda r: r["logme"], reverse=True)
    return {
        **size_info,
        "skipped": len(inspected.skipped),
        "similarity": measured["similarity"],
        "similarity_parts": measured["parts"],
        "domain": rec.domain,
        "cell": rec.cell,
        "strategy": rec.strategy,
        "settings": {"backbone": spec.name, **({"image_size": image_size} if image_size else {}), **rec.settings},
        "reasons": rec.reasons,
        "measurements": measured["measurements"],
        "layers": {str(k): v for k, v in measured["layers"].items()},
        "layer_accuracy": {str(k): v for k, v in measured.get("layer_accuracy", {}).items()},
        "ranking": ranking,
        "notes": measured["notes"],
        "seconds": time.perf_counter() - started,
    }
