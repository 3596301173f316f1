"""Zip limits that hold for many small members, and safe names for what an upload is called.

Every zip is written here at test time with :mod:`zipfile`, as a user's tool would write it; the
two real datasets of ../shared are zipped the same way to show that real images still pass.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import CLIPART8, FASHION, needs_clipart8, needs_fashion, png_bytes, toy_image
from tl_core.config import DataConfig
from tl_core.data import load_images
from tl_core.datasets import MAX_NAME_BYTES, dataset_name, datasets_dir, list_datasets, save_image_set
from tl_core.errors import ConfigError, DataError

MIB = 1024**2


def deflated_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_of_folder(folder: Path) -> bytes:
    return deflated_zip({path.relative_to(folder.parent).as_posix(): path.read_bytes()
                         for path in sorted(folder.rglob("*")) if path.is_file()})


@pytest.fixture(scope="module")
def small_member_bomb() -> bytes:
    """The issue's bomb: 780 members of 1 MiB of zeros named as images, ~870 KB zipped."""
    zeros = bytes(MIB)
    return deflated_zip({f"class_{i % 2}/{i:03d}.png": zeros for i in range(780)})


def no_extraction(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a member was extracted")

    monkeypatch.setattr(zipfile.ZipFile, "open", refuse)


def test_many_small_members_of_zeros_are_refused_before_extraction_and_nothing_is_saved(
    small_member_bomb, store, monkeypatch
):
    assert len(small_member_bomb) < 1024**2  # every member is under the per-member ratio's 1 MiB
    no_extraction(monkeypatch)
    # An upload: at most 4 times the zip's own size, not 4 times the upload limit.
    with pytest.raises(DataError, match=r"^the uploaded zip expands to 780\.0 MB from [\d.]+ KB \([\d,.]+x\); "
                                        r"the limit is 4x the upload, so nothing was extracted\."):
        load_images(small_member_bomb, DataConfig.for_uploads())
    # A zip on one's own disk has no such cap, yet the whole archive's ratio gives it away.
    with pytest.raises(DataError, match=r"images expand [\d,]+ times together \([\d.]+ KB to 780\.0 MB\), "
                                        r"over the 100x limit, so nothing was extracted"):
        load_images(small_member_bomb)
    assert not datasets_dir(store).exists()


def test_an_upload_without_one_readable_image_is_not_saved(store):
    rng = np.random.default_rng(1)
    # Under every zip limit (noise does not compress), but not one file is an image.
    junk = deflated_zip({f"{label}/{i}.png": rng.bytes(64 * 1024) for label in "ab" for i in range(3)})
    image_set = load_images(junk, DataConfig.for_uploads())
    assert len(image_set.items) == 6
    with pytest.raises(DataError, match=r"^None of the 6 image file\(s\) in the uploaded zip can be opened as an "
                                        r"image \(e\.g\. 'a/0\.png': not a readable image.*\); nothing was saved\."):
        save_image_set(store, image_set, "junk", workspace="w" * 22)
    assert not datasets_dir(store).exists() and list_datasets(store) == []


def test_the_expansion_cap_is_a_setting(monkeypatch):
    rng = np.random.default_rng(2)
    # Blank-ish BMPs of a real dataset compress ~10 times: over 4x, under the 100x bomb ratio.
    bmp = {f"{label}/{i}.bmp": png_bytes(toy_image((200, 200, 200), rng, size=300).point(lambda v: v // 64 * 64), "BMP")
           for label in "ab" for i in range(3)}
    archive = deflated_zip(bmp)
    with pytest.raises(DataError, match=r"the limit is 4x the upload.*re-save uncompressed ones \(BMP, TIFF\) as PNG"):
        load_images(archive, DataConfig.for_uploads())
    monkeypatch.setenv("TL_MAX_ZIP_EXPANSION", "50")
    assert len(load_images(archive, DataConfig.for_uploads()).items) == 6
    monkeypatch.setenv("TL_MAX_ZIP_EXPANSION", "0")  # lifted
    assert DataConfig.for_uploads().max_zip_expansion is None
    monkeypatch.setenv("TL_MAX_ZIP_EXPANSION", "four")
    with pytest.raises(ConfigError, match=r"^TL_MAX_ZIP_EXPANSION is 'four'; it must be a number of 0 or more"):
        DataConfig.for_uploads()


@needs_clipart8
def test_a_zip_of_the_real_clipart8_passes_and_is_saved(store):
    archive = zip_of_folder(CLIPART8)
    image_set = load_images(archive, DataConfig.for_uploads())
    assert len(image_set.items) == sum(1 for p in CLIPART8.rglob("*.png"))
    folder = save_image_set(store, image_set, "clipart8", workspace="w" * 22)  # within the hosted disk quota
    assert len(load_images(folder).items) == len(image_set.items)


@needs_fashion
def test_a_zip_of_the_real_fashion_mnist_passes():
    archive = zip_of_folder(FASHION)
    assert len(load_images(archive, DataConfig.for_uploads()).items) == 2000


HOSTILE_ZIP_NAME = ("![px](https&#58;&#47;&#47;evil.example&#47;t.png) [Verify](https://evil.example/login)"
                    "<img src=x onerror=alert(1)>\n..\\..\\etc\u202egpj.zip")


def test_the_zip_file_name_becomes_a_safe_dataset_name(store, toy_folder):
    name = dataset_name(HOSTILE_ZIP_NAME)
    assert not set('/\\:*?"<>|\n\u202e') & set(name)
    assert "&#58;" in name and "evil.example" in name and not name.endswith(".zip")  # text kept, made safe
    assert dataset_name("..zip") == "Uploaded zip" and dataset_name("Cats & Dogs.ZIP") == "Cats & Dogs"
    assert len(dataset_name("🐱" * 300 + ".zip").encode()) <= MAX_NAME_BYTES
    save_image_set(store, load_images(toy_folder), HOSTILE_ZIP_NAME.removesuffix(".zip"))  # the engine too
    assert list_datasets(store)[0]["name"] == name
