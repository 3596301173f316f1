"""Command line: ``python -m tl_core {inspect,advise,train,compare,runs,show,worker,cancel,...} [--json]``.

With ``--json`` the last line of standard output is one JSON object (the contract scripts and
checks rely on); progress bars go to standard error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tl_core.config import (
    COMPARE_COSTLY_SPLITS,
    COMPARE_FEATURE_SPLITS,
    COMPARE_MAX_SPLITS,
    EXPORT_FORMATS,
    HEADS,
    PRECISIONS,
    RESIZE_MODES,
    STRATEGIES,
    DataConfig,
    TrainConfig,
)
from tl_core.datasets import with_local_source
from tl_core.errors import TLCoreError
from tl_core.progress import EPOCH_STAGES, STAGE_TITLES


class TerminalProgress:
    """A tqdm bar per stage on standard error; Ctrl-C is handled by the caller."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars: dict[str, tqdm] = {}

    def on_stage_start(self, stage: str, total: int) -> None:
        if self.enabled and not stage.endswith(".epoch"):  # one bar per stage, not per epoch
            unit = "epoch" if stage in EPOCH_STAGES else "img"
            self.bars[stage] = tqdm(total=total, desc=STAGE_TITLES.get(stage, stage), unit=unit, file=sys.stderr)

    def on_step(self, stage: str, step: int, logs: dict[str, Any] | None = None) -> None:
        bar = self.bars.get(stage)
        if bar is not None:
            bar.update(step - bar.n)
            if logs:
                shown = {k: f"{v:.3f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy")}
                if shown:
                    bar.set_postfix(shown)

    def on_stage_end(self, stage: str, logs: dict[str, Any] | None = None) -> None:
        bar = self.bars.pop(stage, None)
        if bar is not None:
            bar.close()

    def should_stop(self) -> bool:
        return False


def _store(args):
    from tl_core.store import RunStore

    return RunStore(args.data_dir) if args.data_dir else RunStore()


def cmd_inspect(args) -> dict[str, Any]:
    from tl_core.data import inspect_dataset

    report = inspect_dataset(args.data, DataConfig(max_pixels=args.max_pixels), TerminalProgress(not args.quiet))
    if not args.json:
        print(f"{report['n_images']} images in {report['n_classes']} classes")
        for name, count in report["per_class"].items():
            print(f"  {name:<24} {count}")
        for item in report["skipped"]:
            print(f"  skipped {item['file']}: {item['reason']}")
        for group in report["duplicates"]:
            print(f"  duplicate{' (different labels!)' if group['cross_class'] else ''}: {', '.join(group['files'])}")
        for warning in report["warnings"]:
            print(f"  warning: {warning}")
    return report


def cmd_advise(args) -> dict[str, Any]:
    from tl_core.advisor import advise

    result = advise(args.data, args.backbone, args.weights, args.sample, not args.no_rank,
                    DataConfig(max_pixels=args.max_pixels), image_size=args.image_size, precision=args.precision,
                    cache_dir=_store(args).cache_dir)
    if not args.json:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in result["similarity_parts"].items() if v is not None)
        print(f"{result['n_images']} images, {result['n_classes']} classes, smallest class {result['min_per_class']} "
              f"(median {result['median_per_class']:g}) -> {result['size']} data")
        print(f"similarity to ImageNet {result['similarity']:.2f} ({parts}) -> {result['domain']} domain")
        print(f"recommended: {result['cell']}  settings: {json.dumps(result['settings'])}")
        for reason in result["reasons"]:
            print(f"  - {reason}")
        if len(result["ranking"]) > 1:
            print("backbones by LogME: " + ", ".join(f"{r['title']} {r['logme']:.3f}" for r in result["ranking"]))
        print(f"({result['seconds']:.1f} s)")
    return result


def cmd_label_issues(args) -> dict[str, Any]:
    from tl_core.label_issues import label_issues_for

    progress = TerminalProgress(not args.quiet)
    issues = label_issues_for(args.data, backbone=args.backbone, weights=args.weights, image_size=args.image_size,
                              data_config=DataConfig(max_pixels=args.max_pixels), cache_dir=_store(args).cache_dir,
                              progress=progress, precision=args.precision)
    if not args.json:
        print(f"{len(issues)} image(s) whose label the other images' evidence contradicts, most likely first:")
        for issue in issues[: args.top]:
            print(f"  {issue.score:.2f}  {issue.file}: labelled {issue.given!r}, looks like {issue.suggested!r}")
    return {"issues": [issue.to_dict() for issue in issues]}


