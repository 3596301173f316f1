"""Ingest, validate, decode, split and batch a labelled image set.

A dataset arrives as a folder with one sub-folder per class, a ``.zip`` of the same, or a list of
``(filename, bytes, label)`` from an upload widget. It becomes an :class:`ImageSet` (what was
found, what was ignored and why), then a :class:`DecodedDataset` (uint8 pixels at the model's
input size, cached on disk so epochs and later runs never decode again). The cache is a
memory-mapped ``.npy`` file that training reads batch by batch (:func:`make_batches`,
:class:`Rows`), so a dataset larger than memory trains from disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import mmap
import os
import re
import stat
import sys
import threading
import uuid
import warnings
import zipfile
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, ImageOps, ImageSequence  # noqa: F401  (ImageSequence keeps GIF support loaded)

from tl_core.config import DEFAULT_MAX_PIXELS, DataConfig
from tl_core.errors import DataError, ImageDecodeError
from tl_core.progress import NullProgress, ProgressListener

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ARCHIVE_EXTENSIONS = frozenset({".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"})
# Members smaller than this are never refused for their compression ratio (a blank icon may
# compress 100 times; only a large member that does so is a zip-bomb risk).
ZIP_RATIO_MIN_BYTES = 1024**2
_ZIP_UTF8_FLAG = 0x800
_DRIVE_PATH = re.compile(r"^[A-Za-z]:")
# Written by datasets.save_image_set next to the class folders of a saved upload.
DATASET_META = "dataset.json"
IMBALANCE_RATIO = 3.0
MIN_IMAGES_PER_CLASS = 3  # one each for train, validation and test
# Bumped whenever decoding changes what pixels come out, so stale caches are never reused.
DECODER_VERSION = 2
# Images decoded ahead of the one being written: what decoding holds in memory, whatever the size.
DECODE_AHEAD = 64
# A pass over a memory-mapped file gives its pages back to the system after this many bytes.
RELEASE_BYTES = 32 * 1024**2


@dataclass(frozen=True)
class ImageItem:
    """One labelled image file, on disk (``path``) or in memory (``data``)."""

    name: str
    label: str
    path: Path | None = None
    data: bytes | None = None

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None  # invariant of the constructors below, not user input
        return self.path.read_bytes()

    @property
    def n_bytes(self) -> int:
        """The file's size, without reading it."""
        return len(self.data) if self.data is not None else self.path.stat().st_size


@dataclass
class ImageSet:
    """The labelled files found in a source, and the files ignored with their reason.

    ``empty_classes`` names the class folders that hold no image (they are also in ``ignored``).
    """

    items: list[ImageItem]
    ignored: list[dict[str, str]] = field(default_factory=list)
    source: str = ""
    empty_classes: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return sorted({item.label for item in self.items})


@dataclass
class DecodedDataset:
    """Decoded pixels of the usable images, in the order of ``names``.

    Attributes:
        x: ``(n, size, size, 3)`` uint8 pixels (a read-only ``np.memmap`` of the cache file when
            decoded with a cache folder), or ``None`` when decoded only to inspect.
        y: class index of each image (into ``class_names``).
        names: display name (``class/file``) of each image.
        hashes: sha256 of each file's bytes (duplicate detection, split groups, cache keys).
        class_names: sorted class labels.
        skipped: ``{file, reason}`` for every image that could not be used.
        infos: per usable image: width, height, mode and format before decoding.
    """

    x: np.ndarray | None
    y: np.ndarray
    names: list[str]
    hashes: list[str]
    class_names: list[str]
    skipped: list[dict[str, str]]
    infos: list[dict[str, Any]]
    image_size: int | None = None

    @property
    def fingerprint(self) -> str:
        """A short content hash of the usable images and their labels."""
        digest = hashlib.sha256()
        for name, h, label in sorted(zip(self.names, self.hashes, self.y.tolist())):
            digest.update(f"{h}:{self.class_names[label]}\n".encode())
        return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- ingestion


def load_images(
    source: str | os.PathLike | bytes | Sequence[tuple[str, bytes, str]],
    config: DataConfig = DataConfig(),
) -> ImageSet:
    """Read a labelled image set from a folder, a zip (path or bytes) or an upload list.

    Args:
        source: a folder with one sub-folder per class, a ``.zip`` of such folders (as a path or
            its bytes), or ``(filename, bytes, label)`` tuples.
        config: the zip limits (total size, number of files, compression ratio).

    Returns:
        The image set. Nothing is decoded yet.

    Raises:
        DataError: the source does not exist, is not a zip, is too large, or holds no images.
    """
    if isinstance(source, (bytes, bytearray)):
        image_set = load_zip(bytes(source), config)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            image_set = load_folder(path)
        elif path.is_file():
            image_set = load_zip(path, config)
        else:
            raise DataError(f"No folder or zip file at '{path}'. Give a folder of class folders or a .zip.")
    else:
        image_set = load_uploads(source)
    if not image_set.items:
        empty = image_set.empty_classes
        raise DataError(
            f"No images found in {image_set.source or 'the upload'} "
            f"({len(image_set.ignored)} other files or folders ignored)."
            + (f" Class folders without images: {_quoted(empty)}." if empty else "")
            + f" Expected one folder per class holding {', '.join(sorted(IMAGE_EXTENSIONS))} files."
        )
    return image_set


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _is_hidden(relative: PurePosixPath) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


