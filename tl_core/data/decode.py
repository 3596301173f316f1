"""Decode images the way a careful tool does, into uint8 pixels cached on disk.

:func:`decode_dataset` turns an :class:`~tl_core.data.ingest.ImageSet` into a
:class:`DecodedDataset`: every usable image decoded once (EXIF orientation, transparency on white,
16-bit and CMYK made 8-bit RGB), resized to the model's input size, and written into a
memory-mapped ``.npy`` cache that later epochs and runs read instead of decoding again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, ImageSequence  # noqa: F401  (ImageSequence keeps GIF support loaded)

from tl_core.config import DEFAULT_MAX_PIXELS, DEFAULT_RESIZE, RESIZE_MODES, DataConfig
from tl_core.data.arrays import PageRelease, create_npy, truncate_npy
from tl_core.data.ingest import ImageItem, ImageSet
from tl_core.errors import DataError, ImageDecodeError
from tl_core.fsutil import temporary_path
from tl_core.progress import NullProgress, ProgressListener

# Bumped whenever decoding changes what pixels come out, so stale caches are never reused.
DECODER_VERSION = 3
# Images decoded ahead of the one being written: what decoding holds in memory, whatever the size.
DECODE_AHEAD = 64


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


def _model_pixels(image: Image.Image, size: int, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """The model's input from :func:`_open_image`'s picture: ``size`` x ``size`` uint8 RGB.

    Grayscale and transparent pictures are resized first and made RGB after, on the small image:
    the same result (Pillow resizes transparent pictures with premultiplied alpha, and
    compositing on white is linear; rounding moves a value by at most 3 of 255, on 0.01 on average
    over clipart8) for a fraction of the work.
    """
    return np.asarray(_to_rgb(_resized(image, size, resize)), dtype=np.uint8)


# What a padded margin is filled with, per mode: white, or transparent (composited on white later).
_MARGIN = {"RGB": (255, 255, 255), "L": 255, "RGBA": (255, 255, 255, 0), "LA": (255, 0)}


def _resized(image: Image.Image, size: int, resize: str = DEFAULT_RESIZE) -> Image.Image:
    """``size`` x ``size``: ``pad`` keeps the picture's shape (its longer side made ``size``, centred
    on a white square), ``stretch`` stretches it to the square, as Keras' loaders do."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize is {resize!r}; one of {', '.join(RESIZE_MODES)}")
    width, height = image.size
    if resize == "stretch" or width == height:
        return image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    scale = size / max(width, height)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = Image.new(image.mode, (size, size), _MARGIN[image.mode])
    canvas.paste(image.resize(inner, Image.Resampling.BILINEAR, reducing_gap=3.0),
                 ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return canvas


def padded_picture(picture: Image.Image) -> Image.Image:
    """An RGB picture on a white square (centred, as :func:`_resized` pads it at the model's size):
    what a ``pad`` model sees, so heat maps drawn over it line up."""
    width, height = picture.size
    if width == height:
        return picture
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(picture, ((side - width) // 2, (side - height) // 2))
    return canvas


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


def prepare_image(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                  resize: str = DEFAULT_RESIZE) -> tuple[np.ndarray, Image.Image]:
    """Decode image bytes exactly as training does; returns the model's input pixels and the picture
    (with ``pad``, on its white square: a heat map of the input lines up with it).

    Args:
        resize: the run's :attr:`~tl_core.config.DataConfig.resize`.

    Raises:
        ImageDecodeError: the image cannot be used (see :func:`decode_image`).
    """
    image, _ = _open_image(data, max_pixels, draft_size=size)
    picture = _to_rgb(image)
    return _model_pixels(image, size, resize), (padded_picture(picture) if resize == "pad" else picture)


def _decode_one(item: ImageItem, max_pixels: int, size: int | None, resize: str = DEFAULT_RESIZE):
    """Returns ``(pixels or None, info, sha256)`` or raises ImageDecodeError."""
    data = item.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    image, info = _open_image(data, max_pixels, draft_size=size or 256)
    return (_model_pixels(image, size, resize) if size is not None else None), info, digest


def _cache_key(image_set: ImageSet, size: int | None, max_pixels: int, resize: str = DEFAULT_RESIZE) -> str:
    digest = hashlib.sha256(f"v{DECODER_VERSION}:{size}:{max_pixels}:{resize}\n".encode())
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
    return Path(cache_dir) / f"decoded-{_cache_key(image_set, image_size, config.max_pixels, config.resize)}"


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
            return item, _decode_one(item, config.max_pixels, image_size, config.resize), None
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
