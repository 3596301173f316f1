"""Ingestion, careful decoding, the health report and the stratified split."""

from __future__ import annotations

import io
import os
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TOY_COLORS, make_toy_folder, png_bytes, toy_image, zip_folder
from tl_core.data import decode as data_module  # where _decode_one lives
from tl_core.config import DataConfig
from tl_core.data import (
    Rows,
    decode_dataset,
    decode_image,
    inspect_dataset,
    load_images,
    make_batches,
    prepare_image,
    split_dataset,
    take_rows,
)
from tl_core.errors import DataError, ImageDecodeError
from tl_core.progress import NullProgress

LIMIT = 40_000_000


# ------------------------------------------------------------------ sources


def test_folder_gives_one_class_per_subfolder(toy_folder):
    image_set = load_images(toy_folder)
    assert image_set.class_names == sorted(TOY_COLORS)
    assert len(image_set.items) == 3 * 14
    assert all(item.name.startswith(item.label + "/") for item in image_set.items)


def test_zip_with_single_root_folder_and_junk_is_read(toy_folder):
    archive = zip_folder(
        toy_folder,
        prefix="my_photos/",
        extra={
            "__MACOSX/my_photos/red/._red_000.png": b"junk",
            "my_photos/red/.DS_Store": b"junk",
            "my_photos/red/notes.txt": b"hello",
            "my_photos/README.md": b"# readme",
        },
    )
    image_set = load_images(archive)
    assert image_set.class_names == sorted(TOY_COLORS)
    assert len(image_set.items) == 42
    reasons = {entry["file"]: entry["reason"] for entry in image_set.ignored}
    assert reasons["red/notes.txt"].startswith("not an image file type (.txt)")
    assert reasons["red/.DS_Store"] == "hidden or system file"
    assert reasons["README.md"] == "not inside a class folder"
    assert any("__MACOSX" in name for name in reasons)


def test_zip_unsafe_entries_are_ignored_not_extracted(tmp_path):
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label in ("a", "b"):
            for i in range(3):
                archive.writestr(f"{label}/{i}.png", png_bytes(toy_image((200, 0, 0), rng)))
        archive.writestr("../evil/x.png", png_bytes(toy_image((0, 0, 0), rng)))
        archive.writestr("a/inner.zip", b"PK\x03\x04")
    image_set = load_images(buffer.getvalue())
    assert len(image_set.items) == 6
    reasons = {entry["file"]: entry["reason"] for entry in image_set.ignored}
    assert "unsafe path" in reasons["../evil/x.png"]
    assert reasons["a/inner.zip"] == "nested archive (not opened)"
    assert not (tmp_path.parent / "evil").exists()


def test_not_a_zip_is_a_clear_error(tmp_path):
    fake = tmp_path / "data.zip"
    fake.write_bytes(b"this is not a zip")
    with pytest.raises(DataError, match="not a zip archive"):
        load_images(fake)


def test_missing_path_and_empty_folder_errors(tmp_path):
    with pytest.raises(DataError, match="No folder or zip file"):
        load_images(tmp_path / "nowhere")
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="No images found"):
        load_images(tmp_path / "empty")


def test_uploads_use_the_given_labels():
    rng = np.random.default_rng(2)
    files = [(f"IMG_{i}.png", png_bytes(toy_image((0, 200, 0), rng)), "plant") for i in range(3)]
    files += [("notes.txt", b"x", "plant"), ("c:\\photos\\dog.png", png_bytes(toy_image((9, 9, 9), rng)), "dog")]
    image_set = load_images(files)
    assert sorted(item.name for item in image_set.items) == ["dog/dog.png", "plant/IMG_0.png", "plant/IMG_1.png", "plant/IMG_2.png"]
    assert image_set.ignored[0]["file"] == "plant/notes.txt"


# ------------------------------------------------------------------ decoding


def test_exif_orientation_is_applied():
    # A 60 x 20 image whose left third is red, stored with orientation 6 (rotate 90 clockwise).
    pixels = np.zeros((20, 60, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = png_bytes(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)
    image, info = decode_image(data, LIMIT)
    assert (info["width"], info["height"]) == (60, 20)
    assert image.size == (20, 60)
    top = np.asarray(image)[:15].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 60  # the red third is now at the top


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(mode):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    if mode == "LA":
        image = rgba.convert("LA")
    elif mode == "P":
        image = rgba.convert("P")
        image.info["transparency"] = image.getpixel((5, 5))
    else:
        image = rgba
    decoded, _ = decode_image(png_bytes(image), LIMIT)
    pixels = np.asarray(decoded)
    assert decoded.mode == "RGB"
    assert pixels[5, 5].tolist() == [255, 255, 255]
    assert pixels[0, 0].tolist() != [255, 255, 255]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "RGB", "CMYK"])
