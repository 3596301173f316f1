"""Saved uploads, the sample sets, reading dataset images back safely, and the advisor's matrix."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from conftest import png_bytes, toy_image
from tl_core.advisor import LARGE_MIN_PER_CLASS, recommend
from tl_core.data import load_images
from tl_core.datasets import digits_sample, flowers_sample, list_datasets, read_image_bytes, save_image_set
from tl_core.errors import ConfigError, DataError


def test_uploads_are_saved_as_class_folders_with_safe_names(store):
    rng = np.random.default_rng(0)
    image = png_bytes(toy_image((200, 0, 0), rng))
    files = [("a.png", image, "café ☕"), ("a.png", image, "café ☕"), ("b.png", image, "dogs/cats"), ("c.png", image, "dogs/cats")]
    folder = save_image_set(store, load_images(files), "mixed")
    reloaded = load_images(folder)
    assert reloaded.class_names == ["café ☕", "dogs_cats"]
    assert len(reloaded.items) == 4  # the clashing a.png got a number, nothing was lost
    assert list_datasets(store)[0]["name"] == "mixed"
    assert read_image_bytes(str(folder), "dogs_cats/b.png") == image
    for bad in ("../dataset.json", "/etc/passwd", "dogs_cats/../../x"):
        assert read_image_bytes(str(folder), bad) is None


def test_the_offline_digits_sample_is_a_real_labelled_set(store):
    folder = digits_sample(store)
    image_set = load_images(folder)
    assert len(image_set.class_names) == 10 and len(image_set.items) == 1797
    assert digits_sample(store) == folder  # built once


def test_tf_flowers_offline_gives_a_friendly_message(store):
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
        pytest.skip("online: the download would start instead of failing")
    except OSError:
        pass
    with pytest.raises(DataError, match="Offline\\? Use the handwritten-digits sample"):
        flowers_sample(store)


@pytest.mark.parametrize(
    "per_class, domain, strategy",
    [
        ({"a": 50, "b": 80}, "similar", "feature_extractor"),
        ({"a": 50, "b": 5000}, "different", "feature_extractor"),
        ({"a": 1500, "b": 2000}, "similar", "finetune"),
        ({"a": 1500, "b": 2000}, "different", "feature_extractor"),
        ({"a": 6000, "b": 7000}, "different", "scratch"),
    ],
)
def test_each_cell_of_the_decision_matrix(per_class, domain, strategy):
    rec = recommend(per_class, domain)
    assert rec.strategy == strategy and rec.settings["strategy"] == strategy
    assert rec.size == ("large" if min(per_class.values()) >= LARGE_MIN_PER_CLASS else "small")
    assert str(min(per_class.values())) in rec.reasons[0]


def test_advisor_refuses_nonsense():
    with pytest.raises(ConfigError, match="Unknown domain"):
        recommend({"a": 10}, "alien")
    with pytest.raises(ConfigError, match="no usable image"):
        recommend({"a": 0}, "similar")


def test_a_corrected_version_relabels_and_excludes_and_leaves_the_original_alone(store, tmp_path):
    from conftest import make_toy_folder

    from tl_core.datasets import EXCLUDE, KEEP, corrected_version

    folder = make_toy_folder(tmp_path / "toy", n_per_class=4)
    before = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    image_set = load_images(folder)
    first, second, third = (item.name for item in image_set.items[:3])
    other = next(c for c in image_set.class_names if not first.startswith(c + "/"))
    path = corrected_version(store, image_set, {first: other, second: EXCLUDE, third: KEEP}, "toy (corrected)")

    corrected = load_images(path)
    assert len(corrected.items) == len(image_set.items) - 1
    counts = {c: sum(i.label == c for i in corrected.items) for c in corrected.class_names}
    original = {c: sum(i.label == c for i in image_set.items) for c in image_set.class_names}
    assert counts[other] == original[other] + 1
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == before  # nothing deleted
    assert "toy (corrected)" in [d["name"] for d in list_datasets(store)]

    with pytest.raises(DataError, match="not one of this dataset's classes"):
        corrected_version(store, image_set, {first: "<b>nope</b>"}, "x")
    with pytest.raises(DataError, match="not in this dataset"):
        corrected_version(store, image_set, {"nope/a.png": EXCLUDE}, "x")
    with pytest.raises(DataError, match="nothing to save"):
        corrected_version(store, image_set, {i.name: EXCLUDE for i in image_set.items}, "x")
