"""Find the labelled images of a source: a folder of class folders, a zip of one, or an upload.

A source becomes an :class:`ImageSet`: the usable image files with their class, and every file
or folder left out with its reason. Nothing is decoded here. A zip is checked against the limits
of a :class:`~tl_core.config.DataConfig` (size, number of files, compression ratio) before
anything is extracted, and it is never written to disk.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tl_core.config import DataConfig
from tl_core.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ARCHIVE_EXTENSIONS = frozenset({".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"})
# Members smaller than this are never refused for their compression ratio (a blank icon may
# compress 100 times; only a large member that does so is a zip-bomb risk).
ZIP_RATIO_MIN_BYTES = 1024**2
_ZIP_UTF8_FLAG = 0x800
_DRIVE_PATH = re.compile(r"^[A-Za-z]:")
# Written by datasets.save_image_set next to the class folders of a saved upload.
DATASET_META = "dataset.json"


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
    ``renamed`` maps a class name as uploaded to the folder name a saved upload stores it under,
    for the names a file system could not hold as they were.
    """

    items: list[ImageItem]
    ignored: list[dict[str, str]] = field(default_factory=list)
    source: str = ""
    empty_classes: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return sorted({item.label for item in self.items})


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


def _read_saved_meta(folder: Path) -> tuple[list[dict[str, str]], dict[str, str]]:
    """What was ignored, and which classes were renamed, when a saved upload was first read
    (``DATASET_META`` of ``datasets.py``); nothing for any other folder."""
    try:
        meta = json.loads((folder / DATASET_META).read_text())
    except (OSError, ValueError):
        return [], {}
    meta = meta if isinstance(meta, dict) else {}
    ignored = [
        {"file": entry["file"], "reason": entry["reason"]}
        for entry in meta.get("ignored") or []
        if isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in ("file", "reason"))
    ]
    renamed = meta.get("renamed") if isinstance(meta.get("renamed"), dict) else {}
    return ignored, {str(k): str(v) for k, v in renamed.items()}


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
    earlier, renamed = _read_saved_meta(folder)  # their reasons say more than the saved copy can
    listed = {entry["file"] for entry in earlier}
    ignored = earlier + [entry for entry in skipped + ignored if entry["file"] not in listed]
    return ImageSet(items=items, ignored=ignored, source=str(folder), empty_classes=empty, renamed=renamed)


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
