"""Compare strategies: the same repeated splits for every strategy, means with intervals, paired
verdicts on the same test images, and the best group."""

from __future__ import annotations

import json

import pytest
from conftest import make_toy_folder

from tl_core import comparison
from tl_core.config import DataConfig, TrainConfig
from tl_core.runner import run_training

TINY = dict(backbone="vgg16", weights="none", image_size=32, batch_size=8)


def test_the_plan_puts_every_strategy_on_the_same_splits_first_split_first():
    planned = comparison.plan(TrainConfig(**TINY), DataConfig(seed=10), costly_splits=2, feature_splits=3)
    seen = [(c.strategy, c.head, d.seed) for c, d in planned]
    assert seen[:4] == [("feature_extractor", "softmax", 10), ("feature_extractor", "ovr", 10),
                        ("finetune", "softmax", 10), ("scratch", "softmax", 10)]
    assert sorted(s for st, h, s in seen if st == "finetune") == [10, 11]
    assert sorted(s for st, h, s in seen if (st, h) == ("feature_extractor", "ovr")) == [10, 11, 12]
    assert len(seen) == 3 + 3 + 2 + 2


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A feature extractor and an under-trained network from scratch, each on the same 3 splits."""
    from tl_core.store import RunStore

    root = make_toy_folder(tmp_path_factory.mktemp("cmp"), n_per_class=20)
    store = RunStore(tmp_path_factory.mktemp("store"))
    runs = []
    for seed in (42, 43, 44):
        for config in (TrainConfig(strategy="feature_extractor", **TINY),
                       TrainConfig(strategy="scratch", epochs=1, learning_rate=1e-6, **TINY)):
            run = run_training(root, config, DataConfig(seed=seed), store, group="g1")
            assert run["status"] == "succeeded", run["error"]
            runs.append(run)
    return store, runs


def test_a_comparison_pairs_the_same_test_images_and_names_the_best_group(compared):
    store, runs = compared
    summary = comparison.summarize(store, runs)
    labels = [s["label"] for s in summary["strategies"]]
    assert labels == ["Feature extractor (softmax)", "From scratch"]  # best mean first
    fe, scratch = summary["strategies"]
    assert fe["seeds"] == scratch["seeds"] == [42, 43, 44]
    assert fe["accuracies"] == [r["metrics"]["test_accuracy"] for r in runs if r["config"]["train"]["strategy"] == "feature_extractor"]
    assert fe["accuracy_ci"][0] <= fe["mean_accuracy"] <= fe["accuracy_ci"][1]
    (verdict,) = summary["verdicts"]
    assert (verdict["a"], verdict["b"], verdict["verdict"]) == ("Feature extractor (softmax)", "From scratch", "better")
    assert verdict["n_splits"] == 3 and verdict["ci"][0] > 0
    assert "is better than From scratch" in verdict["sentence"]
    assert summary["best"] == ["Feature extractor (softmax)"] and fe["best"] and not scratch["best"]
    # Each split's test images are the same files for both strategies.
    for seed in (42, 43, 44):
        tests = {json.dumps(json.loads((store.run_dir(r["id"]) / "split.json").read_text())["test"])
                 for r in runs if r["config"]["data"]["seed"] == seed}
        assert len(tests) == 1


def test_a_strategy_compared_with_itself_is_tied_and_joins_the_best_group(compared):
    store, runs = compared
    fe = [r for r in runs if r["config"]["train"]["strategy"] == "feature_extractor"]
    twins = [{**r, "config": {**r["config"], "train": {**r["config"]["train"], "head": "ovr"}}} for r in fe]
    summary = comparison.summarize(store, fe + twins)
    (verdict,) = summary["verdicts"]
    assert verdict["verdict"] == "tied" and verdict["difference"] == 0
    assert "no measurable difference" in verdict["sentence"] and "Pick the faster one" in verdict["sentence"]
    assert sorted(summary["best"]) == ["Feature extractor (ovr)", "Feature extractor (softmax)"]


def test_runs_without_per_image_predictions_are_counted_not_paired(compared, tmp_path):
    store, runs = compared
    victim = runs[1]
    path = store.run_dir(victim["id"]) / "predictions.json"
    saved = path.read_bytes()
    path.unlink()
    try:
        summary = comparison.summarize(store, runs)
        assert summary["without_predictions"] == 1
        scratch = next(s for s in summary["strategies"] if s["label"] == "From scratch")
        assert scratch["n_splits"] == 2 and scratch["planned"] == 3 and summary["verdicts"][0]["n_splits"] == 2
    finally:
        path.write_bytes(saved)
