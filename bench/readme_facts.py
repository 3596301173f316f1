"""Render the README's facts from their one source: the advisor's constants, the registry and the benches' results.

    python bench/readme_facts.py          # rewrite the marked blocks of README.md
    python bench/readme_facts.py --check  # exit 1 if a block is out of date (tests/test_facts.py runs it)

A block sits between ``<!-- facts:NAME -->`` and ``<!-- /facts:NAME -->``; everything between the
markers is replaced. Edit the constants in ``tl_core/advisor.py`` or rerun the bench, never the block.
Figures inside sentences and table rows (:data:`PHRASES`) are checked against their source instead:
the command names each one the README lacks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from _common import REPO

from tl_core import advisor

README = REPO / "README.md"


def advisor_thresholds() -> str:
    """The size and similarity thresholds, the part weights and the measured anchors, in words."""
    w = advisor.PART_WEIGHTS
    small, large = advisor.BENCH.get("small", {}), advisor.BENCH.get("large", {})
    return f"""- **Data size**: usable images in the smallest class (the median is shown too). *Large* from
  **{advisor.LARGE_MIN_PER_CLASS:,} per class**: retraining deep layers needs on the order of a thousand images per class
  (Yosinski et al. 2014 fine-tuned with about 1,300; Kornblith et al. 2019 find fine-tuning's lead
  over frozen features shrinks as data per class falls to the hundreds; the CS231n notes and the
  Keras guide call a few hundred per class small). Training **from scratch** is recommended only
  from **{advisor.SCRATCH_MIN_PER_CLASS:,} per class** (He et al. 2019, "Rethinking ImageNet Pre-training": random
  initialisation needs 10k+ images and long schedules to catch up); our bench below agrees: at
  {small.get('per_class', 0):,} and {large.get('per_class', 0):,} per class frozen features from an earlier block beat every other
  strategy ({small.get('earlier_features', float('nan')):.3f} and {large.get('earlier_features', float('nan')):.3f}).
- **Domain similarity** to ImageNet, in [0, 1], from a stratified sample of at most {advisor.SAMPLE_SIZE} images
  pushed once through the pretrained backbone, with its three parts shown:
  - *activation statistics* (weight {w['statistics']}): how far your images' activations are from the ImageNet
    statistics each BatchNormalization layer stores (mean symmetric KL divergence of the
    per-channel Gaussians; the part is `exp(-divergence)`);
  - *ImageNet recognition* ({w['recognition']}): how confidently the 1000-class ImageNet classifier names your
    images (mean of its top-1 probability and of 1 - its normalised entropy); it needs the weights
    *with* the top (`mobilenet_v1_1.0_224_imagenet.weights.h5`, in `../shared/weights`);
  - *transferability* ({w['transferability']}): LogME (You et al., ICML 2021, implemented in
    `tl_core/transferability.py` and checked against a direct Gaussian evidence and a generic
    optimiser) of the pooled features for your labels, shown as the share of label variance the
    evidence-maximising linear model explains.

  *Similar* from **{advisor.SIMILAR_MIN}**. Anchors measured with MobileNet: {advisor.anchors_sentence()}."""


STRATEGY_ROWS = {  # row title -> which bench runs it takes (the best of them)
    "feature extractor, last layer": lambda s: s["strategy"] == "feature_extractor" and not s.get("feature_cut"),
    "feature extractor, 2 blocks below the top": lambda s: s["strategy"] == "feature_extractor"
    and s.get("feature_cut") == 2,
    "the advisor's earlier block (4 or 6 below)": lambda s: s["strategy"] == "feature_extractor"
    and s.get("feature_cut") in (4, 6),
    "fine-tune top 2 blocks": lambda s: s["strategy"] == "finetune" and s.get("unfreeze_blocks") == 2,
    "fine-tune all layers": lambda s: s["strategy"] == "finetune" and s.get("unfreeze_blocks") == -1,
    "from scratch": lambda s: s["strategy"] == "scratch",
}
STRATEGY_COLUMNS = {"clipart8": "clipart8", "fashion_mnist_2k": "Fashion-MNIST 2k",
                    "fashion_mnist_20k": "Fashion-MNIST 20k"}


def strategy_table() -> str:
    """Every strategy's test accuracy per dataset, from ``bench/results/advisor_vs_best.json``; the best
    of each column in bold."""
    results = json.loads(advisor.BENCH_RESULTS.read_text())
    cells: dict[str, dict[str, float]] = {row: {} for row in STRATEGY_ROWS}
    for key, value in results.items():
        dataset, _, settings = key.partition("|")
        for row, matches in STRATEGY_ROWS.items():
            if dataset in STRATEGY_COLUMNS and matches(json.loads(settings)):
                cells[row][dataset] = max(cells[row].get(dataset, 0.0), value["accuracy"])
    best = {d: max((c[d] for c in cells.values() if d in c), default=None) for d in STRATEGY_COLUMNS}
    lines = ["| strategy | " + " | ".join(STRATEGY_COLUMNS.values()) + " |",
             "| --- |" + " --- |" * len(STRATEGY_COLUMNS)]
    for row, values in cells.items():
        shown = []
        for dataset in STRATEGY_COLUMNS:
            value = values.get(dataset)
            text = "-" if value is None else f"{value:.3f}"
            shown.append(f"**{text}**" if value is not None and value == best[dataset] else text)
        lines.append(f"| {row} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def advisor_lesson() -> str:
    """What the bench taught the advisor about the large/different cell, from :data:`advisor.BENCH`."""
    large = advisor.BENCH["large"]
    lost = 100 * (large["earlier_features"] - large["scratch"])
    return (f"""What the runs taught the advisor: the textbook cell "large data, different domain: train from