def _classify_entry(relative: PurePosixPath) -> str | None:
    """Returns why a relative file path is ignored, or ``None`` if it is a usable image path."""
    if _is_hidden(relative):
        return "hidden or system file"
    if len(relative.parts) < 2:
        return "not inside a class folder"
    suffix = relative.suffix.lower()
    if suffix in ARCHIVE_EXTENSIONS:
        return "nested archive (not opened)"
    if suffix not in IMAGE_EXTENSIONS:
        return f"not an image file type ({suffix or 'no extension'})"
    return None


def _strip_single_root(paths: Iterable[PurePosixPath]) -> PurePosixPath | None:
    """The common top folder to strip when every usable path lies in one folder of class folders."""
    visible = [p for p in paths if not _is_hidden(p)]
    images = [p for p in visible if p.suffix.lower() in IMAGE_EXTENSIONS]
    roots = {p.parts[0] for p in visible}
    if len(roots) == 1 and images and all(len(p.parts) >= 3 for p in images):
        return PurePosixPath(next(iter(roots)))
    return None


def _items_from_paths(
    entries: list[tuple[PurePosixPath, Any]], make_item, folders: Iterable[PurePosixPath] = ()
) -> tuple[list[ImageItem], list[dict[str, str]], list[str]]:
    """Items, ignored files and class folders without images, from relative file and folder paths.

    ``make_item(name, label, handle)`` returns the item, or a string: why the file is unusable.
    """
    root = _strip_single_root(p for p, _ in entries)

    def strip(relative: PurePosixPath) -> PurePosixPath | None:
        if root is None:
            return relative
        if relative.parts[:1] == root.parts:
            return PurePosixPath(*relative.parts[1:])
        return None  # beside the wrapping folder: holds no image, or the root would not be stripped

    items, ignored = [], []
    files_in_class: Counter[str] = Counter()
    for relative, handle in entries:
        relative = strip(relative) or relative
        if len(relative.parts) >= 2 and not _is_hidden(relative):
            files_in_class[relative.parts[0]] += 1
        reason = _classify_entry(relative)
        item = None if reason else make_item(str(relative), relative.parts[0], handle)
        if isinstance(item, str):  # make_item could not use the file: its reason
            reason = item
        if reason:
            ignored.append({"file": str(relative), "reason": reason})
        else:
            items.append(item)
    for folder in folders:
        relative = strip(folder)
        if relative is not None and relative.parts and not _is_hidden(relative):
            files_in_class.setdefault(relative.parts[0], 0)
    labels = {item.label for item in items}
    empty = sorted(name for name in files_in_class if name not in labels)
    for name in empty:
        n_files = files_in_class[name]
        what = f"no image among its {n_files} file(s)" if n_files else "empty class folder"
        reason = f"{what}: class '{name}' has no images and is left out"
        ignored.append({"file": f"{name}/", "reason": reason})
    return items, ignored, empty


def _read_saved_ignored(folder: Path) -> list[dict[str, str]]:
    """What was ignored when a saved upload was first read (``DATASET_META`` of ``datasets.py``)."""
    try:
        meta = json.loads((folder / DATASET_META).read_text())
    except (OSError, ValueError):
        return []
    listed = meta.get("ignored") if isinstance(meta, dict) else None
    return [
        {"file": entry["file"], "reason": entry["reason"]}
        for entry in listed or []
        if isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in ("file", "reason"))
    ]


def load_folder(folder: Path) -> ImageSet:
    """Images in ``folder/<class>/**``; a single wrapping folder is looked through.

    Hidden folders, symbolic links to folders and unreadable folders are listed, not walked.
    A class folder without images is listed by name. In a saved upload, what was ignored at
    upload time is listed again.
    """
    entries, folders, skipped = [], [], []

    def relative_to_folder(path: Path) -> PurePosixPath:
        return PurePosixPath(path.relative_to(folder).as_posix())

    def unreadable(err: OSError) -> None:
        where = relative_to_folder(Path(err.filename)) if err.filename else PurePosixPath(".")
        skipped.append({"file": f"{where}/", "reason": f"folder could not be read ({err.strerror or err})"})

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=False):
        for dirname in sorted(dirnames):
            full = Path(dirpath) / dirname
            relative = relative_to_folder(full)
            if full.is_symlink():
                skipped.append({"file": f"{relative}/", "reason": "symbolic link to a folder, not followed"})
                dirnames.remove(dirname)
            elif _is_hidden(PurePosixPath(dirname)):
                skipped.append({"file": f"{relative}/", "reason": "hidden or system folder"})
                dirnames.remove(dirname)
            else:
                folders.append(relative)
        dirnames.sort()
        for filename in sorted(filenames):
            full = Path(dirpath) / filename
            if full.parent == folder and filename == DATASET_META:
                continue  # the description of a saved upload, not part of the data
            entries.append((relative_to_folder(full), full))

    def make_item(name: str, label: str, full: Path) -> ImageItem | str:
        if full.is_file():  # follows a symbolic link to a file, as the user's own folder may use them
            return ImageItem(name=name, label=label, path=full)
        if full.is_symlink():
            return "broken symbolic link"
        return "not a regular file (a pipe, socket or device)"

    items, ignored, empty = _items_from_paths(entries, make_item, folders)
    earlier = _read_saved_ignored(folder)  # their reasons say more than the saved copy can
    listed = {entry["file"] for entry in earlier}
    ignored = earlier + [entry for entry in skipped + ignored if entry["file"] not in listed]
    return ImageSet(items=items, ignored=ignored, source=str(folder), empty_classes=empty)


