"""The dataset health report: counts, skipped and ignored files, duplicates, sizes and warnings."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from tl_core.config import DataConfig
from tl_core.data.decode import DecodedDataset, decode_dataset
from tl_core.data.ingest import ImageSet, _quoted, load_images
from tl_core.data.split import MIN_IMAGES_PER_CLASS
from tl_core.progress import ProgressListener

IMBALANCE_RATIO = 3.0


def find_duplicates(decoded: DecodedDataset) -> list[dict[str, Any]]:
    """Groups of byte-identical files; ``cross_class`` marks groups that span classes."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, digest in enumerate(decoded.hashes):
        groups[digest].append(index)
    duplicates = []
    for digest, members in groups.items():
        if len(members) > 1:
            labels = sorted({decoded.class_names[decoded.y[i]] for i in members})
            duplicates.append(
                {
                    "sha256": digest[:16],
                    "files": [decoded.names[i] for i in members],
                    "classes": labels,
                    "cross_class": len(labels) > 1,
                }
            )
    return sorted(duplicates, key=lambda d: (not d["cross_class"], d["files"][0]))


def build_report(image_set: ImageSet, decoded: DecodedDataset) -> dict[str, Any]:
    """The dataset health report: counts, skipped and ignored files, duplicates, sizes, warnings.

    Warnings name the classes concerned: fewer than two classes, class folders without images,
    classes too small to split, strong imbalance, and identical files under different labels.
    """
    counts = Counter(decoded.class_names[i] for i in decoded.y.tolist())
    per_class = {name: counts.get(name, 0) for name in decoded.class_names}
    widths = [info["width"] for info in decoded.infos]
    heights = [info["height"] for info in decoded.infos]
    duplicates = find_duplicates(decoded)
    warnings_ = _class_warnings(image_set, decoded, per_class)
    if image_set.renamed:
        shown = "; ".join(f"'{label}' is now '{stored}'" for label, stored in image_set.renamed.items())
        warnings_.append(
            f"{len(image_set.renamed)} class name(s) held characters a folder name cannot (\\ / : * ? \" < > |, "
            f"control characters), each replaced by _ in the saved copy: {shown}. Rename the folders before "
            "uploading to choose other names."
        )
    cross = [d for d in duplicates if d["cross_class"]]
    if cross:
        warnings_.append(
            f"{len(cross)} identical image(s) carry different labels (e.g. {', '.join(cross[0]['files'])}): "
            "the same picture would be learned as two classes and could leak from training into the test "
            "set (the split keeps each copy in one part). Fix their labels or remove them."
        )

    def summary(values: list[int]) -> dict[str, float]:
        if not values:
            return {}
        return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}

    return {
        "source": image_set.source,
        "n_images": int(len(decoded.y)),
        "n_classes": len(decoded.class_names),
        "class_names": decoded.class_names,
        "per_class": per_class,
        "skipped": decoded.skipped,
        "ignored": image_set.ignored,
        "empty_classes": image_set.empty_classes,
        "duplicates": duplicates,
        "width": summary(widths),
        "height": summary(heights),
        "modes": dict(Counter(info["mode"] for info in decoded.infos)),
        "formats": dict(Counter(info["format"] for info in decoded.infos)),
        "warnings": warnings_,
        "fingerprint": decoded.fingerprint,
    }


def _class_warnings(image_set: ImageSet, decoded: DecodedDataset, per_class: dict[str, int]) -> list[str]:
    """What the class counts warn about, before a split would refuse the dataset."""
    warnings_ = []
    usable = [name for name, n in per_class.items() if n > 0]
    if len(usable) < 2:
        found = f"Only 1 class has usable images ({_quoted(usable)})" if usable else "No class has usable images"
        warnings_.append(f"{found}; a classifier needs at least 2. Add a folder of images for another class.")
    if image_set.empty_classes:
        warnings_.append(
            f"Class folder(s) without images, left out: {_quoted(image_set.empty_classes)}. "
            "Add images to them or remove them."
        )
    empty = [name for name, n in per_class.items() if n == 0]
    if empty:
        warnings_.append(f"No usable image in class(es): {', '.join(empty)}.")
    distinct: dict[str, set[str]] = defaultdict(set)
    for label, digest in zip(decoded.y.tolist(), decoded.hashes):
        distinct[decoded.class_names[label]].add(digest)
    small = {name: len(distinct[name]) for name in usable if len(distinct[name]) < MIN_IMAGES_PER_CLASS}
    if small:
        warnings_.append(
            "Too few distinct images to split: "
            + ", ".join(f"'{name}' has {n}" for name, n in small.items())
            + f"; a train/validation/test split needs at least {MIN_IMAGES_PER_CLASS} per class. "
            "Add images or merge the class."
        )
    nonzero = [n for n in per_class.values() if n > 0]
    if len(nonzero) >= 2 and max(nonzero) / min(nonzero) >= IMBALANCE_RATIO:
        small_class = min(usable, key=per_class.get)
        large = max(per_class, key=per_class.get)
        warnings_.append(
            f"Strong class imbalance: '{large}' has {per_class[large]} images, '{small_class}' has "
            f"{per_class[small_class]} ({max(nonzero) / min(nonzero):.1f}x). Accuracy will flatter the "
            "large classes; look at macro F1 and per-class recall, or add images to the small ones."
        )
    return warnings_


def inspect_dataset(
    source, config: DataConfig = DataConfig(), progress: ProgressListener | None = None
) -> dict[str, Any]:
    """Load and fully decode a dataset (without resizing) and return its health report."""
    image_set = load_images(source, config)
    return build_report(image_set, decode_dataset(image_set, None, config, progress))