def test_model_pixels_equal_resizing_the_finished_picture(mode):
    """Training resizes before compositing on white (or turning gray into RGB): a fraction of the
    work, and the pixels of resizing the finished picture, to rounding."""
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (90, 130, 4), dtype=np.uint8), "RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, 40, 90))  # a fully transparent band: white in the model's input
    if mode == "P":
        image = rgba.convert("RGB").quantize(64)
        image.info["transparency"] = image.getpixel((5, 5))
    else:
        image = rgba if mode == "RGBA" else rgba.convert(mode)
    data = png_bytes(image, "JPEG" if mode == "CMYK" else "PNG")
    finished, _ = decode_image(data, LIMIT, draft_size=32)  # JPEG decodes at a reduced size
    stretched, picture = prepare_image(data, 32, LIMIT, resize="stretch")
    assert picture.mode == "RGB" and np.array_equal(np.asarray(picture), np.asarray(finished))
    reference = np.asarray(finished.resize((32, 32), Image.Resampling.BILINEAR, reducing_gap=3.0)).astype(int)
    assert stretched.shape == (32, 32, 3) and stretched.dtype == np.uint8
    assert np.abs(stretched.astype(int) - reference).max() <= 3
    # Padded (the default): 130 x 90 becomes 32 x 22, centred on white; the picture shown is padded too.
    pixels, square = prepare_image(data, 32, LIMIT)
    canvas = Image.new("RGB", (32, 32), "white")
    canvas.paste(finished.resize((32, 22), Image.Resampling.BILINEAR, reducing_gap=3.0), (0, 5))
    assert pixels.shape == (32, 32, 3) and np.abs(pixels.astype(int) - np.asarray(canvas).astype(int)).max() <= 3
    assert (pixels[:5] == 255).all() and (pixels[27:] == 255).all()
    side, height = finished.size  # a JPEG at half size (drafted)
    top = (side - height) // 2
    assert square.size == (side, side) and np.array_equal(np.asarray(square)[top : top + height], np.asarray(finished))
    assert (np.asarray(square)[:top] == 255).all()
    if mode in ("RGBA", "LA"):
        assert (pixels[:, :8] == 255).all() and (stretched[:, :8] == 255).all()


def test_training_and_prediction_decode_to_the_same_pixels(tmp_path):
    rgba = Image.fromarray(np.random.default_rng(4).integers(0, 256, (50, 70, 4), dtype=np.uint8), "RGBA")
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            rgba.rotate(30 * i).save(tmp_path / label / f"{i}.png")
    decoded = decode_dataset(load_images(tmp_path), 32)
    for row, name in zip(decoded.x, decoded.names, strict=True):
        np.testing.assert_array_equal(row, prepare_image((tmp_path / name).read_bytes(), 32)[0])


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    decoded, _ = decode_image(png_bytes(image), LIMIT)
    row = np.asarray(decoded)[0, :, 0]
    assert row[0] == 0 and 120 <= row[1] <= 135 and row[2] == 255