def _zip_member_name(info: zipfile.ZipInfo) -> str:
    """The member's path with ``/`` separators; UTF-8 names stored without the UTF-8 flag are fixed."""
    name = info.filename
    if not info.flag_bits & _ZIP_UTF8_FLAG:
        try:
            name = name.encode("cp437").decode("utf-8")
        except UnicodeError:
            pass  # really cp437 (or unknown): keep what zipfile decoded
    return name.replace("\\", "/")


def _unsafe_zip_path(name: str) -> bool:
    relative = PurePosixPath(name)
    return relative.is_absolute() or ".." in relative.parts or bool(_DRIVE_PATH.match(name))


def _check_zip_totals(infos: list[zipfile.ZipInfo], label: str, config: DataConfig) -> None:
    """Refuses an archive with too many files or too many bytes once expanded, before extracting."""
    if len(infos) > config.max_zip_entries:
        raise DataError(
            f"{label} has {len(infos):,} files; at most {config.max_zip_entries:,} are accepted. "
            "Split the dataset or use a local folder."
        )
    total = sum(info.file_size for info in infos)
    if total > config.max_zip_bytes:
        raise DataError(
            f"{label} would expand to {_size(total)} ({_size(sum(i.compress_size for i in infos))} "
            f"compressed); at most {_size(config.max_zip_bytes)} is accepted, so nothing was extracted. "
            "If this is a real dataset, split it or use a local folder; a tiny zip that expands this "
            "much is a zip bomb."
        )


def _member_bomb_reason(info: zipfile.ZipInfo, config: DataConfig) -> str | None:
    """Why one member is not extracted as a zip bomb (over 1 MiB and over the ratio), or ``None``."""
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > ZIP_RATIO_MIN_BYTES and ratio > config.max_zip_ratio:
        return (
            f"expands {ratio:,.0f} times ({_size(info.compress_size)} to {_size(info.file_size)}), "
            f"over the {config.max_zip_ratio:g}x limit: looks like a zip bomb, not extracted. "
            "An image compresses far less; if it is one, re-save it as PNG or JPEG."
        )
    return None


def _check_zip_expansion(
    entries: list[tuple[PurePosixPath, zipfile.ZipInfo]], zip_bytes: int, label: str, config: DataConfig
) -> None:
    """Refuses an archive whose members to extract would expand too much together, before extracting.

    Many small members of zeros each pass the per-member ratio check; their total does not. Members
    that are never extracted (not images, symbolic links, single bombs) are not counted.
    """
    extracted = [
        info for path, info in entries
        if _classify_entry(path) is None and not stat.S_ISLNK(info.external_attr >> 16)
        and _member_bomb_reason(info, config) is None
    ]
    expanded = sum(info.file_size for info in extracted)
    compressed = sum(info.compress_size for info in extracted)
    if config.max_zip_expansion is not None and expanded > config.max_zip_expansion * zip_bytes:
        raise DataError(
            f"{label} expands to {_size(expanded)} from {_size(zip_bytes)} ({expanded / max(zip_bytes, 1):,.1f}x); "
            f"the limit is {config.max_zip_expansion:g}x the upload, so nothing was extracted. Images barely "
            "compress: a small zip that expands this much is a zip bomb. If these are real images, re-save "
            "uncompressed ones (BMP, TIFF) as PNG or JPEG and zip them again."
        )
    ratio = expanded / max(compressed, 1)
    if expanded > ZIP_RATIO_MIN_BYTES and ratio > config.max_zip_ratio:
        raise DataError(
            f"{label}'s images expand {ratio:,.0f} times together ({_size(compressed)} to {_size(expanded)}), "
            f"over the {config.max_zip_ratio:g}x limit, so nothing was extracted: many small files of "
            "nothing look like a zip bomb. Images compress far less; if these are real images, re-save "
            "them as PNG or JPEG and zip them again."
        )


def _size(n_bytes: float) -> str:
    """``1,234 bytes``, ``12.3 MB``, ``4.0 GB`` (powers of 1024)."""
    if n_bytes < 1024:
        return f"{n_bytes:,.0f} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        n_bytes /= 1024
        if n_bytes < 1024 or unit == "TB":
            break
    return f"{n_bytes:,.1f} {unit}"


