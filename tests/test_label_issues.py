"""Likely label errors: out-of-fold probabilities and confident learning find flipped labels."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, make_toy_folder

from tl_core.errors import DataError
from tl_core.label_issues import find_label_issues


def _clusters(seed=0, per_class=60, k=4, d=32):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (k, d))
    y = np.repeat(np.arange(k), per_class)
    return centres[y] + rng.normal(0, 1, (len(y), d)), y


def test_flipped_labels_rank_at_the_top_and_clean_data_has_few():
    x, y = _clusters()
    names = [f"c{c}/img_{i:03d}.png" for i, c in enumerate(y)]
    classes = ["c0", "c1", "c2", "c3"]
    clean = find_label_issues(x, y, classes, names)
    assert len(clean) <= 2
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(y), size=12, replace=False)  # 5%
    noisy = y.copy()
    noisy[flipped] = (noisy[flipped] + rng.integers(1, 4, size=12)) % 4
    issues = find_label_issues(x, noisy, classes, names)
    top = {names.index(issue.file) for issue in issues[:24]}
    assert len(top & set(flipped.tolist())) / 12 >= 0.7
    first = issues[0]
    i = names.index(first.file)
    assert first.given == classes[noisy[i]] and first.suggested == classes[y[i]]  # the true class is suggested
    assert [issue.score for issue in issues] == sorted((issue.score for issue in issues), reverse=True)


def test_a_class_too_small_to_fold_is_a_clear_error():
    x, y = _clusters(per_class=5)
    y = y.copy()
    y[0] = 9  # a class of one image
    with pytest.raises(DataError, match="at least 2 classes with 2 or more images"):
        find_label_issues(x, y, [f"c{i}" for i in range(10)], [str(i) for i in range(len(y))])


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
