"""Bad input: each bad file gets a clear reason, and the rest of the dataset goes on.

Every hostile case is built here at test time (no binary fixtures): broken and lying image files,
images over the pixel limit and decompression bombs (refused from their header, never decoded),
zip bombs, unsafe or odd zip members, awkward class and file names, empty, single and tiny
classes, duplicates across classes, and every colour mode a photo collection holds.

The backbone is :func:`check_hostile_dataset`: one dataset mixing all the bad cases with good
images goes through ``load_images`` + ``decode_dataset`` + ``build_report`` as a folder, as a zip
and as a saved upload. Focused tests follow for what needs its own set-up. No TensorFlow here.
"""

from __future__ import annotations

import functools
import io
import os
import re
import stat
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import REPO, png_bytes, toy_image
from tl_core.config import DataConfig
from tl_core.data import build_report, decode_dataset, decode_image, load_images, split_dataset
from tl_core.datasets import MAX_NAME_BYTES, list_datasets, save_image_set
from tl_core.errors import ConfigError, DataError, ImageDecodeError
from tl_core.store import RunStore

LIMIT = DataConfig().max_pixels  # 40 MP
SIZE = 32  # decoded side in the end-to-end tests
GIB = 1024**3

RED, BLUE, GREEN, YELLOW = (220, 20, 20), (20, 20, 220), (20, 200, 20), (230, 220, 20)
WHITE = (255, 255, 255)


# ------------------------------------------------------------------ builders of hostile files


@functools.cache
def bilevel_png(width: int, height: int) -> bytes:
    """A complete, valid all-black PNG of any size, built from its rows without a Pillow image.

    12,000 x 16,000 (192 MP) is 23 KB on disk: the cheap way to an image over the pixel limit.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + 1 bit per pixel
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return _png(ihdr, zlib.compress(row * height, 6))


def png_declaring(width: int, height: int) -> bytes:
    """A decompression bomb's header: a tiny PNG whose IHDR declares ``width`` x ``height`` RGB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return _png(ihdr, zlib.compress(b"\x00" * 1024))