def load_zip(source: Path | bytes, config: DataConfig = DataConfig()) -> ImageSet:
    """Images in a zip of class folders, read into memory after checking the archive's size.

    Nothing is written to disk. Before anything is extracted, the number of files, their total
    uncompressed size, and how much the members to extract expand together (against the zip's own
    size and as a compression ratio) are checked against ``config``. Entries with absolute or ``..`` paths,
    symbolic links, nested archives and members that expand suspiciously (zip-bomb ratio) are
    ignored and listed with their reason.

    Raises:
        DataError: not a zip, damaged, or over the limits of ``config``.
    """
    label = "the uploaded zip" if isinstance(source, bytes) else f"'{source}'"
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    zip_bytes = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    if not zipfile.is_zipfile(stream):
        raise DataError(f"{label} is not a zip archive. Upload a .zip of class folders.")
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise DataError(f"{label} is a damaged zip archive ({err}). Zip the class folders again.") from err
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        _check_zip_totals(infos, label, config)
        entries, unsafe = [], []
        for info in infos:
            name = _zip_member_name(info)
            if _unsafe_zip_path(name):
                unsafe.append({"file": name, "reason": "unsafe path (absolute or '..'), not extracted"})
            else:
                entries.append((PurePosixPath(name), info))
        _check_zip_expansion(entries, zip_bytes, label, config)
        folders = [PurePosixPath(_zip_member_name(info)) for info in archive.infolist() if info.is_dir()]
        folders = [folder for folder in folders if not _unsafe_zip_path(str(folder))]

        def read(name: str, label_: str, info: zipfile.ZipInfo) -> ImageItem | str:
            if stat.S_ISLNK(info.external_attr >> 16):
                return "symbolic link, not followed"
            bomb = _member_bomb_reason(info, config)
            if bomb:
                return bomb
            try:
                with archive.open(info) as handle:
                    data = handle.read(info.file_size + 1)
            except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, OSError, EOFError) as err:
                # Corrupt, encrypted or compressed with an unsupported method: skip this entry only.
                return f"could not be extracted from the zip ({err.__class__.__name__}: {err})"
            return ImageItem(name=name, label=label_, data=data[: info.file_size])

        items, ignored, empty = _items_from_paths(entries, read, folders)
    return ImageSet(items=items, ignored=unsafe + ignored, source=label, empty_classes=empty)


def load_uploads(files: Sequence[tuple[str, bytes, str]]) -> ImageSet:
    """Images from ``(filename, bytes, label)`` tuples, as a per-class upload widget gives them."""
    items, ignored = [], []
    for filename, data, label in files:
        label = str(label).strip()
        base = PurePosixPath(str(filename).replace("\\", "/")).name
        reason = _classify_entry(PurePosixPath(label or "_", base)) if label else "no class name given"
        if reason:
            ignored.append({"file": f"{label}/{base}", "reason": reason})
        else:
            items.append(ImageItem(name=f"{label}/{base}", label=label, data=bytes(data)))
    return ImageSet(items=items, ignored=ignored, source="the uploaded files")


def check_usable(image_set: ImageSet, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raises unless at least one file of the set opens as an image; stops at the first that does.

    Raises:
        DataError: not one file is a readable image (a set of files that only look like images).
    """
    example = None
    for item in image_set.items:
        try:
            _open_image(item.read_bytes(), max_pixels, draft_size=64)
            return
        except ImageDecodeError as err:
            example = example or f"'{item.name}': {err}"
    raise DataError(
        f"None of the {len(image_set.items)} image file(s) in {image_set.source or 'the upload'} can be opened "
        f"as an image (e.g. {example or 'no files'}); nothing was saved. Check that the files open in an "
        "image viewer, then upload them again."
    )


# --------------------------------------------------------------------------- decoding


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float single-channel images scaled (not clipped) into 8-bit grayscale."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        peak = 1.0 if values.max(initial=0) <= 1.0 else 255.0
    else:
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def decode_image(data: bytes, max_pixels: int, draft_size: int | None = None) -> tuple[Image.Image, dict]:
    """Decode image bytes into an 8-bit RGB picture the way a careful tool does.

    EXIF orientation is applied; transparency is composited on white; grayscale, 16-bit, palette
    and CMYK become RGB; an animated image gives its first frame.

    Args:
        data: the file's bytes.
        max_pixels: larger images are refused before their pixels are decoded.
        draft_size: lets JPEG decoding downscale on the fly to at least this side (faster).

    Returns:
        The RGB image and its original ``width``, ``height``, ``mode`` and ``format``.

    Raises:
        ImageDecodeError: empty, not an image, truncated, or over the pixel limit.
    """
    image, info = _open_image(data, max_pixels, draft_size)
    return _to_rgb(image), info


def _open_image(data: bytes, max_pixels: int, draft_size: int | None) -> tuple[Image.Image, dict]:
    """The decoded picture before its last step to RGB: upright, 8-bit, in mode ``RGB``, ``L``,
    ``RGBA`` or ``LA`` (gray and transparency are made RGB by :func:`_to_rgb`, after resizing)."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We enforce our own, lower pixel limit below, before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only; the first frame is current
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"{width} x {height} px ({width * height / 1e6:.1f} MP) is over the {max_pixels / 1e6:g} "
                    "MP limit; refused before decoding. Downscale it or raise the limit."
                )
            info = {"width": width, "height": height, "mode": image.mode, "format": image.format or "?"}
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy when EXIF asks for no rotation
            if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                image = _to_8bit(image)
            if image.mode in ("PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
            elif image.mode not in ("RGB", "L", "RGBA", "LA"):  # palette, bilevel, CMYK, YCbCr...
                image = image.convert("RGB")
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(_bomb_reason(err, max_pixels)) from err
    except Image.UnidentifiedImageError as err:
        raise ImageDecodeError(_unidentified_reason(data)) from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageDecodeError(f"could not decode: {err}") from err
    return image, info


def _to_rgb(image: Image.Image) -> Image.Image:
    """A picture from :func:`_open_image` in RGB, transparency composited on white."""
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")  # L


def _model_pixels(image: Image.Image, size: int) -> np.ndarray:
    """The model's input from :func:`_open_image`'s picture: ``size`` x ``size`` uint8 RGB.

    Grayscale and transparent pictures are resized first and made RGB after, on the small image:
    the same result (Pillow resizes transparent pictures with premultiplied alpha, and
    compositing on white is linear; rounding moves a value by at most 3 of 255, on 0.01 on average
    over clipart8) for a fraction of the work.
    """
    return np.asarray(_to_rgb(_resized(image, size)), dtype=np.uint8)


def _resized(image: Image.Image, size: int) -> Image.Image:
    """Stretched to ``size`` x ``size``, as Keras' loaders do."""
    return image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)


