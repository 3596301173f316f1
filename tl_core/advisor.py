"""The decision matrix: data size x domain similarity -> the strategy to start with.

| data size | similar domain | different domain |
| --- | --- | --- |
| small | train only new layers on frozen features | the same, (earlier-layer features: issue 4) |
| large | fine-tune all layers after a warm-up | train from scratch |

Size is measured (images in the smallest class); domain similarity is given by the user until
the advisor measures it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median
from typing import Any

from tl_core.errors import ConfigError

# A class needs on the order of a thousand examples before the upper layers of an ImageNet
# ConvNet can be retrained without overfitting (Yosinski et al. 2014 fine-tuned on ~1,000+ per
# class; Keras' and CS231n's guides call a few hundred per class "small").
LARGE_MIN_PER_CLASS = 1000
DOMAINS = ("similar", "different")

CELLS = {
    ("small", "similar"): ("feature_extractor", "Retrain only the new layers on frozen features"),
    ("small", "different"): ("feature_extractor", "Retrain only the new layers (earlier features help)"),
    ("large", "similar"): ("finetune", "Fine-tune all layers after a warm-up"),
    ("large", "different"): ("scratch", "Train from scratch"),
}


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


def recommend(per_class: dict[str, int], domain: str = "similar") -> Recommendation:
    """Place a dataset in the decision matrix.

    Args:
        per_class: usable images per class (from the dataset report).
        domain: ``similar`` (photos of everyday things, like ImageNet) or ``different``
            (medical scans, satellite tiles, drawings of symbols...).

    Raises:
        ConfigError: an unknown domain or an empty dataset.
    """
    if domain not in DOMAINS:
        raise ConfigError(f"Unknown domain '{domain}'. Choose 'similar' or 'different'.")
    counts = [n for n in per_class.values() if n > 0]
    if not counts:
        raise ConfigError("The dataset has no usable image; load a dataset first.")
    smallest, middle = min(counts), median(counts)
    size = "large" if smallest >= LARGE_MIN_PER_CLASS else "small"
    strategy, cell = CELLS[(size, domain)]
    reasons = [
        f"The smallest class has {smallest} images (median {middle:g}); "
        + (
            f"that is at least {LARGE_MIN_PER_CLASS} per class, enough data to retrain deep layers."
            if size == "large"
            else f"below {LARGE_MIN_PER_CLASS} per class, retraining deep layers would overfit."
        ),
        "You said your images are "
        + ("similar to everyday photos (ImageNet)." if domain == "similar" else "unlike everyday photos (ImageNet)."),
    ]
    if strategy == "feature_extractor":
        settings = {"strategy": strategy, "head": "softmax", "unfreeze_blocks": 0}
        reasons.append(
            "So keep the pretrained ConvNet frozen and train only a new classifier on its features: "
            "fast, and the least prone to overfitting."
        )
    elif strategy == "finetune":
        settings = {"strategy": strategy, "epochs": 20, "fine_tune_epochs": 10, "unfreeze_blocks": -1,
                    "fine_tune_learning_rate": 1e-5}
        reasons.append(
            "So warm up new layers on the frozen ConvNet, then fine-tune all layers with a small "
            "learning rate (1e-5) so the pretrained features move slowly."
        )
    else:
        settings = {"strategy": strategy, "weights": "none", "epochs": 30}
        reasons.append(
            "ImageNet features transfer poorly to a different domain, and there is enough data to "
            "learn features of its own: train the whole network from random weights."
        )
    return Recommendation(
        size=size,
        domain=domain,
        strategy=strategy,
        cell=cell,
        settings=settings,
        reasons=reasons,
        measurements={"min_per_class": smallest, "median_per_class": middle, "n_classes": len(counts)},
    )