def _png(ihdr: bytes, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to declare ``width`` x ``height``."""
    data = bytearray(png_bytes(Image.new("RGB", (16, 16), (90, 90, 90)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def two_tone(left, right, size=(48, 32), mode="RGB") -> Image.Image:
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def quadrants(size=(64, 32)) -> np.ndarray:
    """Red, blue / green, yellow quadrants: each of the 8 EXIF orientations moves them differently."""
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[: h // 2, : w // 2], pixels[: h // 2, w // 2 :] = RED, BLUE
    pixels[h // 2 :, : w // 2], pixels[h // 2 :, w // 2 :] = GREEN, YELLOW
    return pixels


def with_exif_orientation(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return png_bytes(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif(first, second) -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), first), Image.new("RGB", (32, 32), second)]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def palette_png() -> bytes:
    image = Image.new("P", (48, 32), 0)
    image.putpalette([255, 128, 0, 128, 0, 255] + [0, 0, 0] * 254)
    image.paste(1, (24, 0, 48, 32))
    return png_bytes(image)


def sixteen_bit_gradient() -> bytes:
    values = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (32, 1))
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    return png_bytes(image)


def rgba_half_transparent() -> bytes:
    return png_bytes(two_tone((0, 0, 0, 0), (*BLUE, 255), mode="RGBA"))


@dataclass
class Member:
    """One zip member for :func:`make_zip`: bytes, or an already deflated stream of a known size."""

    name: str
    data: bytes = b""
    deflated: tuple[bytes, int, int] | None = None  # raw deflate stream, crc32, uncompressed size
    symlink: bool = False
    utf8_flag: bool = True


def make_zip(members: list[Member]) -> bytes:
    """A zip written field by field, so a test controls what zipfile would not let it write:
    one deflate stream reused for many members, symbolic links, names without the UTF-8 flag."""
    out, central = io.BytesIO(), []
    for m in members:
        name, is_folder = m.name.encode(), m.name.endswith("/")
        flags = 0x800 if m.utf8_flag and not m.name.isascii() else 0
        if m.deflated is not None:
            (raw, crc, size), method = m.deflated, 8
        elif m.symlink or is_folder:
            raw, crc, size, method = m.data, zlib.crc32(m.data), len(m.data), 0
        else:
            packer = zlib.compressobj(6, zlib.DEFLATED, -15)
            raw, method = packer.compress(m.data) + packer.flush(), 8
            crc, size = zlib.crc32(m.data), len(m.data)
        kind = stat.S_IFDIR | 0o755 if is_folder else stat.S_IFREG | 0o644
        kind = stat.S_IFLNK | 0o777 if m.symlink else kind
        # version, flags, method, time, date (1980-01-01), crc, sizes, name length, extra length
        common = (20, flags, method, 0, 0x21, crc, len(raw), size, len(name), 0)
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *common) + name + raw)
        # made by Unix, then common fields, comment length, disk, internal and external attributes, offset
        fields = (0x02014B50, 0x0314, *common, 0, 0, 0, kind << 16, offset)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", *fields) + name)
    directory, start = b"".join(central), out.tell()
    n = len(members)
    out.write(directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(directory), start, 0))
    return out.getvalue()


@functools.cache
def gigabyte_of_zeros() -> tuple[bytes, int, int]:
    """1 GiB of zeros as a ~1 MB raw deflate stream, built from one 16 MiB piece repeated.

    After a full flush the compressor starts afresh, so the piece's bytes are the same every
    time: 64 copies and the final empty block make a valid stream of exactly 1 GiB.
    """
    chunk = bytes(16 * 1024**2)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(GIB // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    return piece * (GIB // len(chunk)) + packer.flush(), crc, GIB


# ------------------------------------------------------------------ the hostile dataset


def _at(fy: float, fx: float, rgb, tol: int = 40):
    return (fy, fx, rgb, tol)


def good_images() -> dict[str, tuple[bytes, list]]:
    """Usable files in every colour mode, with the colours their decoded pixels must show.

    Each check is ``(row fraction, column fraction, rgb, tolerance)`` in the displayed picture.
    """
    rng = np.random.default_rng(7)
    gradient_checks = [
        _at(0.5, 0.02, (0, 0, 0), 12),
        _at(0.5, 0.5, (128, 128, 128), 20),
        _at(0.5, 0.98, WHITE, 12),
    ]
    return {
        "cats 🐱/rgb.png": (png_bytes(two_tone(RED, BLUE)), [_at(0.5, 0.2, RED, 2), _at(0.5, 0.8, BLUE, 2)]),
        # Stored 64 x 32 with orientation 6 (rotate 90 clockwise): displayed upright, 32 x 64.
        "cats 🐱/exif_rotated.jpg": (
            with_exif_orientation(quadrants(), 6),
            [_at(0.1, 0.9, RED), _at(0.9, 0.9, BLUE), _at(0.1, 0.1, GREEN), _at(0.9, 0.1, YELLOW)],
        ),
        "cats 🐱/cmyk_cyan.jpg": (
            png_bytes(Image.new("CMYK", (32, 32), (255, 0, 0, 0)), "JPEG"),
            [_at(0.5, 0.5, (0, 255, 255), 30)],
        ),
        "cats 🐱/animated.gif": (animated_gif(GREEN, (200, 0, 200)), [_at(0.5, 0.5, GREEN, 30)]),
        "cats 🐱/bilevel.png": (
            png_bytes(two_tone(0, 1, mode="1")),
            [_at(0.5, 0.2, (0, 0, 0), 0), _at(0.5, 0.8, WHITE, 0)],
        ),
        "café crème/gray.png": (png_bytes(Image.new("L", (32, 32), 77)), [_at(0.5, 0.5, (77, 77, 77), 0)]),
        "café crème/sixteen_bit.png": (sixteen_bit_gradient(), gradient_checks),
        "café crème/palette.png": (
            palette_png(),
            [_at(0.5, 0.2, (255, 128, 0), 0), _at(0.5, 0.8, (128, 0, 255), 0)],
        ),
        "café crème/rgba.png": (rgba_half_transparent(), [_at(0.5, 0.2, WHITE, 0), _at(0.5, 0.8, BLUE, 0)]),
        "café crème/gray_alpha.png": (
            png_bytes(two_tone((0, 0), (60, 255), mode="LA")),
            [_at(0.5, 0.2, WHITE, 0), _at(0.5, 0.8, (60, 60, 60), 0)],
        ),
        **{f"dogs/dog_{i}.png": (png_bytes(toy_image((200, 200, 40), rng)), []) for i in range(3)},
        # Byte for byte the cat above, labelled dog: flagged, it would leak between train and test.
        "dogs/looks_like_a_cat.png": (png_bytes(two_tone(RED, BLUE)), [_at(0.5, 0.2, RED, 2)]),
        "lonely/only.png": (png_bytes(toy_image((10, 200, 200), rng)), []),
    }


def bad_images() -> dict[str, tuple[bytes, str]]:
    """Files in image clothing that must be skipped at decoding, with the reason they must get."""
    whole_jpeg = png_bytes(toy_image((1, 2, 3), np.random.default_rng(0), 64), "JPEG", quality=90)
    return {
        "dogs/truncated.jpg": (
            whole_jpeg[: len(whole_jpeg) // 2],
            r"could not decode: image file is truncated",
        ),
        "dogs/actually_text.jpg": (
            b"<html><body>404 Not Found</body></html>\n",
            r"not a readable image: the file holds text.*<html>",
        ),
        "dogs/zero_bytes.png": (b"", r"^empty file \(0 bytes\)$"),
        "dogs/huge_12000x16000.png": (
            bilevel_png(12_000, 16_000),
            r"declares 192\.0 MP, over the 40 MP limit; refused before decoding",
        ),
        "dogs/big_9000x9000.png": (
            bilevel_png(9_000, 9_000),
            r"^9000 x 9000 px \(81\.0 MP\) is over the 40 MP limit; refused before decoding",
        ),
        "dogs/bomb_100000x100000.png": (
            png_declaring(100_000, 100_000),
            r"decompression bomb: the file declares 10,000\.0 MP, over the 40 MP limit",
        ),
        "dogs/bomb_65000x65000.jpg": (
            jpeg_declaring(65_000, 65_000),
            r"decompression bomb: the file declares 4,225\.0 MP, over the 40 MP limit",
        ),
    }


# Files that are never images, ignored when the set is read, whatever its container.
JUNK = {
    "notes/readme.txt": (b"class notes", r"^not an image file type \(\.txt\)$"),
    "cats 🐱/.DS_Store": (b"\x00\x00\x00\x01Bud1", r"^hidden or system file$"),
    "dogs/more_dogs.zip": (b"PK\x03\x04 a zip in the zip", r"^nested archive \(not opened\)$"),
}
CLASS_FOLDER_REASONS = {
    "empty class/": r"^empty class folder: class 'empty class' has no images and is left out$",
    "notes/": r"^no image among its 1 file\(s\): class 'notes' has no images and is left out$",
}


def check_hostile_dataset(
    source, good: dict[str, list], expected_ignored: dict[str, str], cache_dir: Path | None = None
):
    """Load, decode and report ``source``; every bad file has its reason, every good one decodes.

    Args:
        source: what ``load_images`` reads.
        good: the usable files' names and their colour checks (see :func:`good_images`).
        expected_ignored: files ignored when read, and a pattern their reason must match.
        cache_dir: the decoded-pixels cache, when the test uses one.

    Returns:
        The image set, the decoded set and the report, for further checks.
    """
    bad = bad_images()
    image_set = load_images(source)
    # Stretched: the colour probes are fractions of each picture, which padding would move into its margins.
    decoded = decode_dataset(image_set, SIZE, DataConfig(resize="stretch"), cache_dir=cache_dir)
    report = build_report(image_set, decoded)

    listed = {entry["file"]: entry["reason"] for entry in report["skipped"] + report["ignored"]}
    expected = {**{name: reason for name, (_, reason) in bad.items()}, **expected_ignored}
    for name, pattern in expected.items():
        assert name in listed, f"{name} is not listed; listed: {sorted(listed)}"
        assert re.search(pattern, listed[name]), f"{name}: {listed[name]!r} does not match {pattern!r}"
    assert set(listed) == set(expected), "only the bad files are listed"

    # The rest goes on: every good image is decoded, in the right class, with the right colours.
    assert sorted(decoded.names) == sorted(good)
    assert decoded.x.shape == (len(good), SIZE, SIZE, 3) and decoded.x.dtype == np.uint8
    assert decoded.class_names == ["café crème", "cats 🐱", "dogs", "lonely"]
    assert report["per_class"] == dict(sorted(Counter(name.split("/")[0] for name in good).items()))
    for name, checks in good.items():
        pixels = decoded.x[decoded.names.index(name)].astype(int)
        for fy, fx, rgb, tol in checks:
            got = pixels[int(fy * (SIZE - 1)), int(fx * (SIZE - 1))]
            assert np.abs(got - rgb).max() <= tol, f"{name} at ({fy}, {fx}): {got.tolist()}, expected {rgb}"

    # Class-level problems are warnings that name the class, before any split is tried.
    assert report["empty_classes"] == ["empty class", "notes"]
    warnings = "\n".join(report["warnings"])
    assert "Class folder(s) without images, left out: 'empty class', 'notes'" in warnings
    assert "'lonely' has 1; a train/validation/test split needs at least 3 per class" in warnings
    assert "different labels (e.g. cats 🐱/rgb.png, dogs/looks_like_a_cat.png)" in warnings
    assert "leak from training into the test set" in warnings
    [duplicate] = report["duplicates"]
    assert duplicate["cross_class"] and duplicate["classes"] == ["cats 🐱", "dogs"]
    with pytest.raises(
        DataError, match=r"Class 'lonely' has 1 distinct usable image\(s\).*at least 3.*Add images or merge"
    ):
        split_dataset(decoded)
    return image_set, decoded, report


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def hostile_files() -> dict[str, bytes]:
    files = {name: data for name, (data, _) in good_images().items()}
    files.update({name: data for name, (data, _) in bad_images().items()})
    files.update({name: data for name, (data, _) in JUNK.items()})
    return files


def test_a_folder_with_every_bad_case_lists_each_and_keeps_the_rest(tmp_path):
    root = write_tree(tmp_path / "photos", hostile_files())
    (root / "empty class").mkdir()
    write_tree(root / "__MACOSX" / "cats 🐱", {"._rgb.png": b"\x00\x05\x16\x07 resource fork"})
    write_tree(tmp_path / "elsewhere", {"x.png": png_bytes(Image.new("RGB", (8, 8)))})
    (root / "linked class").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "dogs" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(root / "dogs" / "pipe.png")  # reading it would block forever
    expected_ignored = {
        **{name: reason for name, (_, reason) in JUNK.items()},
        **CLASS_FOLDER_REASONS,
        "__MACOSX/": r"^hidden or system folder$",
        "linked class/": r"^symbolic link to a folder, not followed$",
        "dogs/dangling.png": r"^broken symbolic link$",
        "dogs/pipe.png": r"^not a regular file",
    }
    good = {name: checks for name, (_, checks) in good_images().items()}
    # The decoded-pixels cache keys on file stats: broken links and pipes must not break it.
    check_hostile_dataset(root, good, expected_ignored, cache_dir=tmp_path / "cache")


LONG_ASCII = "dogs/" + "d" * 296 + ".png"  # a 300-character file name
LONG_EMOJI = "cats 🐱/" + "🐱" * 80 + ".png"  # 84 characters, 324 bytes: over Linux's 255
NO_UTF8_FLAG = "café crème/sans drapeau é.png"


def hostile_zip() -> tuple[bytes, dict[str, list], dict[str, str]]:
    """The hostile set as a zip under one wrapping folder, plus what only a zip can hold.

    Returns the zip, its usable files with their colour checks, and the reasons expected for
    what is ignored when it is read.
    """
    root = "My Photos 📷/"
    rng = np.random.default_rng(11)
    members = [Member(root + name, data) for name, data in hostile_files().items()]
    members += [
        Member(root),
        Member(root + "empty class/"),
        Member("__MACOSX/" + root + "cats 🐱/._rgb.png", b"\x00\x05\x16\x07"),
        Member("../evil.png", png_bytes(toy_image((0, 0, 0), rng))),
        Member("..\\evil_windows.png", png_bytes(toy_image((0, 0, 0), rng))),
        Member("/etc/evil.png", png_bytes(toy_image((0, 0, 0), rng))),
        Member("C:/Users/evil.png", png_bytes(toy_image((0, 0, 0), rng))),
        Member(root + "dogs/passwd.png", b"/etc/passwd", symlink=True),
        Member(root + "dogs/zeros.bmp", deflated=gigabyte_of_zeros()),  # 1 GiB of zeros in ~1 MB
    ]
    # Extra good images only a zip (or an upload) can carry: names over Linux's limit, and a UTF-8
    # name stored without the zip's UTF-8 flag (as some Windows tools write them).
    extra_good = {LONG_ASCII: BLUE, LONG_EMOJI: GREEN, NO_UTF8_FLAG: YELLOW}
    for name, colour in extra_good.items():
        members.append(
            Member(root + name, png_bytes(Image.new("RGB", (40, 40), colour)), utf8_flag=name != NO_UTF8_FLAG)
        )
    good = {name: checks for name, (_, checks) in good_images().items()}
    good.update({name: [_at(0.5, 0.5, colour, 0)] for name, colour in extra_good.items()})
    ignored = {
        **{name: reason for name, (_, reason) in JUNK.items()},
        **CLASS_FOLDER_REASONS,
        "__MACOSX/My Photos 📷/cats 🐱/._rgb.png": r"^hidden or system file$",
        "../evil.png": r"^unsafe path \(absolute or '\.\.'\), not extracted$",
        "../evil_windows.png": r"^unsafe path",
        "/etc/evil.png": r"^unsafe path",
        "C:/Users/evil.png": r"^unsafe path",
        "dogs/passwd.png": r"^symbolic link, not followed$",
        "dogs/zeros.bmp": (
            r"^expands 1,0\d\d times \([\d,.]+ KB to 1\.0 GB\), over the 100x limit: looks like a zip bomb, "
            "not extracted"
        ),
    }
    return make_zip(members), good, ignored


def test_a_zip_with_every_bad_case_lists_each_and_keeps_the_rest(monkeypatch):
    archive, good, expected_ignored = hostile_zip()
    assert len(archive) < 3 * 1024**2  # holds a 1 GiB member, yet it is never expanded
    extracted = []
    real_open = zipfile.ZipFile.open

    def recording_open(self, member, *args, **kwargs):
        extracted.append(member.filename)
        return real_open(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    image_set, _, report = check_hostile_dataset(archive, good, expected_ignored)
    assert not [
        name
        for name in extracted
        if name.endswith(("zeros.bmp", "evil.png", "evil_windows.png", "passwd.png"))
    ]
    assert report["per_class"] == {"café crème": 6, "cats 🐱": 6, "dogs": 5, "lonely": 1}
    assert image_set.source == "the uploaded zip"


def test_a_saved_hostile_upload_loads_back_with_the_same_classes_and_reasons(tmp_path):
    archive, good, expected_ignored = hostile_zip()
    store = RunStore(tmp_path / "data")
    from_zip = load_images(archive)
    folder = save_image_set(store, from_zip, "hostile 🐱")

    assert list_datasets(store)[0]["name"] == "hostile 🐱"
    assert all(len(path.name.encode()) <= MAX_NAME_BYTES for path in folder.rglob("*"))
    # Names over Linux's 255-byte limit are cut to MAX_NAME_BYTES, whole characters, extension kept.
    saved_names = {
        LONG_ASCII: "dogs/" + "d" * (MAX_NAME_BYTES - 4) + ".png",
        LONG_EMOJI: "cats 🐱/" + "🐱" * ((MAX_NAME_BYTES - 4) // 4) + ".png",
    }
    saved_good = {saved_names.get(name, name): checks for name, checks in good.items()}
    # What the upload ignored (unsafe paths, the zip bomb member...) is still reported by name.
    _, decoded, report = check_hostile_dataset(folder, saved_good, expected_ignored)
    assert report["per_class"] == {"café crème": 6, "cats 🐱": 6, "dogs": 5, "lonely": 1}
    assert sorted(decoded.hashes) == sorted(decode_dataset(from_zip, None).hashes)  # same bytes


def test_uploads_with_emoji_accents_and_300_character_names_are_saved_and_read_back(tmp_path):
    rng = np.random.default_rng(3)
    long_names = [
        "🐱" * 100 + ".png",
        "é" * 300 + ".jpeg",
        "x" * 296 + ".png",
        "x" * 296 + ".png",
        "名前" * 150 + ".webp",
    ]
    labels = ["cats 🐱", "café crème", "dogs with spaces", "dogs with spaces", "日本語 クラス"]
    formats = {".png": "PNG", ".jpeg": "JPEG", ".webp": "WEBP"}
    files = [
        (name, png_bytes(toy_image((200, 40, 40), rng), formats[Path(name).suffix]), label)
        for name, label in zip(long_names, labels)
    ]
    files += [
        (f"short_{i}.png", png_bytes(toy_image((40, 40, 200), rng)), label) for i, label in enumerate(labels)
    ]
    # Two labels that only differ after the cut must stay two classes.
    long_labels = ["🐕" * 100, "🐕" * 100 + "!"]
    files += [
        (f"dog_{i}.png", png_bytes(toy_image((40, 200, 40), rng)), label)
        for i, label in enumerate(long_labels)
    ]
    uploaded = load_images(files)
    assert len(uploaded.items) == len(files)

    folder = save_image_set(RunStore(tmp_path / "data"), uploaded, "names")
    saved = load_images(folder)
    assert len(saved.items) == len(files)  # nothing merged or lost, the clashing name got a number
    names = [PurePosixPath(item.name).name for item in saved.items]
    assert all(len(name.encode()) <= MAX_NAME_BYTES for name in names)
    assert sorted(Path(name).suffix for name in names) == sorted(Path(name).suffix for name, _, _ in files)
    assert set(saved.class_names) >= set(labels)  # spaces, accents, emoji and CJK kept as they are
    assert len(saved.class_names) == len(set(labels)) + 2
    assert sorted(item.read_bytes() for item in saved.items) == sorted(data for _, data, _ in files)


_SAVE_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from tl_core.data import load_images
from tl_core.datasets import save_image_set
from tl_core.errors import DataError
from tl_core.store import RunStore
store = RunStore(sys.argv[1])  # opened before the limit: only the dataset's files meet it
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))
try:
    save_image_set(store, load_images(sys.argv[2]), "half")
except DataError as err:
    print(err)
"""


def test_a_failed_save_leaves_no_half_dataset(tmp_path):
    # A real refused write: the OS's file-size limit, in a child process, stops the save midway.
    rng = np.random.default_rng(4)
    source = tmp_path / "source"
    for i in range(6):
        (source / f"class {i % 2}").mkdir(parents=True, exist_ok=True)
        small = Image.new("RGB", (8, 8), (9, 9, 9))
        big = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))  # over 1,500 bytes as PNG
        (small if i < 3 else big).save(source / f"class {i % 2}" / f"{i}.png")
    store = RunStore(tmp_path / "data")
    out = subprocess.run(
        [sys.executable, "-c", _SAVE_UNDER_A_FILE_SIZE_LIMIT, str(store.data_dir), str(source)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert re.search(r"Could not save the dataset .*\(File too large\); nothing was kept", out.stdout), out
    assert list_datasets(store) == []
    assert list((tmp_path / "data" / "datasets").iterdir()) == []  # no partial folder either
    assert len(load_images(save_image_set(store, load_images(source), "whole")).items) == 6


def test_a_stale_partial_folder_of_a_killed_save_is_cleaned_up(tmp_path, toy_folder):
    store = RunStore(tmp_path / "data")
    stale = tmp_path / "data" / "datasets" / ".partial-killed"
    (stale / "red").mkdir(parents=True)
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    fresh = tmp_path / "data" / "datasets" / ".partial-in-progress"  # another process saving right now
    fresh.mkdir()
    save_image_set(store, load_images(toy_folder), "next")
    assert not stale.exists() and fresh.exists()


# ------------------------------------------------------------------ pixel limit and bombs


@pytest.fixture()
def no_pixel_decoding(monkeypatch):
    """Fails the test if any image's pixels are decoded."""

    def load(self):
        raise AssertionError(f"{self.size} pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_the_cheap_png_builder_makes_real_images():
    image, info = decode_image(bilevel_png(40, 30), LIMIT)
    assert info == {"width": 40, "height": 30, "mode": "1", "format": "PNG"}
    assert np.asarray(image).max() == 0


def test_images_over_the_pixel_limit_are_refused_from_their_header(no_pixel_decoding):
    huge = bilevel_png(12_000, 16_000)
    assert len(huge) < 64 * 1024  # 192 MP, 23 KB on disk
    with pytest.raises(
        ImageDecodeError, match=r"declares 192\.0 MP, over the 40 MP limit; refused before decoding"
    ):
        decode_image(huge, LIMIT)
    with pytest.raises(
        ImageDecodeError, match=r"^9000 x 9000 px \(81\.0 MP\) is over the 40 MP limit; refused"
    ):
        decode_image(bilevel_png(9_000, 9_000), LIMIT)
    # Raising our limit does not lift Pillow's own guard (~179 MP); the reason says which limit.
    with pytest.raises(ImageDecodeError, match=r"declares 192\.0 MP, over Pillow's 179 MP safety limit"):
        decode_image(huge, 500_000_000)


@pytest.mark.parametrize(
    "data, declared",
    [(png_declaring(100_000, 100_000), r"10,000\.0 MP"), (jpeg_declaring(65_000, 65_000), r"4,225\.0 MP")],
    ids=["png", "jpeg"],
)
def test_a_decompression_bomb_is_refused_from_its_header(no_pixel_decoding, data, declared):
    assert len(data) < 2048
    with pytest.raises(
        ImageDecodeError, match=rf"^decompression bomb: the file declares {declared}, over the 40 MP limit"
    ):
        decode_image(data, LIMIT)


# ------------------------------------------------------------------ zip archives


def test_a_real_zip_bomb_is_refused_before_anything_is_extracted(monkeypatch):
    rng = np.random.default_rng(5)
    members = [Member(f"bomb/{i}.bmp", deflated=gigabyte_of_zeros()) for i in range(10)]
    members += [
        Member(f"{label}/{i}.png", png_bytes(toy_image((9, 9, 9), rng))) for label in "ab" for i in range(3)
    ]
    bomb = make_zip(members)
    assert len(bomb) < 11 * 1024**2
    # It is a real bomb: each member streams out zeros, 1 GiB of them from ~1 MB.
    with zipfile.ZipFile(io.BytesIO(bomb)) as archive, archive.open("bomb/3.bmp") as member:
        assert member.read(16 * 1024**2) == bytes(16 * 1024**2)

    def no_extraction(*args, **kwargs):
        raise AssertionError("a member was extracted")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_extraction)
    with pytest.raises(
        DataError,
        match=r"would expand to 10\.0 GB \([\d.]+ MB compressed\); at most 8\.0 GB is accepted, "
        "so nothing was extracted",
    ):
        load_images(bomb)


def test_zip_limits_are_settings_checked_before_extracting():
    rng = np.random.default_rng(6)
    members = [
        Member(f"{label}/{i}.png", png_bytes(toy_image((9, 9, 9), rng))) for label in "ab" for i in range(5)
    ]
    # Under 1 MiB, a member may compress a lot: a blank picture is no bomb.
    blank = png_bytes(Image.new("RGB", (400, 400), WHITE), "BMP")
    assert len(blank) < 1024**2 and len(blank) / len(zlib.compress(blank)) > 100
    members.append(Member("a/blank.bmp", blank))
    members.append(Member("b/zeros.bmp", bytes(2 * 1024**2)))  # 2 MiB that expands ~1000 times
    archive = make_zip(members)

    image_set = load_images(archive)
    assert len(image_set.items) == 11
    reason = {entry["file"]: entry["reason"] for entry in image_set.ignored}["b/zeros.bmp"]
    assert re.match(
        r"expands [\d,]+ times \([\d.,]+ KB to 2\.0 MB\), over the 100x limit: looks like a zip bomb", reason
    )
    with pytest.raises(DataError, match=r"has 12 files; at most 10 are accepted"):
        load_images(archive, DataConfig(max_zip_entries=10))
    with pytest.raises(DataError, match=r"would expand to 2\.\d MB .*; at most 1\.0 MB is accepted"):
        load_images(archive, DataConfig(max_zip_bytes=1024**2))
    lax = load_images(archive, DataConfig(max_zip_ratio=10_000))  # read, then refused as an image
    skipped = {entry["file"]: entry["reason"] for entry in decode_dataset(lax, None).skipped}
    assert skipped == {"b/zeros.bmp": "not a readable image (unknown or corrupt format)"}
    with pytest.raises(ConfigError, match="max_zip_ratio is 0"):
        DataConfig(max_zip_ratio=0).validate()


def _damaged_directory(archive: bytes) -> bytes:
    return archive.replace(b"PK\x01\x02", b"XX\x01\x02")  # the end record still says "zip"


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda good: b"just some text, not a zip",
            r"^the uploaded zip is not a zip archive\. Upload a \.zip",
        ),
        (lambda good: good[: len(good) // 2], r"^the uploaded zip is not a zip archive"),
        (lambda good: png_bytes(Image.new("RGB", (8, 8))), r"^the uploaded zip is not a zip archive"),
        (
            _damaged_directory,
            r"^the uploaded zip is a damaged zip archive \(.*\)\. Zip the class folders again\.",
        ),
    ],
    ids=["text", "truncated", "an image", "damaged directory"],
)
def test_a_zip_that_is_not_a_zip_is_a_clear_error(make, message):
    rng = np.random.default_rng(8)
    good = make_zip(
        [Member(f"{label}/{i}.png", png_bytes(toy_image((9, 9, 9), rng))) for label in "ab" for i in range(3)]
    )
    assert len(load_images(good).items) == 6
    with pytest.raises(DataError, match=message):
        load_images(make(good))


# ------------------------------------------------------------------ classes


def test_a_single_class_is_refused_with_a_clear_message(tmp_path):
    rng = np.random.default_rng(9)
    root = write_tree(
        tmp_path / "set", {f"only cats/{i}.png": png_bytes(toy_image((9, 9, 9), rng)) for i in range(4)}
    )
    (root / "dogs").mkdir()  # the other class is an empty folder
    image_set = load_images(root)
    decoded = decode_dataset(image_set, SIZE)
    warnings = build_report(image_set, decoded)["warnings"]
    assert (
        "Only 1 class has usable images ('only cats'); a classifier needs at least 2. Add a folder"
        in warnings[0]
    )
    assert "Class folder(s) without images, left out: 'dogs'. Add images to them or remove them." in warnings
    with pytest.raises(DataError, match=r"Found 1 class \(only cats\); a classifier needs at least 2"):
        split_dataset(decoded)


def test_only_empty_class_folders_is_an_error_naming_them(tmp_path):
    (tmp_path / "set" / "cats").mkdir(parents=True)
    write_tree(tmp_path / "set", {"dogs/notes.txt": b"todo: photos"})
    with pytest.raises(
        DataError,
        match=r"No images found .*\(3 other files or folders ignored\)\. "
        "Class folders without images: 'cats', 'dogs'\\.",
    ):
        load_images(tmp_path / "set")


# ------------------------------------------------------------------ colour modes and orientation


@pytest.mark.parametrize("name", [name for name, (_, checks) in good_images().items() if checks])
def test_every_colour_mode_decodes_to_the_right_rgb(name):
    data, checks = good_images()[name]
    image, _ = decode_image(data, LIMIT)
    pixels = np.asarray(image).astype(int)
    assert image.mode == "RGB"
    height, width = pixels.shape[:2]
    for fy, fx, rgb, tol in checks:
        got = pixels[int(fy * (height - 1)), int(fx * (width - 1))]
        assert np.abs(got - rgb).max() <= tol, f"at ({fy}, {fx}): {got.tolist()}, expected {rgb}"


# How a viewer shows stored pixels for each EXIF orientation (the EXIF 2.3 table), in numpy terms.
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(DISPLAYED))
def test_exif_orientation_puts_every_corner_in_its_place(orientation):
    stored = quadrants((64, 32))
    expected = DISPLAYED[orientation](stored)
    image, info = decode_image(with_exif_orientation(stored, orientation), LIMIT)
    pixels = np.asarray(image).astype(int)
    assert (info["width"], info["height"]) == (64, 32)
    assert pixels.shape == expected.shape
    height, width = expected.shape[:2]
    for y in (height // 4, 3 * height // 4):
        for x in (width // 4, 3 * width // 4):
            got, want = pixels[y, x].tolist(), expected[y, x].tolist()
            assert np.abs(np.subtract(got, want)).max() <= 30, f"at ({y}, {x}): {got}, expected {want}"