scratch" lost here by {lost:.0f} points: at {large['per_class']:,} images per class a MobileNet from random weights reached
{large['scratch']:.2f} while frozen features from an earlier block reached {large['earlier_features']:.2f} (the last layer at 32 px has mostly
dead units: {large['last_layer']:.2f}); fine-tuning, which keeps ImageNet's BatchNorm statistics, did worst on this
domain. So from scratch is now recommended only from {advisor.SCRATCH_MIN_PER_CLASS:,} images per class, and a different
domain always gets the layer comparison.""")


def backbone_table() -> str:
    """Every registered backbone: its name, ImageNet top-1 and size (Keras Applications' table, kept in
    the registry), input size, and the weights files looked for in TL_WEIGHTS_DIR."""
    from tl_core.backbones import BACKBONES

    lines = ["| backbone | ImageNet top-1 | parameters | input | file in `TL_WEIGHTS_DIR` (either name) |",
             "| --- | --- | --- | --- | --- |"]
    for spec in sorted(BACKBONES.values(), key=lambda s: s.imagenet_top1):
        files = " or ".join(f"`{name}`" for name in spec.weights_files)
        lines.append(f"| `{spec.name}` ({spec.title}) | {spec.imagenet_top1:.1%} | {spec.params_m:g}M | "
                     f"{spec.input_size} px | {files} |")
    return "\n".join(lines)


RESULTS = REPO / "bench" / "results"
DATASET_TITLES = {"clipart8": "clipart8, 224 px", "fashion_mnist_2k": "fashion_mnist_2k, 64 px"}


def _ci(summary: dict) -> str:
    return f"{summary['mean']:.3f} ({summary['ci'][0]:.3f}-{summary['ci'][1]:.3f})"


def _points(verdict: dict) -> str:
    low, high = (100 * v for v in verdict["ci"])
    return f"{100 * verdict['difference']:+.1f} points ({low:+.1f} to {high:+.1f})"


def recipe_table() -> str:
    """The default feature extractor against the recipe before it, from ``recipe_vs_baseline.json`` (seeds
    42-46) and, when there, ``recipe_vs_baseline_fresh.json`` (splits never used to choose the recipe)."""
    lines = ["| dataset | splits (seeds) | before: stretched, last layer, head on training | refit on train + val "
             "(alone) | the default | default - before (95% CI) | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for file in ("recipe_vs_baseline.json", "recipe_vs_baseline_fresh.json"):
        path = RESULTS / file
        if not path.exists():
            continue
        for result in json.loads(path.read_text())["results"]:
            seeds = [row["seed"] for row in result["seeds"]]
            cuts = sorted({row["default"]["feature_cut"] for row in result["seeds"]})
            where = "the last layer on every split" if cuts == [0] else \
                f"{' or '.join(str(c) for c in cuts if c)} blocks down" + (" or the last layer" if 0 in cuts else "")
            s, paired = result["summary"], result["paired"]["default"]
            lines.append(f"| {DATASET_TITLES.get(result['dataset'], result['dataset'])} | {len(seeds)} ({seeds[0]}-{seeds[-1]}) "
                         f"| {_ci(s['before'])} | {_ci(s['refit'])} | {_ci(s['default'])}: {where} | "
                         f"{_points(paired)} | {paired['verdict']} |")
    return "\n".join(lines)


def lpft_table() -> str:
    """Feature extractor, two-stage (new layer first) and LP-FT on the same splits, from ``lpft_vs_two_stage.json``."""
    lines = ["| dataset | feature extractor (softmax) | two-stage, new layer first | two-stage from the probe (LP-FT) | "
             "LP-FT vs the feature extractor |", "| --- | --- | --- | --- | --- |"]
    for result in json.loads((RESULTS / "lpft_vs_two_stage.json").read_text())["results"]:
        summary = result["summary"]
        by_label = {s["label"]: s for s in summary["strategies"]}
        fe = next(s for label, s in by_label.items() if label.startswith("Feature extractor"))
        lpft = next(s for label, s in by_label.items() if "LP-FT" in label)
        first = next(s for label, s in by_label.items() if label.startswith("Two-stage") and "LP-FT" not in label)
        cell = lambda s: f"{s['mean_accuracy']:.3f} ({s['accuracy_ci'][0]:.3f}-{s['accuracy_ci'][1]:.3f})"  # noqa: E731
        verdict = next(v for v in summary["verdicts"] if {v["a"], v["b"]} == {fe["label"], lpft["label"]})
        sign = 1 if verdict["a"] == lpft["label"] else -1
        said = {"better": "better", "worse": "worse"}.get(verdict["verdict"], "tied") if sign == 1 else \
            {"better": "worse", "worse": "better"}.get(verdict["verdict"], "tied")
        low, high = sorted(sign * 100 * v for v in verdict["ci"])
        lines.append(f"| {DATASET_TITLES.get(result['dataset'], result['dataset'])} | {cell(fe)} | {cell(first)} | "
                     f"{cell(lpft)} | {said}, {sign * 100 * verdict['difference']:+.1f} points ({low:+.1f} to {high:+.1f}) |")
    return "\n".join(lines)


def compare_table() -> str:
    """``python -m tl_core compare`` on clipart8 with its defaults, from ``compare_clipart8.json``: each
    strategy's mean and interval over its splits, best group starred, flags, and every paired verdict."""
    path = RESULTS / "compare_clipart8.json"
    if not path.exists():
        return "(run the command below to fill this table)"
    result = json.loads(path.read_text())
    lines = ["| strategy (MobileNet, 224 px) | splits (seeds) | mean test accuracy (95% CI) | per split | mean time a run |",
             "| --- | --- | --- | --- | --- |"]
    for s in result["strategies"]:
        flagged = ", **flagged**" if s["flagged"] else ""
        mean = f"**{s['mean_accuracy']:.3f}**" if s["best"] else f"{s['mean_accuracy']:.3f}"
        lines.append(f"| {'★ ' if s['best'] else ''}{s['label']} | {s['n_splits']} ({s['seeds'][0]}-{s['seeds'][-1]}) "
                     f"| {mean} ({s['accuracy_ci'][0]:.3f}-{s['accuracy_ci'][1]:.3f}){flagged} "
                     f"| {', '.join(f'{a:.3f}' for a in s['accuracies'])} | {s['seconds']:.1f} s |")
    guesses = sorted({round(g, 3) for s in result["strategies"] for g in s["majority_baselines"]})
    lines += ["", f"Always guessing the largest class scores {', '.join(f'{g:.3f}' for g in guesses)} on these splits. "
              "★ is the best group: every strategy no other is measurably better than. The paired verdicts, "
              "on the same test images:", ""]
    lines += [f"- {v['sentence']}" for v in result["verdicts"]]
    return "\n".join(lines)


