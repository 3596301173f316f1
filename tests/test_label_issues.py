"""Likely label errors: out-of-fold probabilities and confident learning find flipped labels."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import CLIPART8, REPO, SHARED_WEIGHTS, make_toy_folder, needs_clipart8, needs_shared_weights

from tl_core.errors import ConfigError, DataError
from tl_core.label_issues import LabelIssue, find_label_issues, label_issues_for

CLASSES = ["c0", "c1", "c2", "c3"]


def _clusters(seed=0, per_class=60, k=4, d=32):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (k, d))
    y = np.repeat(np.arange(k), per_class)
    return centres[y] + rng.normal(0, 1, (len(y), d)), y


def _flip(y, n, seed=1, k=4):
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(y), size=n, replace=False)
    noisy = y.copy()
    noisy[flipped] = (noisy[flipped] + rng.integers(1, k, size=n)) % k  # another class
    return noisy, flipped


def test_flipped_labels_rank_at_the_top_and_clean_data_has_few():
    x, y = _clusters()
    names = [f"c{c}/img_{i:03d}.png" for i, c in enumerate(y)]
    clean = find_label_issues(x, y, CLASSES, names)
    assert len(clean) <= 2
    noisy, flipped = _flip(y, 12)  # 5%
    issues = find_label_issues(x, noisy, CLASSES, names)
    top = {names.index(issue.file) for issue in issues[:24]}
    assert len(top & set(flipped.tolist())) / 12 >= 0.7
    first = issues[0]
    i = names.index(first.file)
    assert first.given == CLASSES[noisy[i]] and first.suggested == CLASSES[y[i]]  # the true class is suggested
    assert [issue.score for issue in issues] == sorted((issue.score for issue in issues), reverse=True)
    assert all(isinstance(issue, LabelIssue) and 0.0 <= issue.score <= 1.0 for issue in issues)
    assert set(issues[0].to_dict()) == {"file", "given", "suggested", "score"}


def test_the_same_seed_gives_the_same_issues():
    x, y = _clusters(seed=3)
    noisy, _ = _flip(y, 12, seed=4)
    names = [f"{i}.png" for i in range(len(y))]
    first = find_label_issues(x, noisy, CLASSES, names, seed=7)
    assert find_label_issues(x, noisy, CLASSES, names, seed=7) == first
    assert find_label_issues(x.astype(np.float16), noisy, CLASSES, names, seed=7, n_folds=3)  # features as cached


def test_a_class_without_images_keeps_the_names_right():
    """A class whose files were all unreadable has a name but no images: the suggested names still match."""
    x, y = _clusters(k=3)
    noisy, flipped = _flip(y, 9, k=3)
    gapped = np.array([0, 2, 3])[noisy]  # class 1 ("empty") has no images
    names = ["a", "empty", "b", "c"]
    issues = find_label_issues(x, gapped, names, [str(i) for i in range(len(y))])
    assert issues and all(issue.given != "empty" and issue.suggested != "empty" for issue in issues)
    for issue in issues[:5]:
        i = int(issue.file)
        if i in flipped:
            assert issue.suggested == names[[0, 2, 3][y[i]]]


def test_unusable_input_is_a_clear_error():
    x, y = _clusters(per_class=5)
    y = y.copy()
    y[0] = 9  # a class of one image
    classes = [f"c{i}" for i in range(10)]
    with pytest.raises(DataError, match="at least 2 classes with 2 or more images.*'c9' have 1 image"):
        find_label_issues(x, y, classes, [str(i) for i in range(len(y))])
    with pytest.raises(DataError, match="2 classes"):
        find_label_issues(x, np.zeros(len(y), int), classes, [str(i) for i in range(len(y))])
    with pytest.raises(DataError, match="one of each per image"):
        find_label_issues(x, np.arange(len(y)) % 4, classes, ["only-one.png"])
    with pytest.raises(ConfigError, match="n_folds must be 2 or more"):
        find_label_issues(x, np.arange(len(y)) % 4, classes, [str(i) for i in range(len(y))], n_folds=1)


def test_a_folder_gives_paths_relative_to_its_root_and_reuses_its_caches(tmp_path):
    root = make_toy_folder(tmp_path / "toy", n_per_class=12)
    (root / "red" / "red_000.png").rename(root / "green" / "red_000.png")  # a red square labelled green
    cache = tmp_path / "cache"
    issues = label_issues_for(root, backbone="vgg16", weights="none", image_size=32, cache_dir=cache)
    assert issues[0].file == "green/red_000.png" and (issues[0].given, issues[0].suggested) == ("green", "red")
    assert all(not issue.file.startswith("/") and issue.file.count("/") == 1 for issue in issues)
    cached = sorted((cache / "features").glob("*.npy"))
    assert len(cached) == 1
    again = label_issues_for(root, backbone="vgg16", weights="none", image_size=32, cache_dir=cache)
    assert again == issues and sorted((cache / "features").glob("*.npy")) == cached


def test_the_cli_prints_the_issues_as_json_with_paths_relative_to_the_dataset(tmp_path):
    root = make_toy_folder(tmp_path / "toy", n_per_class=12)
    (root / "red" / "red_000.png").rename(root / "green" / "red_000.png")  # a red square labelled green
    done = subprocess.run(
        [sys.executable, "-m", "tl_core", "label-issues", "--data", str(root), "--backbone", "vgg16", "--weights", "none",
         "--image-size", "32", "--data-dir", str(tmp_path / "store"), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    issues = json.loads(done.stdout.strip().splitlines()[-1])["issues"]
    assert issues[0] == {"file": "green/red_000.png", "given": "green", "suggested": "red",
                         "score": pytest.approx(issues[0]["score"])}
    assert 0.5 < issues[0]["score"] <= 1.0


@needs_shared_weights
@needs_clipart8
def test_real_mobilenet_features_find_moved_clipart(tmp_path, monkeypatch):
    """15 images of 4 clipart8 classes, 3 moved into the next class's folder: all 3 ranked in the top 6."""
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(SHARED_WEIGHTS))
    classes = ["birds", "fruit", "music", "vehicles"]
    root = tmp_path / "slice"
    for name in classes:
        (root / name).mkdir(parents=True)
        for path in sorted((CLIPART8 / name).iterdir())[:15]:
            shutil.copy(path, root / name / path.name)
    moved = {}
    for j, name in enumerate(classes[:3]):
        path = sorted((root / name).iterdir())[j]
        wrong = classes[j + 1]
        path.rename(root / wrong / path.name)
        moved[f"{wrong}/{path.name}"] = name
    issues = label_issues_for(root, image_size=128, cache_dir=tmp_path / "cache")
    top = {issue.file: issue for issue in issues[: 2 * len(moved)]}
    assert set(moved) <= set(top), [(issue.file, round(issue.score, 2)) for issue in issues[:8]]
    assert all(top[file].suggested == true for file, true in moved.items())