def _bomb_reason(err: Image.DecompressionBombError, max_pixels: int) -> str:
    """Why Pillow refused an image: over twice its own limit (~179 MP), in ``Image.open``, so we never
    see its width and height; its message gives the pixel count."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    if not found:
        return f"decompression bomb refused before decoding: {err}"
    pixels = int(found.group(1))
    limit = (
        f"the {max_pixels / 1e6:g} MP limit"
        if pixels > max_pixels
        else f"Pillow's {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} MP safety limit"
    )
    return (
        f"decompression bomb: the file declares {pixels / 1e6:,.1f} MP, over {limit}; refused before "
        "decoding. Downscale it or raise the limit."
    )


def _unidentified_reason(data: bytes) -> str:
    """Why Pillow found no image format; a text file (often a saved web page) is named as such."""
    head = data[:512].decode("utf-8", errors="replace")
    if "\ufffd" not in head[:-3] and all(ch.isprintable() or ch.isspace() for ch in head):
        return (
            "not a readable image: the file holds text (e.g. a web page or a note saved with an image "
            f"extension; it starts {head[:40].strip()!r})"
        )
    return "not a readable image (unknown or corrupt format)"


def prepare_image(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, Image.Image]:
    """Decode image bytes exactly as training does; returns the model's input pixels and the picture.

    Raises:
        ImageDecodeError: the image cannot be used (see :func:`decode_image`).
    """
    image, _ = _open_image(data, max_pixels, draft_size=size)
    return _model_pixels(image, size), _to_rgb(image)


def _decode_one(item: ImageItem, max_pixels: int, size: int | None):
    """Returns ``(pixels or None, info, sha256)`` or raises ImageDecodeError."""
    data = item.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    image, info = _open_image(data, max_pixels, draft_size=size or 256)
    return (_model_pixels(image, size) if size is not None else None), info, digest


def _cache_key(image_set: ImageSet, size: int | None, max_pixels: int) -> str:
    digest = hashlib.sha256(f"v{DECODER_VERSION}:{size}:{max_pixels}\n".encode())
    for item in image_set.items:
        if item.path is not None:
            try:
                st = item.path.stat()
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:  # gone since it was listed: decoding will skip it with the reason
                stamp = "unreadable"
        else:
            stamp = hashlib.sha256(item.data or b"").hexdigest()
        digest.update(f"{item.name}\t{item.label}\t{stamp}\n".encode())
    return digest.hexdigest()[:32]


def decode_dataset(
    image_set: ImageSet,
    image_size: int | None,
    config: DataConfig = DataConfig(),
    progress: ProgressListener | None = None,
    cache_dir: Path | None = None,
    on_rows: Callable[[Any, int], None] | None = None,
) -> DecodedDataset:
    """Decode (and resize to ``image_size``) every image once, skipping the unusable ones.

    With ``cache_dir``, the pixels go straight into a memory-mapped ``.npy`` file there, a few
    dozen images at a time, so memory stays the same whatever the dataset's size; ``x`` is then
    that file, read-only, and later calls reuse it while the files are unchanged. Without
    ``cache_dir`` the pixels are kept in memory.

    Args:
        image_set: what :func:`load_images` found.
        image_size: side to resize to, or ``None`` to decode only (inspection).
        config: the pixel limit.
        progress: receives stage ``decode`` with one step per image.
        cache_dir: where the pixels are stored (``decoded-<key>.npy`` and ``.json``) and reused.
        on_rows: called on this thread as ``on_rows(pixels, n)`` whenever the first ``n`` rows of
            ``pixels`` are written, to work on them while the next images are decoded (e.g.
            ``features.FeaturePass.feed``). The decoding threads then run at the lowest CPU
            priority, so that work keeps the cores it needs. Not called when the cache is used.

    Returns:
        The decoded dataset. Skipped images are listed with their reason, never raised.
    """
    progress = progress or NullProgress()
    n_items = len(image_set.items)
    cache_file = None
    if cache_dir is not None and image_size is not None:
        cached = cached_decode(image_set, image_size, config, cache_dir, progress)
        if cached is not None:
            return cached
        cache_file = _cache_file(image_set, image_size, config, cache_dir)

    tmp = None if cache_file is None else temporary_path(cache_file.with_suffix(".npy"))
    try:
        pixels = None
        if image_size is not None:
            shape = (n_items, image_size, image_size, 3)
            pixels = np.empty(shape, np.uint8) if tmp is None else create_npy(tmp, shape, np.uint8)
        decoded = _decode_into(image_set, image_size, config, progress, pixels, on_rows)
        if tmp is not None and not progress.should_stop():
            pixels.flush()
            decoded.x = pixels = None  # unmapped before the file is cut down to the usable rows
            decoded.x = _publish_decoded_cache(cache_file, tmp, decoded)
    finally:
        if tmp is not None:
            # A cancelled pass keeps its rows: the mapping outlives the file's name (POSIX).
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return decoded


def cached_decode(
    image_set: ImageSet, image_size: int, config: DataConfig, cache_dir: Path, progress: ProgressListener | None = None
) -> DecodedDataset | None:
    """What :func:`decode_dataset` with these arguments reads from its cache (reported to
    ``progress`` as a decode done from the cache), or ``None`` when it would have to decode."""
    cached = _read_decoded_cache(_cache_file(image_set, image_size, config, cache_dir), image_size)
    if cached is not None and progress is not None:
        n_items = len(image_set.items)
        progress.on_stage_start("decode", n_items)
        progress.on_step("decode", n_items, {"cached": 1.0})
        progress.on_stage_end("decode", {"cached": 1.0})
    return cached


def _cache_file(image_set: ImageSet, image_size: int, config: DataConfig, cache_dir: Path) -> Path:
    """The decoded-pixel cache entry's path, without suffix (``.npy`` and ``.json`` beside it)."""
    return Path(cache_dir) / f"decoded-{_cache_key(image_set, image_size, config.max_pixels)}"


