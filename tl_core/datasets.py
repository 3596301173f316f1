"""Datasets the app keeps: saved uploads and the sample sets.

An upload (zip or files per class) is written to ``<data dir>/datasets/<id>/<class>/<file>`` so
the background worker, a restarted app and a share page can all read it later. A local folder is
used where it is, not copied.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from tl_core.data import ImageSet
from tl_core.errors import DataError
from tl_core.store import RunStore, write_json_atomic

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
# Path separators, characters Windows refuses in names, and control characters.
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]+')


def _safe_part(text: str, fallback: str) -> str:
    cleaned = _UNSAFE.sub("_", text).strip(" .")[:120]
    return cleaned or fallback


def datasets_dir(store: RunStore) -> Path:
    return store.data_dir / "datasets"


def save_image_set(store: RunStore, image_set: ImageSet, name: str) -> Path:
    """Write an in-memory image set to a new dataset folder; returns the folder.

    Class names keep their letters (accents and emoji included); path separators and other
    characters a file system may refuse become ``_``. Clashing file names get a number.
    """
    folder = datasets_dir(store) / secrets.token_urlsafe(12)
    folder.mkdir(parents=True)
    used: set[str] = set()
    for index, item in enumerate(image_set.items):
        label = _safe_part(item.label, "class")
        inside = item.name[len(item.label) + 1 :] if item.name.startswith(item.label + "/") else item.name
        filename = _safe_part(inside.replace("/", "_"), f"image_{index}")
        target = f"{label}/{filename}"
        if target.lower() in used:
            stem, dot, suffix = filename.rpartition(".")
            target = f"{label}/{stem}_{index}{dot}{suffix}"
        used.add(target.lower())
        path = folder / target
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(item.read_bytes())
    meta = {
        "name": name,
        "created_at": time.time(),
        "n_files": len(image_set.items),
        "ignored": image_set.ignored,
        "source": image_set.source,
    }
    write_json_atomic(folder / "dataset.json", meta)
    return folder


def list_datasets(store: RunStore) -> list[dict[str, Any]]:
    """Saved datasets, newest first: ``{path, name, created_at, n_files}``."""
    found = []
    root = datasets_dir(store)
    for meta_path in root.glob("*/dataset.json") if root.exists() else []:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        found.append({**meta, "path": str(meta_path.parent)})
    return sorted(found, key=lambda d: d.get("created_at", 0), reverse=True)


def digits_sample(store: RunStore, n_classes: int = 10) -> Path:
    """scikit-learn's handwritten digits (1,797 8 x 8 scans, 10 classes) as PNG class folders.

    Works offline: the images ship inside scikit-learn. Built once, then reused.
    """
    from sklearn.datasets import load_digits

    folder = datasets_dir(store) / f"sample-digits-{n_classes}"
    if (folder / "dataset.json").exists():
        return folder
    digits = load_digits()
    tmp = folder.with_name(folder.name + ".tmp")
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        if label >= n_classes:
            continue
        pixels = (255 - image * (255 / 16)).astype(np.uint8)  # dark ink on white paper
        target = tmp / f"digit_{label}" / f"{index:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").resize((32, 32), Image.Resampling.NEAREST).save(target)
    write_json_atomic(
        tmp / "dataset.json",
        {"name": "Handwritten digits (scikit-learn sample)", "created_at": time.time(),
         "n_files": int(sum(1 for _ in tmp.rglob("*.png"))), "ignored": [], "source": "scikit-learn"},
    )
    tmp.rename(folder)
    return folder


def flowers_sample(store: RunStore) -> Path:
    """TF Flowers (3,670 photos, 5 classes), the original article's problem: a real download.

    Raises:
        DataError: offline, with what to do instead.
    """
    import keras

    folder = datasets_dir(store) / "sample-tf-flowers"
    if (folder / "flower_photos").is_dir():
        return folder / "flower_photos"
    try:
        archive = keras.utils.get_file(
            "flower_photos.tgz", origin=FLOWERS_URL, extract=True, cache_dir=str(folder), cache_subdir="."
        )
    except Exception as err:  # noqa: BLE001 - keras raises a bare Exception on URL errors
        raise DataError(
            f"Could not download TF Flowers ({err.__class__.__name__}: {str(err)[:160]}). Offline? "
            "Use the handwritten-digits sample, upload a zip, or point to a local folder."
        ) from err
    candidates = [p for p in Path(archive).parent.rglob("flower_photos") if p.is_dir()]
    if not candidates:
        raise DataError("The TF Flowers download did not contain a 'flower_photos' folder.")
    return candidates[0]


def read_image_bytes(source: str, name: str) -> bytes | None:
    """The bytes of one dataset image by its display name (``class/file``), or ``None``.

    Only names that stay inside the dataset folder are read. A folder wrapped in one extra folder
    (as ``load_folder`` allows) is looked through.
    """
    root = Path(source).resolve()
    relative = PurePosixPath(name)
    if not root.is_dir() or relative.is_absolute() or ".." in relative.parts:
        return None
    subfolders = [p for p in root.iterdir() if p.is_dir()]
    roots = [root] + (subfolders if len(subfolders) == 1 else [])
    for base in roots:
        path = (base / relative).resolve()
        if path.is_file() and path.is_relative_to(root):
            return path.read_bytes()
    return None