def _train_config(args) -> TrainConfig:
    return TrainConfig(
        backbone=args.backbone,
        strategy=args.strategy,
        head=args.head,
        feature_cut=getattr(args, "feature_cut", TrainConfig.feature_cut),
        weights=args.weights,
        image_size=args.image_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        unfreeze_blocks=args.unfreeze_blocks,
        learning_rate=args.learning_rate,
        fine_tune_learning_rate=args.fine_tune_learning_rate,
        augment=args.augment,
        start_from_probe=args.start_from_probe,
        cache_stages=not args.no_stage_cache,
        accelerate=not args.no_accelerate,
        seed=args.seed,
        precision=args.precision,
    )


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    metrics = run.get("metrics") or {}
    summary = {
        "run_id": run["id"],
        "status": run["status"],
        "error": run.get("error"),
        "test_accuracy": metrics.get("test_accuracy"),
        "macro_f1": metrics.get("macro_f1"),
        "seconds": metrics.get("seconds"),
        "precision": metrics.get("precision"),
        # temperature, ece_before, ece_after, threshold, coverage, test_coverage, mean_set_size
        "calibration": {k: v for k, v in (metrics.get("calibration") or {}).items() if not k.startswith("reliability")}
        or None,
        "model_path": run["model_path"] if run["status"] == "succeeded" else None,
    }
    if metrics.get("confusion_matrix"):  # n_test, test_accuracy_ci, macro_f1_ci, majority_baseline, flags
        from tl_core.metrics import reliability  # scipy and scikit-learn: not in the idle worker

        summary.update(reliability(metrics))
    return summary


def _print_accuracy(run: dict[str, Any]) -> None:
    from tl_core.metrics import accuracy_text, reliability  # scipy and scikit-learn: not in the idle worker

    metrics = run["metrics"]
    print(f"test accuracy {accuracy_text(metrics)}, macro F1 {metrics['macro_f1']:.3f}")
    for flag in reliability(metrics, macro_f1=False)["flags"]:
        print(f"  warning: {flag}")


def cmd_train(args) -> dict[str, Any]:
    from tl_core.runner import run_training

    data_config = DataConfig(max_pixels=args.max_pixels, seed=args.seed, resize=args.resize)
    run = run_training(args.data, _train_config(args), data_config, _store(args), TerminalProgress(not args.quiet), name=args.name)
    result = _summary(run)
    if not args.json:
        if run["status"] == "succeeded":
            print(f"run {run['id']} succeeded in {result['seconds']:.1f} s")
            _print_accuracy(run)
        else:
            print(f"run {run['id']} {run['status']}: {run.get('error')}")
    if run["status"] != "succeeded":
        args.exit_code = 1
    return result


def cmd_compare(args) -> dict[str, Any]:
    import uuid

    from tl_core import comparison
    from tl_core.runner import run_training

    store = _store(args)
    group = uuid.uuid4().hex[:8]
    planned = comparison.plan(_train_config(args).validate(),
                              DataConfig(max_pixels=args.max_pixels, seed=args.seed, resize=args.resize).validate(),
                              costly_splits=args.splits, feature_splits=args.feature_splits)
    runs = []
    for config, data_config in planned:
        run = run_training(args.data, config, data_config, store, TerminalProgress(not args.quiet), name=args.name,
                           group=group)
        runs.append(run)
    summary = comparison.summarize(store, runs)
    if not args.json:
        print(f"{'strategy':<30} {'splits':>6} {'mean acc':>8}  95% CI        {'seconds':>8}")
        for s in summary["strategies"]:
            print(f"{('* ' if s['best'] else '  ') + s['label']:<30} {s['n_splits']:>6} {s['mean_accuracy']:>8.3f}  "
                  f"{s['accuracy_ci'][0]:.3f}-{s['accuracy_ci'][1]:.3f}  {s['seconds']:>8.1f}")
        print("* best group: the best mean and every strategy tied with it")
        for verdict in summary["verdicts"]:
            print(verdict["sentence"])
        for run in runs:
            if run["status"] != "succeeded":
                print(f"{run['id']} {run['status']}: {run.get('error')}")
    if any(run["status"] != "succeeded" for run in runs):
        args.exit_code = 1
    return {
        "group": group,
        "runs": [_summary(run) | {"strategy": run["config"]["train"]["strategy"], "head": run["config"]["train"]["head"],
                                  "split_seed": run["config"]["data"]["seed"]} for run in runs],
        **summary,
    }


