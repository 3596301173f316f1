"""Compare strategies honestly: every strategy on the same repeated stratified splits, each with its
mean accuracy and interval, and a paired verdict for each pair that says "tied" when the test images
cannot tell them apart.

A comparison is a group of runs (``config.group``), one per strategy and split. Split ``i`` is the
stratified split of data seed ``seed + i`` for every strategy, so two strategies are compared on the
same test images (``predictions.json`` in each run's folder), split by split.
"""

from __future__ import annotations

import dataclasses
import json
from itertools import combinations
from typing import Any

import numpy as np

from tl_core.config import (
    COMPARE_COSTLY_SPLITS,
    COMPARE_FEATURE_SPLITS,
    STRATEGY_LABELS,
    DataConfig,
    TrainConfig,
)
from tl_core.metrics import CONFIDENCE, mean_accuracy_interval, paired_verdict, reliability
from tl_core.store import PREDICTIONS_FILE, SPLIT_FILE, RunStore

def plan(config: TrainConfig, data_config: DataConfig, *, costly_splits: int = COMPARE_COSTLY_SPLITS,
         feature_splits: int = COMPARE_FEATURE_SPLITS) -> list[tuple[TrainConfig, DataConfig]]:
    """The runs of "Compare strategies", split by split: the first split of every strategy comes first,
    so a comparison in progress already has every strategy on one split.

    Args:
        config: the settings the strategies share (backbone, image size, epochs, seed).
        data_config: split ``i`` uses data seed ``data_config.seed + i``.
        costly_splits: splits for two-stage fine-tuning and from scratch (each one trains again).
        feature_splits: splits for the feature extractor's heads.
    """
    variants = config.comparison()
    counts = [feature_splits if v.strategy == "feature_extractor" else costly_splits for v in variants]
    return [
        (variant, dataclasses.replace(data_config, seed=data_config.seed + i))
        for i in range(max(counts))
        for variant, count in zip(variants, counts)
        if i < count
    ]


def strategy_label(train: dict[str, Any]) -> str:
    """``Feature extractor (softmax)``, ``Two-stage fine-tuning`` (``... (LP-FT)``), ``From scratch``."""
    label = STRATEGY_LABELS.get(train.get("strategy"), str(train.get("strategy")))
    if train.get("strategy") == "feature_extractor":
        return f"{label} ({train.get('head')})"
    return f"{label} (LP-FT)" if train.get("strategy") == "finetune" and train.get("start_from_probe") else label


def _test_predictions(store: RunStore, run: dict[str, Any]) -> tuple[tuple[str, ...], np.ndarray] | None:
    """The run's test file names and, per file, 1 if it was classified right; None before this was kept."""
    for attempt in range(2):
        folder = store.run_dir(run["id"])
        try:
            names = tuple(json.loads((folder / SPLIT_FILE).read_text())["test"])
            kept = json.loads((folder / PREDICTIONS_FILE).read_text())
            break
        except (OSError, ValueError, KeyError):
            if attempt:
                return None
            # Finished on another machine (a Ray node), or a wiped disk: bring the run's folder here.
            store.ensure_local(run["id"])
    correct = (np.asarray(kept["true"]) == np.asarray(kept["predicted"])).astype(np.int8)
    return (names, correct) if len(names) == len(correct) else None


