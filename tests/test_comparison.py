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
    assert fe["flagged"] == 0 and fe["majority_baselines"] == pytest.approx([1 / 3] * 3)
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


def _stored_run(store, strategy: str, head: str, seed: int, correct: list[int], group: str = "g2") -> dict:
    """A finished run in a real store whose test predictions are right where ``correct`` says."""
    from tl_core.fsutil import write_json_atomic

    payload = {"train": {"strategy": strategy, "head": head}, "data": {"seed": seed}, "source": "x", "group": group}
    run_id = store.create_run(payload, status="running")
    names = [f"img{seed}_{i}.png" for i in range(len(correct))]
    write_json_atomic(store.run_dir(run_id) / "split.json", {"train": [], "val": [], "test": names})
    write_json_atomic(store.run_dir(run_id) / "predictions.json",
                      {"true": [0] * len(correct), "predicted": [0 if c else 1 for c in correct]})
    store.finish(run_id, "succeeded", {"test_accuracy": sum(correct) / len(correct), "seconds": 1.0})
    return store.get_run(run_id)


def test_the_best_group_never_contradicts_a_verdict(tmp_path):
    """ovr beats softmax on its 5 splits although softmax leads on the 2 splits every strategy shares:
    softmax must not be starred, and the verdict reads 'ovr is better than softmax'."""
    from tl_core.store import RunStore

    store = RunStore(tmp_path / "store")
    n = 100
    runs = []
    for seed, (soft, ovr) in enumerate([(90, 85), (90, 85), (50, 90), (50, 90), (50, 90)]):
        runs.append(_stored_run(store, "feature_extractor", "softmax", seed, [1] * soft + [0] * (n - soft)))
        runs.append(_stored_run(store, "feature_extractor", "ovr", seed, [1] * ovr + [0] * (n - ovr)))
    for seed in (0, 1):
        runs.append(_stored_run(store, "scratch", "softmax", seed, [1] * 20 + [0] * (n - 20)))
    summary = comparison.summarize(store, runs)
    verdict = next(v for v in summary["verdicts"] if {v["a"], v["b"]} == {"Feature extractor (softmax)", "Feature extractor (ovr)"})
    assert (verdict["a"], verdict["verdict"]) == ("Feature extractor (ovr)", "better") and verdict["difference"] > 0
    assert summary["best"] == ["Feature extractor (ovr)"]
    assert [s["label"] for s in summary["strategies"]][0] == "Feature extractor (ovr)"
    assert all(v["verdict"] in ("better", "tied") for v in summary["verdicts"])
    beaten = {v["b"] for v in summary["verdicts"] if v["verdict"] == "better"}
    assert not beaten & set(summary["best"])