def cmd_runs(args) -> dict[str, Any]:
    runs = _store(args).list_runs()
    rows = []
    for run in runs:
        metrics, config = run.get("metrics") or {}, (run.get("config") or {}).get("train", {})
        rows.append(
            {
                "run_id": run["id"],
                "status": run["status"],
                "strategy": config.get("strategy"),
                "backbone": config.get("backbone"),
                "head": config.get("head") if config.get("strategy") == "feature_extractor" else None,
                "test_accuracy": metrics.get("test_accuracy"),
                "macro_f1": metrics.get("macro_f1"),
                "seconds": metrics.get("seconds"),
                "created_at": run["created_at"],
            }
        )
    if not args.json:
        for row in rows:
            acc = f"{row['test_accuracy']:.3f}" if row["test_accuracy"] is not None else "-"
            print(f"{row['run_id']}  {row['status']:<9}  {row['strategy'] or '-':<17}  {row['backbone'] or '-':<14}  acc {acc}")
    return {"runs": rows}


def cmd_show(args) -> dict[str, Any]:
    run = _store(args).get_run(args.run_id)
    if not args.json:
        print(json.dumps({k: run[k] for k in ("id", "status", "error", "config")}, indent=2))
        if (run.get("metrics") or {}).get("confusion_matrix"):
            _print_accuracy(run)
    return run


def cmd_worker(args) -> dict[str, Any]:
    if args.standby:  # started ahead by an idle worker: waits for a run id on its input
        from tl_core.execution import standby_for_worker

        return {"status": standby_for_worker(args.data_dir, worker_pid=args.worker_pid)}
    if args.run:  # one run the worker claimed, in a fresh process the worker started (its niceness included)
        from tl_core.execution import train_for_worker

        return {"status": train_for_worker(args.data_dir, args.run, worker_pid=args.worker_pid)}
    from tl_core.jobs import lower_priority, run_worker

    lower_priority()  # before its children load TensorFlow: its start-up is CPU-heavy too
    executed = run_worker(_store(args), idle_exit_seconds=args.idle_exit, once=args.once)
    return {"executed": executed}


def cmd_resume(args) -> dict[str, Any]:
    from tl_core.jobs import run_worker

    store = _store(args)
    store.requeue(args.run_id)
    if not args.json:
        print(f"run {args.run_id}: queued again; it goes on from its last completed epoch")
    run_worker(store, once=True)  # runs the queue here, unless the app's worker already does
    while (run := store.get_run(args.run_id))["status"] in ("queued", "running"):
        time.sleep(1.0)
    if not args.json:
        print(f"run {run['id']} {run['status']}" + (f": {run.get('error')}" if run.get("error") else ""))
    if run["status"] != "succeeded":
        args.exit_code = 1
    return _summary(run)


def cmd_export(args) -> dict[str, Any]:
    from tl_core.export import export_run

    store = _store(args)
    run = with_local_source(store, store.get_run(args.run_id))
    store.ensure_local(args.run_id)
    result = export_run(run, args.format, args.out)
    if Path(args.out).resolve().is_relative_to(store.run_dir(args.run_id).resolve()):
        store.publish(args.run_id)  # kept with the run when the disk is wiped
    if not args.json:
        verdict = "passed" if result["passed"] else "FAILED the check"
        print(f"{result['path']}: {args.format}, top-1 agreement {result['agreement']:.1%} with the app's model, "
              f"accuracy {result['accuracy']:.1%} on {result['n_test']} test images ({verdict}); card {result['card']}")
    if not result["passed"]:
        args.exit_code = 1
    return result