def file_hashes(image_set: ImageSet) -> list[str | None]:
    """The SHA-256 of every item's bytes (as in ``DecodedDataset.hashes``); ``None`` for a file
    that cannot be read. Reads every file once, without decoding."""
    hashes: list[str | None] = []
    for item in image_set.items:
        try:
            hashes.append(hashlib.sha256(item.read_bytes()).hexdigest())
        except OSError:
            hashes.append(None)
    return hashes


def _decode_into(
    image_set: ImageSet, image_size: int | None, config: DataConfig, progress: ProgressListener, pixels, on_rows=None
) -> DecodedDataset:
    """Decodes every item on a few threads; usable images fill consecutive rows of ``pixels``."""
    class_index = {name: i for i, name in enumerate(image_set.class_names)}
    n_items = len(image_set.items)
    progress.on_stage_start("decode", n_items)
    labels, names, hashes, infos, skipped = [], [], [], [], []
    pages = PageRelease(pixels)

    def work(item: ImageItem):
        try:
            return item, _decode_one(item, config.max_pixels, image_size), None
        except ImageDecodeError as err:
            return item, None, str(err)
        except OSError as err:  # an unreadable file on disk
            return item, None, f"could not read the file: {err}"

    background = on_rows is not None and pixels is not None
    with contextlib.closing(_map_ahead(work, image_set.items, background)) as results:
        for done, (item, result, reason) in enumerate(results, start=1):
            if reason is not None:
                skipped.append({"file": item.name, "reason": reason})
            else:
                array, info, digest = result
                if pixels is not None:
                    pixels[len(names)] = array
                    pages.count(array.nbytes)
                labels.append(class_index[item.label])
                names.append(item.name)
                if background:
                    on_rows(pixels, len(names))
                hashes.append(digest)
                infos.append(info)
            if done % 16 == 0 or done == n_items:
                progress.on_step("decode", done, None)
            if progress.should_stop():
                break
    pages.release()
    progress.on_stage_end("decode", {"skipped": float(len(skipped))})
    return DecodedDataset(
        x=None if pixels is None else pixels[: len(names)],
        y=np.asarray(labels, dtype=np.int64),
        names=names,
        hashes=hashes,
        class_names=image_set.class_names,
        skipped=skipped,
        infos=infos,
        image_size=image_size,
    )