def test_cmyk_and_grayscale_become_rgb():
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    decoded, info = decode_image(png_bytes(cmyk, "JPEG"), LIMIT)
    assert info["mode"] == "CMYK" and decoded.mode == "RGB"
    r, g, b = np.asarray(decoded)[1, 1]
    assert r > 200 and g < 60 and b < 60
    gray, _ = decode_image(png_bytes(Image.new("L", (4, 4), 77)), LIMIT)
    assert np.asarray(gray)[0, 0].tolist() == [77, 77, 77]


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (6, 6), (255, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    decoded, _ = decode_image(buffer.getvalue(), LIMIT)
    r, g, b = np.asarray(decoded)[3, 3]
    assert r > 200 and b < 60


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF"])
def test_every_supported_format_decodes(fmt):
    decoded, info = decode_image(png_bytes(Image.new("RGB", (10, 7), (10, 200, 30)), fmt), LIMIT)
    assert decoded.size == (10, 7) and info["format"] == fmt


def test_bad_images_raise_a_reason():
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_image(b"", LIMIT)
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode_image(b"this is text, not a jpeg", LIMIT)
    truncated = png_bytes(toy_image((1, 2, 3), np.random.default_rng(0), 64), "JPEG")[:300]
    with pytest.raises(ImageDecodeError, match="could not decode"):
        decode_image(truncated, LIMIT)
    with pytest.raises(ImageDecodeError, match=r"over the 0.0001 MP limit"):
        decode_image(png_bytes(Image.new("RGB", (20, 20))), max_pixels=100)


def test_bad_files_are_skipped_with_reasons_and_the_rest_goes_on(tmp_path):
    root = make_toy_folder(tmp_path / "set", n_per_class=5)
    (root / "red" / "broken.jpg").write_bytes(b"not an image at all")
    (root / "red" / "empty.png").write_bytes(b"")
    Image.new("RGB", (300, 300)).save(root / "blue" / "huge.png")
    decoded = decode_dataset(load_images(root), 32, DataConfig(max_pixels=50_000))
    skipped = {entry["file"]: entry["reason"] for entry in decoded.skipped}
    assert set(skipped) == {"red/broken.jpg", "red/empty.png", "blue/huge.png"}
    assert "empty file" in skipped["red/empty.png"]
    assert "MP limit" in skipped["blue/huge.png"]
    assert decoded.x.shape == (15, 32, 32, 3) and decoded.x.dtype == np.uint8


def test_decoded_pixels_are_cached_and_reused(tmp_path, toy_folder):
    class Recorder:
        def __init__(self):
            self.logs = []

        def on_stage_start(self, stage, total):
            pass

        def on_step(self, stage, step, logs=None):
            self.logs.append(logs)

        def on_stage_end(self, stage, logs=None):
            pass

        def should_stop(self):
            return False

    image_set = load_images(toy_folder)
    first = decode_dataset(image_set, 32, cache_dir=tmp_path)
    recorder = Recorder()
    second = decode_dataset(image_set, 32, progress=recorder, cache_dir=tmp_path)
    assert recorder.logs == [{"cached": 1.0}]
    np.testing.assert_array_equal(first.x, second.x)
    assert first.names == second.names and first.fingerprint == second.fingerprint
    third = decode_dataset(image_set, 48, cache_dir=tmp_path)  # another size is another entry
    assert third.x.shape[1] == 48


def test_the_decoded_cache_is_a_memory_mapped_npy_file_of_the_usable_images(tmp_path):
    root = make_toy_folder(tmp_path / "set", n_per_class=5)
    (root / "green" / "broken.png").write_bytes(b"not an image")  # skipped in the middle of the list
    image_set = load_images(root)
    in_memory = decode_dataset(image_set, 32)
    cache = tmp_path / "cache"
    cached = decode_dataset(image_set, 32, cache_dir=cache)
    files = sorted(cache.iterdir())
    assert [f.suffix for f in files] == [".json", ".npy"]  # no temporary file left behind
    assert isinstance(cached.x, np.memmap) and Path(cached.x.filename) == files[1].resolve()
    assert not cached.x.flags.writeable
    assert np.load(files[1]).shape == (15, 32, 32, 3)  # the file holds the usable images only
    np.testing.assert_array_equal(cached.x, in_memory.x)
    assert cached.names == in_memory.names and cached.skipped == in_memory.skipped
    assert isinstance(decode_dataset(image_set, 32, cache_dir=cache).x, np.memmap)  # reused, still mapped

    files[1].write_bytes(files[1].read_bytes()[:2000])  # a damaged cache file is rebuilt, not trusted
    rebuilt = decode_dataset(image_set, 32, cache_dir=cache)
    np.testing.assert_array_equal(rebuilt.x, in_memory.x)
    assert np.load(files[1]).shape == (15, 32, 32, 3)


def test_decoding_hands_on_each_row_it_writes_and_then_runs_at_the_lowest_priority(tmp_path, monkeypatch):
    """``on_rows`` lets feature extraction run on the rows decoded so far; the decoding threads
    then give way to it (nice 19 on Linux), and only then."""
    root = make_toy_folder(tmp_path / "set", n_per_class=5)
    (root / "green" / "broken.png").write_bytes(b"not an image")
    image_set = load_images(root)
    priorities = []
    decode_one = data_module._decode_one

    def recording(*args):
        priorities.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return decode_one(*args)

    monkeypatch.setattr(data_module, "_decode_one", recording)
    seen = []
    decoded = decode_dataset(image_set, 32, cache_dir=tmp_path / "cache",
                             on_rows=lambda pixels, n: seen.append((n, np.array(pixels[n - 1]))))
    assert [n for n, _ in seen] == list(range(1, 16))  # 16 files, the broken one skipped
    for n, row in seen:  # each row was complete when handed on
        np.testing.assert_array_equal(row, decoded.x[n - 1])
    if sys.platform.startswith("linux"):
        assert set(priorities) == {19}
    own = os.getpriority(os.PRIO_PROCESS, 0)
    priorities.clear()
    decode_dataset(image_set, 32)  # nothing to overlap with: the usual priority
    assert set(priorities) == {own} and own < 19


def test_a_cancelled_decode_stores_nothing_and_keeps_what_it_decoded(tmp_path, toy_folder):
    class StopAtFirstStep(NullProgress):
        stop = False

        def on_step(self, stage, step, logs=None):
            self.stop = True

        def should_stop(self):
            return self.stop

    decoded = decode_dataset(load_images(toy_folder), 32, progress=StopAtFirstStep(), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a cache entry nor a temporary file
    assert len(decoded.names) == 16 and decoded.x.shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(decoded.x, decode_dataset(load_images(toy_folder), 32).x[:16])


# ------------------------------------------------------------------ report


def test_report_counts_duplicates_and_imbalance(tmp_path):
    root = make_toy_folder(tmp_path / "set", n_per_class=4)
    rng = np.random.default_rng(5)
    for i in range(12):
        toy_image((200, 200, 0), rng).save(root / "red" / f"extra_{i}.png")
    (root / "red" / "copy.png").write_bytes((root / "red" / "red_000.png").read_bytes())
    (root / "blue" / "stolen.png").write_bytes((root / "green" / "green_001.png").read_bytes())
    report = inspect_dataset(root)
    assert report["per_class"] == {"blue": 5, "green": 4, "red": 17}
    assert report["n_images"] == 26 and report["n_classes"] == 3
    by_first = {tuple(d["files"]): d for d in report["duplicates"]}
    assert by_first[("blue/stolen.png", "green/green_001.png")]["cross_class"] is True
    assert by_first[("red/copy.png", "red/red_000.png")]["cross_class"] is False
    assert any("imbalance" in w for w in report["warnings"])
    assert any("different labels" in w for w in report["warnings"])
    assert report["modes"] == {"RGB": 26} and report["width"]["max"] == 40


# ------------------------------------------------------------------ split


def _decoded(toy_folder):
    return decode_dataset(load_images(toy_folder), 32)


def test_split_is_stratified_disjoint_and_seeded(toy_folder):
    decoded = _decoded(toy_folder)
    splits = split_dataset(decoded, DataConfig(seed=1))
    all_idx = np.concatenate(list(splits.values()))
    assert sorted(all_idx.tolist()) == list(range(len(decoded.y)))
    for part in ("train", "val", "test"):
        assert set(decoded.y[splits[part]].tolist()) == {0, 1, 2}
    assert len(splits["train"]) == 3 * 10 and len(splits["test"]) == 3 * 2
    again = split_dataset(decoded, DataConfig(seed=1))
    other = split_dataset(decoded, DataConfig(seed=2))
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    assert not np.array_equal(splits["test"], other["test"])


def test_duplicates_never_straddle_splits(tmp_path):
    root = make_toy_folder(tmp_path / "set", n_per_class=6)
    for i in range(5):
        (root / "red" / f"dup_{i}.png").write_bytes((root / "red" / "red_000.png").read_bytes())
    decoded = decode_dataset(load_images(root), 32)
    splits = split_dataset(decoded, DataConfig(seed=3))
    copies = {i for i, name in enumerate(decoded.names) if name.startswith("red/dup_") or name == "red/red_000.png"}
    homes = [part for part, idx in splits.items() if copies & set(idx.tolist())]
    assert len(homes) == 1


def test_class_too_small_names_the_class(tmp_path):
    root = make_toy_folder(tmp_path / "set", n_per_class=5)
    for path in sorted((root / "green").iterdir())[2:]:
        path.unlink()
    with pytest.raises(DataError, match=r"Class 'green' has 2 distinct usable image\(s\).*at least 3.*Add images or merge"):
        split_dataset(_decoded(root))


def test_single_class_is_refused(tmp_path):
    root = make_toy_folder(tmp_path / "set", n_per_class=5)
    for name in ("green", "blue"):
        for path in (root / name).iterdir():
            path.unlink()
        (root / name).rmdir()
    with pytest.raises(DataError, match="Found 1 class \\(red\\); a classifier needs at least 2"):
        split_dataset(_decoded(root))


def test_identical_files_in_two_classes_share_one_split(tmp_path):
    root = make_toy_folder(tmp_path / "set", n_per_class=6)
    for i in range(3):
        (root / "blue" / f"copy_{i}.png").write_bytes((root / "red" / f"red_00{i}.png").read_bytes())
    decoded = decode_dataset(load_images(root), 32)
    for seed in range(5):
        splits = split_dataset(decoded, DataConfig(seed=seed))
        home = {i: part for part, idx in splits.items() for i in idx.tolist()}
        for i in range(3):
            assert home[decoded.names.index(f"blue/copy_{i}.png")] == home[decoded.names.index(f"red/red_00{i}.png")]
        assert all(set(decoded.y[idx].tolist()) == {0, 1, 2} for idx in splits.values())


def test_a_class_whose_images_all_fail_is_refused_by_name(tmp_path):
    root = make_toy_folder(tmp_path / "set", n_per_class=5)
    for path in (root / "green").iterdir():
        path.write_bytes(b"broken")
    decoded = decode_dataset(load_images(root), 32)
    assert decoded.class_names == ["blue", "green", "red"] and 1 not in decoded.y.tolist()
    with pytest.raises(DataError, match="Class 'green' has 0 distinct usable image"):
        split_dataset(decoded)


def test_a_corrupt_zip_member_is_skipped_with_its_reason(toy_folder):
    archive = bytearray(zip_folder(toy_folder))
    with zipfile.ZipFile(io.BytesIO(bytes(archive))) as zf:
        info = zf.getinfo("red/red_000.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    archive[start : start + 40] = b"\x00" * 40  # damage the compressed bytes of one member
    image_set = load_images(bytes(archive))
    assert len(image_set.items) == 41
    reason = {e["file"]: e["reason"] for e in image_set.ignored}["red/red_000.png"]
    assert reason.startswith("could not be extracted from the zip")


# ------------------------------------------------------------------ batches from the cache


def test_batches_stream_a_split_from_the_memory_mapped_cache_without_copying_it(tmp_path, toy_folder):
    decoded = decode_dataset(load_images(toy_folder), 32, cache_dir=tmp_path)
    idx = split_dataset(decoded, DataConfig(seed=1))["train"]
    train = Rows(decoded.x, idx)
    assert train.array is decoded.x and train.shape == (30, 32, 32, 3)  # positions only, no pixels copied
    reversed_rows = take_rows(decoded.x, idx[::-1])  # read in file order, handed back in the order asked
    np.testing.assert_array_equal(reversed_rows, np.asarray(decoded.x)[idx[::-1]])
    np.testing.assert_array_equal(train[4:9], np.asarray(decoded.x)[idx[4:9]])

    x, y = np.asarray(decoded.x)[idx], decoded.y[idx]
    ordered = [batch.numpy() for batch in make_batches(train, None, 8)]
    assert [len(b) for b in ordered] == [8, 8, 8, 6] and ordered[0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate(ordered), x.astype(np.float32))

    # Shuffled: the same batches as a tf.data pipeline over the pixels themselves, same seed.
    import tensorflow as tf

    streamed = make_batches(train, y, 8, shuffle=True, seed=5)
    in_memory = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=5).batch(8)
    for epoch in range(2):  # reshuffled every epoch, the same way
        pairs = list(zip(streamed, in_memory, strict=True))
        for (images, labels), (images_ref, labels_ref) in pairs:
            np.testing.assert_array_equal(images.numpy(), images_ref.numpy().astype(np.float32))
            np.testing.assert_array_equal(labels.numpy(), labels_ref.numpy())
        first = np.concatenate([labels.numpy() for (_, labels), _ in pairs])
        assert sorted(first.tolist()) == sorted(y.tolist()) and not np.array_equal(first, y)


def test_class_names_a_folder_cannot_hold_are_renamed_in_words_not_silently(store):
    from tl_core.data import build_report, decode_dataset
    from tl_core.datasets import save_image_set

    rng = np.random.default_rng(0)
    upload = [(f"{i}.png", png_bytes(toy_image(color, rng, 16)), label)
              for label, color in (("cats: big", (200, 30, 30)), ("dogs", (30, 30, 200))) for i in range(3)]
    folder = save_image_set(store, load_images(upload), "pets")
    image_set = load_images(folder)
    assert image_set.class_names == ["cats_ big", "dogs"] and image_set.renamed == {"cats: big": "cats_ big"}
    report = build_report(image_set, decode_dataset(image_set, 16))
    assert ("1 class name(s) held characters a folder name cannot (\\ / : * ? \" < > |, control characters), each "
            "replaced by _ in the saved copy: 'cats: big' is now 'cats_ big'. Rename the folders before uploading "
            "to choose other names.") in report["warnings"]
    assert load_images(save_image_set(store, load_images(upload[3:]), "dogs only")).renamed == {}