def first_result_phrases() -> list[str]:
    """The time-to-first-result figures of the Performance table, from ``first_result.json``: the
    headline and where the time went (each part's mean over the rounds)."""
    result = json.loads((RESULTS / "first_result.json").read_text())

    def parts(key: str) -> str:
        rounds = result["results"][key]
        precision = rounds[0].get("precision", "float32")
        shown = []
        for name, _ in rounds[0]["parts"]:
            seconds = sum(dict(r["parts"])[name] for r in rounds) / len(rounds)
            shown.append(f"{name} {seconds:.1f} s" + (f" ({precision})" if name == "extract" and precision != "float32"
                                                       else ""))
        return ", ".join(shown)

    before, after = result["mean_seconds"]["before"], result["mean_seconds"]["after"]
    return [f"**{before:.1f} s -> {after:.1f} s = {after / before:.2f}x ({100 * (1 - after / before):.0f}% sooner)**",
            f"Where it went, before: {parts('before')}; after: {parts('after')}."]


def memory_phrases() -> list[str]:
    """The app server + worker memory figures (Performance table and hosted mode), from
    ``memory_server_worker.txt``."""
    text = (RESULTS / "memory_server_worker.txt").read_text()
    total, server, worker = (re.search(pattern, text).group(1) for pattern in (
        r"server \+ worker peaks: ([\d.]+) GB", r"server peak:\s+([\d.]+) GB", r"worker peak:\s+([\d.]+) GB"))
    return [f"**{total} GB** (server {server} GB, worker {worker} GB)",
            f"the app server and its training worker peak at {total} GB fine-tuning MobileNetV2"]