def _map_ahead(work, items: Sequence, background: bool = False):
    """``work(item)`` for each item, in order, computed on threads at most DECODE_AHEAD items ahead.

    Bounded, so a large dataset's decoded pixels never pile up waiting to be written. Closing the
    generator early (a cancel) drops the items not started. ``background``: the threads run at the
    lowest CPU priority (they use the cores the caller's own work leaves idle).
    """
    # Pillow releases the GIL while decoding, so threads overlap the work on several cores.
    workers = min(8, (os.cpu_count() or 2) + 1)
    with ThreadPoolExecutor(max_workers=workers, initializer=_lowest_priority if background else None) as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(work, item))
                if len(pending) >= DECODE_AHEAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _lowest_priority() -> None:
    """Gives the calling thread the lowest CPU priority (nice 19): it then runs on what the
    process's other threads leave idle. Linux sets it per thread; elsewhere nothing changes."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _publish_decoded_cache(path: Path, tmp: Path, decoded: DecodedDataset) -> np.memmap:
    """Moves the decoded pixels in ``tmp`` and their description to the cache entry ``path``.

    Returns the pixels, mapped read-only from the cache file.
    """
    truncate_npy(tmp, len(decoded.names))
    os.replace(tmp, path.with_suffix(".npy"))
    meta = {
        "names": decoded.names,
        "hashes": decoded.hashes,
        "class_names": decoded.class_names,
        "skipped": decoded.skipped,
        "infos": decoded.infos,
        "image_size": decoded.image_size,
        "y": decoded.y.tolist(),
    }
    tmp_meta = temporary_path(path.with_suffix(".json"))
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, path.with_suffix(".json"))
    return np.load(path.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)


def _read_decoded_cache(path: Path, image_size: int) -> DecodedDataset | None:
    """The cache entry at ``path``, its pixels mapped read-only; ``None`` if absent or damaged."""
    meta_path, array_path = path.with_suffix(".json"), path.with_suffix(".npy")
    if not (meta_path.exists() and array_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        decoded = DecodedDataset(
            x=np.load(array_path, mmap_mode="r", allow_pickle=False),
            y=np.asarray(meta["y"], dtype=np.int64),
            names=meta["names"],
            hashes=meta["hashes"],
            class_names=meta["class_names"],
            skipped=meta["skipped"],
            infos=meta["infos"],
            image_size=meta["image_size"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged cache is rebuilt, not trusted
    if decoded.x.dtype != np.uint8 or decoded.x.shape != (len(decoded.y), image_size, image_size, 3):
        return None  # cut short or not ours: rebuilt
    return decoded


# --------------------------------------------------------------------------- arrays on disk


def temporary_path(path: Path) -> Path:
    """A name beside ``path`` for writing it before an atomic rename; unique per process and call,
    since the CLI, the job worker and the app's threads may write the same cache entry at once."""
    return path.with_name(f"{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def create_npy(path: Path, shape: Sequence[int], dtype) -> np.memmap:
    """A new ``.npy`` file of ``shape``, mapped for writing, its disk space reserved up front.

    Reserving the space turns a full disk into an OSError here, rather than a crash (SIGBUS) when
    a page of the mapping is written later.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
    if hasattr(os, "posix_fallocate") and array.size:
        with open(path, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                # The file system cannot reserve space: write as we go.
    return array


def truncate_npy(path: Path, n_rows: int) -> None:
    """Cuts an ``.npy`` file down to its first ``n_rows`` rows, in place."""
    with open(path, "r+b") as handle:
        version = np.lib.format.read_magic(handle)
        start = handle.tell() + (2 if version == (1, 0) else 4)  # the header text follows its length
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        end = handle.tell()
        if shape[0] == n_rows:
            return
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran_order,
                  "shape": (n_rows, *shape[1:])}
        # Fewer rows never take more digits, and NumPy pads the header: the new one fits in place.
        handle.seek(start)
        handle.write((repr(header).ljust(end - start - 1) + "\n").encode("latin1"))
        handle.truncate(end + n_rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


def release_pages(array) -> None:
    """Drops the pages of a memory-mapped array (or :class:`Rows` of one) from this process's
    resident memory; a no-op for an array in memory.

    The pages stay in the system's file cache (dirty ones are still written back), so reading them
    again is cheap. Without this, every page a pass has read or written counts in the process's
    resident size, up to the whole file, although the system can take them back at any time.
    """
    mapping = getattr(array.array if isinstance(array, Rows) else array, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):  # closed, or not supported: only a figure changes
            mapping.madvise(mmap.MADV_DONTNEED)


def take_rows(array, index) -> np.ndarray:
    """``array[index]`` as an array in memory, the rows read in ascending order (sequential on disk).

    ``array`` may be :class:`Rows`. The rows of a memory-mapped ``.npy`` file are read with file
    reads, not through the mapping: rows scattered over a file would map far more than their own
    bytes into the process (the kernel maps whole cached blocks, megabytes on file systems with
    large folios). Other arrays, a mapped scratch file among them, are indexed.
    """
    if isinstance(array, Rows):
        return take_rows(array.array, array.index[index])
    index = np.asarray(index, dtype=np.int64)
    if index.ndim == 0:
        return take_rows(array, index[None])[0]
    order = np.argsort(index, kind="stable")
    in_order = np.array_equal(order, np.arange(len(index)))
    rows = np.empty((len(index), *array.shape[1:]), array.dtype)
    sorted_rows = rows if in_order else np.empty_like(rows)
    source = _backing_file(array)
    if source is None or not len(index):
        sorted_rows[...] = array[index[order]]
    else:
        _read_rows(source, array.offset, index[order], sorted_rows)
    if not in_order:
        rows[order] = sorted_rows
    return rows


def _backing_file(array) -> str | None:
    """The file of a memory-mapped array that spans its whole ``.npy`` file's data (what
    ``np.load`` and :func:`create_npy` give), else ``None``."""
    filename = getattr(array, "filename", None)
    if not isinstance(array, np.memmap) or filename is None or not array.flags.c_contiguous:
        return None
    try:
        size = os.stat(filename).st_size
    except OSError:
        return None  # no name any more (a scratch file): read through the mapping
    return filename if array.offset + array.nbytes == size else None


def _read_rows(filename: str, offset: int, index: np.ndarray, out: np.ndarray) -> None:
    """Reads rows ``index`` (ascending) of the array stored at ``offset`` in ``filename`` into ``out``,
    one read per run of consecutive rows."""
    row_bytes = out[0].nbytes
    buffer = memoryview(out.reshape(-1).view(np.uint8))
    starts = np.flatnonzero(np.diff(index, prepend=index[0] - 2) != 1)
    with open(filename, "rb", buffering=0) as handle:
        for first, end in zip(starts, [*starts[1:], len(index)]):
            handle.seek(offset + int(index[first]) * row_bytes)
            wanted = (end - first) * row_bytes
            if handle.readinto(buffer[first * row_bytes : end * row_bytes]) != wanted:
                raise OSError(f"{filename} is shorter than its header says; delete it to rebuild the cache.")


class Rows:
    """Some rows of an array, typically a split of a memory-mapped cache, read only when asked for.

    ``rows[i:j]`` (any index) reads just those rows into memory; ``len``, ``shape`` and ``dtype``
    are those of ``array[index]``. It stands in for the copy ``array[index]`` where that copy
    could be larger than memory: training, evaluation and caching read it batch by batch.
    """

    def __init__(self, array, index) -> None:
        self.array = array
        self.index = np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> np.ndarray:
        return take_rows(self, key)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = take_rows(self.array, self.index)  # every row: for small data and tests only
        return rows if dtype is None else rows.astype(dtype)


def iter_chunks(x, size: int, written: Sequence = ()):
    """``(start, rows)`` for consecutive chunks of ``size`` rows of ``x``, each read into memory.

    ``x``: an array, a memory-mapped cache or :class:`Rows`. The pages of ``x`` and of the
    arrays the pass writes to (``written``) are released as it goes (:func:`release_pages`), so a
    pass over files larger than memory leaves the process's resident memory where it was.
    """
    pages = PageRelease(x, *written)
    for start in range(0, len(x), size):
        rows = take_rows(x, np.arange(start, min(start + size, len(x))))
        yield start, rows
        pages.count(rows.nbytes)
    pages.release()


class PageRelease:
    """Releases the pages of memory-mapped arrays (:func:`release_pages`) once every
    :data:`RELEASE_BYTES` read or written through them."""

    def __init__(self, *arrays) -> None:
        self.arrays = arrays
        self.n_bytes = 0

    def count(self, n_bytes: int) -> None:
        self.n_bytes += n_bytes
        if self.n_bytes >= RELEASE_BYTES:  # threads may race on the count: it only paces the releases
            self.n_bytes = 0
            self.release()

    def release(self) -> None:
        for array in self.arrays:
            release_pages(array)


# --------------------------------------------------------------------------- report


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
    image_set = load_images(source)
    return build_report(image_set, decode_dataset(image_set, None, config, progress))


# --------------------------------------------------------------------------- split and batches


def split_dataset(decoded: DecodedDataset, config: DataConfig = DataConfig()) -> dict[str, np.ndarray]:
    """A stratified train / validation / test split of image indices, repeatable by seed.

    Every class appears in every split. Byte-identical files stay in the same split, within a
    class and across classes, so a duplicate can never leak from training into the test set.

    Raises:
        DataError: fewer than two classes, or a class with fewer than 3 distinct usable images.
    """
    config.validate()
    if len(decoded.class_names) < 2:
        only = decoded.class_names[0] if decoded.class_names else "none"
        raise DataError(
            f"Found {len(decoded.class_names)} class ({only}); a classifier needs at least 2. "
            "Add a folder of images for another class."
        )
    rng = np.random.default_rng(config.seed)
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    placed: dict[str, str] = {}  # file hash -> split, shared by all classes
    for label, name in enumerate(decoded.class_names):
        groups: dict[str, list[int]] = defaultdict(list)
        for index in np.flatnonzero(decoded.y == label):
            groups[decoded.hashes[index]].append(int(index))
        n = len(groups)
        if n < MIN_IMAGES_PER_CLASS:
            raise DataError(
                f"Class '{name}' has {n} distinct usable image(s); a stratified train/validation/test "
                f"split needs at least {MIN_IMAGES_PER_CLASS} per class. Add images or merge the class."
            )
        wanted = {"test": max(1, round(n * config.test_fraction)), "val": max(1, round(n * config.val_fraction))}
        free = []
        for digest in groups:
            if digest in placed:  # the same file in an earlier class: same split
                wanted[placed[digest]] = wanted.get(placed[digest], 0) - 1
                splits[placed[digest]].extend(groups[digest])
            else:
                free.append(digest)
        for position, unit in enumerate(rng.permutation(len(free))):
            n_test, n_val = max(wanted["test"], 0), max(wanted["val"], 0)
            part = "test" if position < n_test else "val" if position < n_test + n_val else "train"
            placed[free[unit]] = part
            splits[part].extend(groups[free[unit]])
    return {name: np.asarray(sorted(indices), dtype=np.int64) for name, indices in splits.items()}


def make_batches(
    x,
    y: np.ndarray | None,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
):
    """A ``tf.data`` pipeline over uint8 pixels (or features): shuffle, batch, cast to float32, prefetch.

    Only row positions go through ``tf.data``; each batch's rows are read from ``x`` (an array, a
    memory-mapped cache or :class:`Rows` of one) when the batch is made, so memory holds a few
    batches, never the dataset. ``shuffle`` permutes all positions with ``seed``, anew each epoch.
    """
    import tensorflow as tf

    n = len(x)
    positions = tf.data.Dataset.range(n)
    if shuffle:
        # A full shuffle: positions are 8 bytes each, and a partial one on class-sorted files
        # would fill whole batches with one class.
        positions = positions.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    reader = _BatchReader(x, y)
    out_types = [tf.as_dtype(x.dtype)] + ([] if y is None else [tf.as_dtype(reader.y.dtype)])

    def load(batch):
        tensors = tf.numpy_function(reader, [batch], out_types, name="read_rows")
        images = tf.cast(tensors[0], tf.float32)
        images.set_shape((None, *x.shape[1:]))
        if y is None:
            return images
        labels = tensors[1]
        labels.set_shape((None,))
        return images, labels

    return positions.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class _BatchReader:
    """Reads the rows (and labels) of a batch of positions of ``x`` (:func:`take_rows`); pages an
    array read through its mapping brought in are released as reading goes (:class:`PageRelease`):
    scattered rows map far more than their own bytes."""

    def __init__(self, x, y: np.ndarray | None) -> None:
        self.x = x
        self.y = None if y is None else np.asarray(y)
        self.pages = PageRelease(x)

    def __call__(self, positions: np.ndarray) -> list[np.ndarray]:
        rows = take_rows(self.x, positions)
        self.pages.count(rows.nbytes)
        return [rows] if self.y is None else [rows, self.y[positions]]