def summarize(store: RunStore, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each strategy's accuracies over the splits, mean and interval, and the pairwise verdicts.

    Args:
        runs: the runs of one comparison (any status; only finished ones with predictions count).

    Returns:
        ``strategies`` (best first: ``strategy``, ``head``, ``label``, ``seeds``, ``accuracies``,
        ``mean_accuracy``, ``accuracy_ci``, ``shared_mean_accuracy`` (over the splits every strategy
        finished, what the order follows), ``seconds``, ``n_splits``, ``planned``, ``run_ids``,
        ``best``, ``flagged`` (its runs flagged as one-class or no better than guessing the largest
        class), ``majority_baselines`` (that guess's accuracy on each split)), ``shared_seeds``, ``verdicts`` (``a``, ``b``, ``verdict`` said of ``a``: ``better``
        or ``tied``, a worse one being turned round; ``difference``, ``ci``, ``n_splits``,
        ``sentence``), ``best`` (the labels of the best group: every strategy that no other is
        measurably better than), ``without_predictions`` (finished runs whose per-image
        predictions could not be read: made before they were kept).

    The intervals and verdicts hold the trained models fixed and resample their test images; the
    splits are drawn from one pool of images, so an image can be in the test set of several splits.
    They say whether the test images can tell two models apart, not how a new training run varies.
    """
    found: dict[str, dict[int, tuple[tuple[str, ...], np.ndarray, dict]]] = {}
    planned: dict[str, int] = {}
    train_of: dict[str, dict[str, Any]] = {}
    without = 0
    for run in runs:
        train = (run.get("config") or {}).get("train", {})
        label = strategy_label(train)
        planned[label] = planned.get(label, 0) + 1
        train_of.setdefault(label, train)
        if run["status"] != "succeeded":
            continue
        kept = _test_predictions(store, run)
        if kept is None:
            without += 1
            continue
        seed = int(run["config"]["data"]["seed"])
        found.setdefault(label, {})[seed] = (*kept, run)

    strategies = []
    for label, per_seed in found.items():
        seeds = sorted(per_seed)
        correct = [per_seed[s][1] for s in seeds]
        mean, low, high = mean_accuracy_interval(correct)
        seconds = [per_seed[s][2].get("metrics", {}).get("seconds") or 0.0 for s in seeds]
        checks = [reliability(m, macro_f1=False) for m in (per_seed[s][2].get("metrics") or {} for s in seeds)
                  if m.get("confusion_matrix")]
        strategies.append({
            "strategy": train_of[label].get("strategy"), "head": train_of[label].get("head"), "label": label,
            "seeds": seeds, "accuracies": [float(c.mean()) for c in correct], "mean_accuracy": mean,
            "accuracy_ci": [low, high], "seconds": float(np.mean(seconds)), "n_splits": len(seeds),
            "planned": planned[label], "run_ids": [per_seed[s][2]["id"] for s in seeds],
            "flagged": sum(1 for c in checks if c["flags"]),
            "majority_baselines": [c["majority_baseline"] for c in checks],
        })
    # Ranked on the splits every strategy finished (their means over their own splits are not
    # comparable when one has 5 splits and another 2).
    shared = sorted(set.intersection(*(set(s["seeds"]) for s in strategies))) if strategies else []
    for s in strategies:
        own = found[s["label"]]
        s["shared_mean_accuracy"] = float(np.mean([own[seed][1].mean() for seed in shared])) if shared else None
    strategies.sort(key=lambda s: -(s["shared_mean_accuracy"] if shared else s["mean_accuracy"]))

    verdicts = []
    for a, b in combinations(strategies, 2):
        pa, pb = found[a["label"]], found[b["label"]]
        common = [s for s in a["seeds"] if s in pb and pa[s][0] == pb[s][0]]  # the same test images
        if not common:
            continue
        verdict = paired_verdict([pa[s][1] for s in common], [pb[s][1] for s in common])
        if verdict["verdict"] == "worse":  # said of the better one: "B is better than A"
            a, b = b, a
            verdict = {**verdict, "verdict": "better", "difference": -verdict["difference"],
                       "ci": [-verdict["ci"][1], -verdict["ci"][0]]}
        verdict = {"a": a["label"], "b": b["label"], **verdict}
        verdict["sentence"] = verdict_sentence(verdict, faster=min((a, b), key=lambda s: s["seconds"])["label"])
        verdicts.append(verdict)

    # The best group: every strategy that no other is measurably better than (each verdict on the
    # splits its two strategies share); the best on the shared splits if a cycle leaves none.
    beaten = {v["b"] for v in verdicts if v["verdict"] == "better"}
    best = [s["label"] for s in strategies if s["label"] not in beaten] or [s["label"] for s in strategies[:1]]
    for strategy in strategies:
        strategy["best"] = strategy["label"] in best
    strategies.sort(key=lambda s: not s["best"])  # stable: the best group first, each part in order
    return {"strategies": strategies, "shared_seeds": shared, "verdicts": verdicts, "best": best,
            "without_predictions": without, "confidence": CONFIDENCE}


def _points(value: float) -> str:
    return f"{value * 100:+.1f}"


def verdict_sentence(verdict: dict[str, Any], faster: str) -> str:
    """The verdict in words (strategy names only: no user text)."""
    low, high = verdict["ci"]
    splits = f"{verdict['n_splits']} split{'s' if verdict['n_splits'] != 1 else ''}"
    measured = (f"{_points(verdict['difference'])} points (95% CI {_points(low)} to {_points(high)}) "
                f"on the same test images of {splits}")
    if verdict["verdict"] == "tied":
        return (f"{verdict['a']} vs {verdict['b']}: no measurable difference, {measured}. "
                f"Pick the faster one: {faster}.")
    word = "better" if verdict["verdict"] == "better" else "worse"
    return f"{verdict['a']} is {word} than {verdict['b']}: {measured}."


def groups(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The runs of each comparison, newest comparison first (runs come newest first)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        group = (run.get("config") or {}).get("group")
        if group:
            out.setdefault(group, []).append(run)
    return out


def _accuracy(run: dict[str, Any]) -> float | None:
    return (run.get("metrics") or {}).get("test_accuracy") if run["status"] == "succeeded" else None


def best_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The succeeded run with the highest test accuracy (ties: the most recent), or ``None``."""
    scored = [r for r in runs if _accuracy(r) is not None]
    return max(scored, key=lambda r: (_accuracy(r), r.get("created_at") or 0), default=None)


def best_per_dataset(runs: list[dict[str, Any]]) -> set[str]:
    """The ids of the succeeded runs with the highest test accuracy on their dataset (ties: all of them)."""
    by_dataset: dict[Any, list[dict[str, Any]]] = {}
    for run in runs:
        by_dataset.setdefault(run.get("name"), []).append(run)
    best = {name: best_run(members) for name, members in by_dataset.items()}
    return {run["id"] for run in runs
            if best[run.get("name")] is not None and _accuracy(run) == _accuracy(best[run.get("name")])}