def advice_time_phrases() -> list[str]:
    return [f"It takes about {advisor.ADVICE_TIME}:"]


def threshold_phrases() -> list[str]:
    """The thresholds and defaults the README quotes, from the constants the code uses."""
    from tl_core.calibration import COVERAGE, NOT_SURE_BELOW
    from tl_core.config import COMPARE_COSTLY_SPLITS, COMPARE_FEATURE_SPLITS, DEFAULT_MAX_PIXELS, QuotaConfig
    from tl_core.export import REQUIRED_AGREEMENT
    from tl_core.novelty import NOVELTY_MAX_ROWS, NOVELTY_QUANTILE

    quota = QuotaConfig()
    compare_runs = 2 * COMPARE_FEATURE_SPLITS + 2 * COMPARE_COSTLY_SPLITS  # two heads; fine-tuning and from scratch
    return [f"classes that holds the right one for {COVERAGE:.0%} of pictures like the training ones",
            f"when the top class is under {NOT_SURE_BELOW:.0%}",
            f"limit is the distance {NOVELTY_QUANTILE:.0%} of the validation images stay under",
            f"at most {NOVELTY_MAX_ROWS:,} images a split",
            f"| TFLite float32 | RGB 0-255 at the model's size (resize first; the card says how) | at least "
            f"{REQUIRED_AGREEMENT['tflite']:.0%} |",
            f"An image over {DEFAULT_MAX_PIXELS / 1e6:g} megapixels (configurable)",
            f"| `TL_QUOTA_DATASET_MB` | {quota.dataset_mb:g} |", f"| `TL_QUOTA_QUEUED_RUNS` | {quota.queued_runs} |",
            f"| `TL_QUOTA_RUN_EPOCHS` | {quota.run_epochs:g} |", f"a comparison ({compare_runs} runs by default)"]


# Figures inside sentences and table rows, which a block cannot hold: checked, not rewritten.
PHRASES = {"first-result": first_result_phrases, "memory": memory_phrases, "advice-time": advice_time_phrases,
           "thresholds": threshold_phrases}


def missing_phrases(text: str) -> list[str]:
    """The :data:`PHRASES` that ``text`` does not contain (whitespace and line breaks aside)."""
    flat = " ".join(text.split())
    return [f"{name}: {phrase}" for name, make in PHRASES.items() for phrase in make()
            if " ".join(phrase.split()) not in flat]


BLOCKS = {"advisor-thresholds": advisor_thresholds, "advisor-strategies": strategy_table,
          "advisor-lesson": advisor_lesson, "backbones": backbone_table, "recipe": recipe_table,
          "lpft": lpft_table, "compare": compare_table}


def render(text: str) -> str:
    """``text`` with every marked block replaced by its rendering."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- facts:{name} -->\n)(?:.*?\n)?(<!-- /facts:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no block '{name}' (<!-- facts:{name} --> ... <!-- /facts:{name} -->).")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date; change nothing")
    args = parser.parse_args()
    current = README.read_text()
    rendered = render(current)
    missing = missing_phrases(rendered)
    for phrase in missing:
        print(f"README.md lacks this figure from its source (edit the sentence by hand): {phrase}", file=sys.stderr)
    if args.check:
        if rendered != current:
            print("README.md's facts blocks are out of date: run python bench/readme_facts.py", file=sys.stderr)
            return 1
        return 1 if missing else 0
    README.write_text(rendered)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