def cmd_gradcam(args) -> dict[str, Any]:
    from tl_core.explain import explain_mistakes

    store = _store(args)
    run = with_local_source(store, store.get_run(args.run_id))
    written = explain_mistakes(run, store.ensure_local(args.run_id))
    store.publish(args.run_id)
    if not args.json:
        print(f"{len(written)} heat maps in {store.run_dir(args.run_id) / 'gradcam'}")
    return {"files": [str(p) for p in written]}


def cmd_cancel(args) -> dict[str, Any]:
    status = _store(args).request_cancel(args.run_id)
    if not args.json:
        print(f"run {args.run_id}: {status}{' (stop requested)' if status == 'running' else ''}")
    return {"run_id": args.run_id, "status": status}


PRECISION_HELP = ("the frozen ConvNet's forward passes: auto (bfloat16 where this machine computes it faster, "
                  "measured once), float32 or bfloat16; heads, training and saved models stay float32 "
                  "(default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    from tl_core.advisor import SAMPLE_SIZE
    from tl_core.backbones import BACKBONES

    parser = argparse.ArgumentParser(prog="python -m tl_core", description="Transfer Learning Studio, headless.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    common.add_argument("--data-dir", help="store folder (default: $TL_DATA_DIR or ~/.tl_studio)")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", parents=[common], help="dataset health report")
    inspect.add_argument("--data", required=True, help="folder of class folders, or a .zip")
    inspect.add_argument("--max-pixels", type=int, default=DataConfig.max_pixels)
    inspect.set_defaults(func=cmd_inspect)

    advise = sub.add_parser("advise", parents=[common], help="measure size and domain similarity, recommend a strategy")
    advise.add_argument("--data", required=True, help="folder of class folders, or a .zip")
    advise.add_argument("--backbone", default=TrainConfig.backbone, choices=list(BACKBONES))
    advise.add_argument("--weights", default=TrainConfig.weights, help="imagenet or a weights file path")
    advise.add_argument("--sample", type=int, default=SAMPLE_SIZE, help="images measured (stratified sample)")
    advise.add_argument("--image-size", type=int, default=None, help="size training will use, when not the backbone's own")
    advise.add_argument("--no-rank", action="store_true", help="do not rank the other backbones with weights on disk")
    advise.add_argument("--max-pixels", type=int, default=DataConfig.max_pixels)
    advise.add_argument("--precision", default=TrainConfig.precision, choices=PRECISIONS, help=PRECISION_HELP)
    advise.set_defaults(func=cmd_advise)

    labels = sub.add_parser("label-issues", parents=[common],
                            help="likely label errors (confident learning on out-of-fold predictions), most likely first")
    labels.add_argument("--data", required=True, help="folder of class folders, or a .zip")
    labels.add_argument("--backbone", default=TrainConfig.backbone, choices=list(BACKBONES))
    labels.add_argument("--weights", default=TrainConfig.weights, help="imagenet, none, or a weights file path")
    labels.add_argument("--image-size", type=int, default=None, help="default: the backbone's own (224)")
    labels.add_argument("--max-pixels", type=int, default=DataConfig.max_pixels)
    labels.add_argument("--precision", default=TrainConfig.precision, choices=PRECISIONS, help=PRECISION_HELP)
    labels.add_argument("--top", type=int, default=20, help="how many to print (--json has them all)")
    labels.set_defaults(func=cmd_label_issues)

    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--data", required=True, help="folder of class folders, or a .zip")
    training.add_argument("--backbone", default=TrainConfig.backbone, choices=list(BACKBONES))
    training.add_argument("--weights", default=TrainConfig.weights, help="imagenet, none, or a weights file path")
    training.add_argument("--image-size", type=int, default=None, help="default: the backbone's own (224)")
    training.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    training.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="stage 1 / from-scratch epochs (early stopping)")
    training.add_argument("--fine-tune-epochs", type=int, default=TrainConfig.fine_tune_epochs, help="stage 2 epochs")
    training.add_argument("--unfreeze-blocks", type=int, default=TrainConfig.unfreeze_blocks, help="top blocks unfrozen in stage 2 (-1: all)")
    training.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    training.add_argument("--fine-tune-learning-rate", type=float, default=TrainConfig.fine_tune_learning_rate)
    training.add_argument("--augment", action="store_true")
    training.add_argument("--start-from-probe", action=argparse.BooleanOptionalAction,
                          default=TrainConfig.start_from_probe,
                          help="fine-tuning: stage 1 is the linear probe and stage 2 starts from it (LP-FT); "
                               "--no-start-from-probe trains a new fully connected layer in stage 1 "
                               "(default: %(default)s)")
    training.add_argument("--no-stage-cache", action="store_true",
                          help="fine-tuning: run both stages end to end on pixels (the canonical recipe, slower)")
    training.add_argument("--no-accelerate", action="store_true", help="on a GPU: no mixed precision, no XLA")
    training.add_argument("--seed", type=int, default=TrainConfig.seed)
    training.add_argument("--precision", default=TrainConfig.precision, choices=PRECISIONS, help=PRECISION_HELP)
    training.add_argument("--max-pixels", type=int, default=DataConfig.max_pixels)
    training.add_argument("--resize", default=DataConfig.resize, choices=RESIZE_MODES,
                          help="pad: keep each picture's shape, its margins white (default); stretch: to the square")
    training.add_argument("--name", default=None)

    train = sub.add_parser("train", parents=[common, training], help="train and store one run")
    train.add_argument("--strategy", default=TrainConfig.strategy, choices=STRATEGIES)
    train.add_argument("--head", default=TrainConfig.head, choices=HEADS)
    train.add_argument("--feature-cut", type=int, default=TrainConfig.feature_cut,
                       help="feature extractor: take features this many blocks below the top (0: last layer; "
                            "-1, the default: the last layer or the earlier block LogME ranks first, whichever "
                            "cross-validates better on training + validation)")
    train.set_defaults(func=cmd_train)

    compare = sub.add_parser(
        "compare", parents=[common, training],
        help="feature extractor (softmax, ovr), two-stage fine-tuning and from scratch, on the same repeated "
             "splits, with paired verdicts",
    )
    compare.add_argument("--splits", type=int, default=COMPARE_COSTLY_SPLITS,
                         choices=range(1, COMPARE_MAX_SPLITS + 1), metavar="K",
                         help="splits for two-stage fine-tuning and from scratch: each one trains again "
                              "(default %(default)s)")
    compare.add_argument("--feature-splits", type=int, default=COMPARE_FEATURE_SPLITS,
                         choices=range(1, COMPARE_MAX_SPLITS + 1), metavar="K",
                         help="splits for the feature extractor's heads: nearly free, the features are cached "
                              "(default %(default)s)")
    compare.set_defaults(func=cmd_compare, strategy="feature_extractor", head="softmax")

    runs = sub.add_parser("runs", parents=[common], help="list stored runs")
    runs.set_defaults(func=cmd_runs)

    show = sub.add_parser("show", parents=[common], help="one stored run")
    show.add_argument("run_id")
    show.set_defaults(func=cmd_show)
    worker = sub.add_parser("worker", parents=[common], help="execute queued runs (the app starts this)")
    worker.add_argument("--once", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--idle-exit", type=float, default=600.0, help="seconds idle before exiting")
    worker.add_argument("--run", help=argparse.SUPPRESS)  # the worker's child: train this claimed run
    worker.add_argument("--standby", action="store_true", help=argparse.SUPPRESS)  # the worker's child, started ahead
    worker.add_argument("--worker-pid", type=int, help=argparse.SUPPRESS)
    worker.set_defaults(func=cmd_worker)

    resume = sub.add_parser("resume", parents=[common], help="resume a failed or cancelled run from its last epoch")
    resume.add_argument("run_id")
    resume.set_defaults(func=cmd_resume)
    export = sub.add_parser("export", parents=[common], help="export a run's model, checked against the app's model")
    export.add_argument("run_id")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    export.add_argument("--out", required=True, help="file (or SavedModel folder) to write; the model card goes beside it")
    export.set_defaults(func=cmd_export)
    gradcam = sub.add_parser("gradcam", parents=[common], help="Grad-CAM heat maps of a run's test mistakes")
    gradcam.add_argument("run_id")
    gradcam.set_defaults(func=cmd_gradcam)
    cancel = sub.add_parser("cancel", parents=[common], help="cancel a queued or running run")
    cancel.add_argument("run_id")
    cancel.set_defaults(func=cmd_cancel)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.exit_code = 0
    try:
        result = args.func(args)
    except TLCoreError as err:
        print(f"error: {err}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(err), "type": err.__class__.__name__}))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, default=str))
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
