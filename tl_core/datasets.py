"""Datasets the app keeps: saved uploads and the sample sets.

An upload (zip or files per class) is written to ``<data dir>/datasets/<id>/<class>/<file>`` so
the background worker, a restarted app and a share page can all read it later. A local folder is
used where it is, not copied. With an artifacts location (``TL_ARTIFACTS_URL``) a saved upload is
also copied there, and :func:`local_source` brings it back to a server whose disk was wiped.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from tl_core import quotas
from tl_core.data import DATASET_META, ImageSet, check_usable
from tl_core.errors import DataError
from tl_core.fsutil import new_folder, write_json_atomic
from tl_core.store import RunStore

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
# Path separators, characters Windows refuses in names, control characters and the invisible
# direction overrides that make "gpj.exe" read as "exe.jpg".
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]+')
# Linux allows 255 bytes per file name; room is left for a clash number.
MAX_NAME_BYTES = 200
_MAX_SUFFIX_BYTES = 16
_SAVED_NAME = re.compile(r"^[A-Za-z0-9_-]{16}$")  # secrets.token_urlsafe(12): a saved upload's folder
_DIGITS_NAME = re.compile(r"^sample-digits-(\d{1,2})$")


def _fit(stem: str, suffix: str, max_bytes: int) -> str:
    """``stem + suffix`` cut to ``max_bytes`` of UTF-8 without splitting a character or the suffix."""
    budget = max_bytes - len(suffix.encode())
    return stem.encode()[:budget].decode("utf-8", errors="ignore").rstrip(" .") + suffix


def _safe_part(text: str, fallback: str) -> str:
    """A folder name a file system accepts: unsafe characters become ``_``, at most ``MAX_NAME_BYTES``."""
    return _fit(_UNSAFE.sub("_", text).strip(" ."), "", MAX_NAME_BYTES) or fallback


def _safe_file_name(text: str, fallback: str) -> tuple[str, str]:
    """Stem and extension of a safe file name; the stem is cut, never the extension."""
    cleaned = _UNSAFE.sub("_", text).strip(" .")
    suffix = PurePosixPath(cleaned).suffix if cleaned else ""
    if len(suffix.encode()) > _MAX_SUFFIX_BYTES:
        suffix = ""  # a dot inside a long name, not an extension
    stem = _fit(cleaned[: len(cleaned) - len(suffix)], "", MAX_NAME_BYTES - len(suffix.encode()))
    return stem or fallback, suffix


def dataset_name(filename: str, fallback: str = "Uploaded zip") -> str:
    """The name an uploaded zip is saved under: its file name without ``.zip``, made safe as class
    names are (no path separators or control characters, at most ``MAX_NAME_BYTES``)."""
    stem = filename[: -len(".zip")] if filename.lower().endswith(".zip") else filename
    return _safe_part(stem, fallback)


def datasets_dir(store: RunStore) -> Path:
    return store.data_dir / "datasets"


class _Namer:
    """Distinct, safe folder names per class and file names per folder (case-insensitively)."""

    def __init__(self) -> None:
        self.folders: dict[str, str] = {}
        self.used: set[str] = set()

    def folder(self, label: str) -> str:
        if label not in self.folders:
            self.folders[label] = self._unique("", _safe_part(label, "class"), "")
        return self.folders[label]

    def file(self, label: str, name: str, index: int) -> str:
        stem, suffix = _safe_file_name(name, f"image_{index}")
        return self._unique(self.folder(label) + "/", stem, suffix)

    def _unique(self, prefix: str, stem: str, suffix: str) -> str:
        candidate, number = stem + suffix, 2
        while (prefix + candidate).lower() in self.used:
            candidate = _fit(stem, f"_{number}{suffix}", MAX_NAME_BYTES)
            number += 1
        self.used.add((prefix + candidate).lower())
        return candidate


def save_image_set(store: RunStore, image_set: ImageSet, name: str, workspace: str | None = None) -> Path:
    """Write an in-memory image set to a new dataset folder; returns the folder.

    ``workspace`` is the private workspace (hosted mode) it belongs to, listed only there; the
    workspace's saved datasets must stay within their disk quota (:mod:`tl_core.quotas`). ``name``
    is made safe as :func:`dataset_name` does.

    Class names keep their letters (accents and emoji included); path separators and other
    characters a file system may refuse become ``_``; names are cut to ``MAX_NAME_BYTES`` bytes,
    extension kept. Clashing names get a number. Class folders without images are kept (empty),
    so the saved dataset reports them too. Everything is written into a hidden folder renamed
    into place at the end, so a failed save leaves no half dataset behind.

    Raises:
        DataError: not one file is a readable image, or the files could not be written (disk full,
            no permission); nothing is kept.
        QuotaError: the workspace's saved datasets would go over their quota; nothing is written.
    """
    check_usable(image_set)  # files that only look like images (a zip of zeros) are not kept
    _check_space(store, image_set, workspace)
    name = _safe_part(name, "dataset")
    root = datasets_dir(store)
    _remove_stale_partials(root)
    token = secrets.token_urlsafe(12)
    partial, folder = root / f".partial-{token}", root / token
    namer = _Namer()
    try:
        partial.mkdir(parents=True)
        for label in image_set.empty_classes:
            (partial / namer.folder(label)).mkdir(exist_ok=True)
        for index, item in enumerate(image_set.items):
            inside = item.name[len(item.label) + 1 :] if item.name.startswith(item.label + "/") else item.name
            filename = namer.file(item.label, inside.replace("/", "_"), index)
            path = partial / namer.folder(item.label) / filename
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(item.read_bytes())
        meta = {
            "name": name,
            "created_at": time.time(),
            "n_files": len(image_set.items),
            "ignored": image_set.ignored,
            "source": image_set.source,
            "workspace": workspace,
            # Class names a file system could not hold as they were, and the folder each is stored under.
            "renamed": {label: stored for label, stored in namer.folders.items() if label != stored},
        }
        write_json_atomic(partial / DATASET_META, meta)
        partial.rename(folder)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(
            f"Could not save the dataset under {root} ({err.strerror or err}); nothing was kept. "
            "Free some disk space (or fix the folder's permissions) and load it again."
        ) from err
    if store.artifacts is not None:  # a failed copy is logged: the dataset is saved here all the same
        store.artifacts.try_upload(folder, f"datasets/{folder.name}")
    return folder


KEEP, EXCLUDE = "keep", "exclude"


def corrected_version(store: RunStore, image_set: ImageSet, decisions: dict[str, str], name: str,
                      workspace: str | None = None) -> Path:
    """A new saved dataset: ``image_set`` with some images relabelled or left out; the original is untouched.

    Args:
        decisions: per image (its name in ``image_set``, ``class/file.jpg``): :data:`KEEP`,
            :data:`EXCLUDE`, or the class it belongs to instead (an existing class name).
        name: the new version's name (made safe as :func:`dataset_name` does).

    Returns:
        The new dataset's folder (see :func:`save_image_set`).

    Raises:
        DataError: a decision names an image the set does not have, or a class it does not have;
            or nothing would be left.
    """
    names = {item.name for item in image_set.items}
    classes = set(image_set.class_names)
    unknown = sorted(set(decisions) - names)
    if unknown:
        raise DataError(f"{len(unknown)} image(s) to correct are not in this dataset (e.g. {unknown[0]!r}); "
                        "it may have changed since the check. Run the check again.")
    bad = sorted({d for d in decisions.values() if d not in (KEEP, EXCLUDE) and d not in classes})
    if bad:
        raise DataError(f"Class {bad[0]!r} is not one of this dataset's classes ({', '.join(sorted(classes))}).")
    items = []
    for item in image_set.items:
        decision = decisions.get(item.name, KEEP)
        if decision == EXCLUDE:
            continue
        items.append(item if decision in (KEEP, item.label) else dataclasses.replace(item, label=decision))
    if not items:
        raise DataError("Every image would be left out; nothing to save.")
    corrected = ImageSet(items, ignored=list(image_set.ignored), source=image_set.source,
                         empty_classes=sorted(classes - {item.label for item in items}))
    return save_image_set(store, corrected, name, workspace)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def _check_space(store: RunStore, image_set: ImageSet, workspace: str | None) -> None:
    if workspace is None:
        return  # no quotas outside a hosted workspace (and no need to measure anything)
    saved = list_datasets(store, workspace)
    quotas.check_dataset_space(
        workspace, used_bytes=sum(_folder_bytes(Path(d["path"])) for d in saved),
        new_bytes=sum(item.n_bytes for item in image_set.items), n_datasets=len(saved),
    )


def is_saved_upload(path: str | Path) -> bool:
    """Whether ``path`` names a saved upload (not a sample set): the kind :func:`delete_dataset` deletes."""
    return bool(_SAVED_NAME.fullmatch(Path(path).name))


def delete_dataset(store: RunStore, path: str | Path, workspace: str | None = None) -> None:
    """Delete a saved upload: its folder here and its copy at the artifacts location.

    Runs trained on it keep their results; resuming one of them then fails for want of its data.

    Args:
        workspace: the private workspace (hosted mode) it must belong to; any when ``None``.

    Raises:
        DataError: ``path`` is not a saved upload (of this workspace), or a queued or running run
            still reads its files: nothing is deleted.
    """
    name = Path(path).name
    listed = {Path(d["path"]).name for d in list_datasets(store, workspace)}
    if not is_saved_upload(name) or name not in listed:
        raise DataError(f"'{name}' is not a saved upload of this workspace, so nothing was deleted. "
                        "Pick one from Saved datasets.")
    using = [
        run for status in ("queued", "running") for run in store.list_runs(status=status, workspace=workspace)
        if Path((run.get("config") or {}).get("source") or "").name == name
    ]
    if using:
        raise DataError(f"{len(using)} queued or running run(s) still read this dataset's files, so nothing was "
                        "deleted. Let them finish (or cancel them on the Train page), then delete it.")
    shutil.rmtree(datasets_dir(store) / name, ignore_errors=True)
    if store.artifacts is not None:
        store.artifacts.delete(f"datasets/{name}")
        _MIRRORED_META.pop((store.artifacts.location, name), None)


def local_source(store: RunStore, source: str) -> str:
    """A path to a run's dataset that this server can read: ``source`` itself when it exists.

    A dataset this app saved (an upload, the digits sample) under another data folder or on a
    wiped disk is looked for in this data folder, then fetched from the artifacts location (an
    upload) or rebuilt (the sample). Anything else is returned as it is, for the reader to report.
    """
    path = Path(source)
    if path.exists() or path.parent.name != "datasets":
        return source
    local = datasets_dir(store) / path.name
    if local.is_dir():
        return str(local)
    saved = _SAVED_NAME.fullmatch(path.name) and store.artifacts is not None
    if saved and store.artifacts.try_download(f"datasets/{path.name}", local):
        return str(local)
    digits = _DIGITS_NAME.fullmatch(path.name)
    if digits:
        return str(digits_sample(store, int(digits.group(1))))
    return source


def with_local_source(store: RunStore, run: dict) -> dict:
    """``run`` with its ``config['source']`` replaced by :func:`local_source` (a copy; the store is unchanged)."""
    config = dict(run.get("config") or {})
    if config.get("source"):
        config["source"] = local_source(store, config["source"])
    return {**run, "config": config}


# A save takes seconds to minutes; a hidden partial folder this old was left by a killed process.
STALE_PARTIAL_SECONDS = 24 * 3600


def _remove_stale_partials(root: Path) -> None:
    for partial in root.glob(".partial-*") if root.is_dir() else []:
        try:
            if time.time() - partial.stat().st_mtime > STALE_PARTIAL_SECONDS:
                shutil.rmtree(partial, ignore_errors=True)
        except OSError:
            pass  # removed by another process meanwhile


def list_datasets(store: RunStore, workspace: str | None = None) -> list[dict[str, Any]]:
    """Saved datasets, newest first: ``{path, name, created_at, n_files}``.

    With an artifacts location, the uploads mirrored there are listed too (after a wiped disk, a
    new server lists what the old one saved); their ``path`` is where :func:`local_source` brings
    them when one is used.

    Args:
        workspace: only the datasets saved in this private workspace (hosted mode); all when ``None``.
    """
    found = {}
    root = datasets_dir(store)
    for meta_path in root.glob(f"*/{DATASET_META}") if root.exists() else []:
        if meta_path.parent.name.startswith("."):
            continue  # a save in progress, or one that failed
        try:
            found[meta_path.parent.name] = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
    if store.artifacts is not None:
        for name in store.artifacts.list_keys("datasets"):
            if name not in found and _SAVED_NAME.fullmatch(name):
                meta = _mirrored_meta(store, name)
                if meta is not None:
                    found[name] = meta
    listed = [
        {**meta, "path": str(root / name)}
        for name, meta in found.items()
        if workspace is None or meta.get("workspace") == workspace
    ]
    return sorted(listed, key=lambda d: d.get("created_at", 0), reverse=True)


_MIRRORED_META: dict[tuple[str, str], dict] = {}  # a saved upload never changes: read once per process


def _mirrored_meta(store: RunStore, name: str) -> dict | None:
    key = (store.artifacts.location, name)
    if key not in _MIRRORED_META:
        raw = store.artifacts.read_file(f"datasets/{name}", DATASET_META)
        try:
            meta = json.loads(raw) if raw is not None else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            return None
        _MIRRORED_META[key] = meta
    return _MIRRORED_META[key]


def digits_sample(store: RunStore, n_classes: int = 10) -> Path:
    """scikit-learn's handwritten digits (1,797 8 x 8 scans, 10 classes) as PNG class folders.

    Works offline: the images ship inside scikit-learn. Built once, then reused.
    """
    from sklearn.datasets import load_digits

    folder = datasets_dir(store) / f"sample-digits-{n_classes}"
    if (folder / "dataset.json").exists():
        return folder
    digits = load_digits()
    with new_folder(folder) as tmp:  # a unique name: two sessions building it at once never mix files
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
