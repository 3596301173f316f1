"""The command line as a user (or a script) runs it: a real subprocess, JSON on the last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import MOBILENET_NOTOP, REPO, SHARED_WEIGHTS, make_toy_folder


def cli(*args, data_dir, check=True, extra_env=None):
    env = {**os.environ, "TL_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO), **(extra_env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "tl_core", *args], capture_output=True, text=True, env=env, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def last_json(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_inspect_train_runs_show(tmp_path):
    root = make_toy_folder(tmp_path / "toy", n_per_class=6)
    (root / "red" / "broken.png").write_bytes(b"nope")
    data_dir = tmp_path / "store"

    report = last_json(cli("inspect", "--data", str(root), "--json", data_dir=data_dir))
    assert report["n_images"] == 18 and report["n_classes"] == 3
    assert report["per_class"] == {"blue": 6, "green": 6, "red": 6}
    assert report["skipped"][0]["file"] == "red/broken.png"
    assert report["duplicates"] == []

    proc = cli(
        "train", "--data", str(root), "--backbone", "vgg16", "--strategy", "feature_extractor",
        "--head", "ovr", "--weights", "none", "--image-size", "32", "--seed", "3", "--json",
        data_dir=data_dir,
    )
    result = last_json(proc)
    assert result["status"] == "succeeded" and len(result["run_id"]) == 22
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["seconds"] > 0
    assert "Extracting features" in proc.stderr  # the progress bar went to standard error

    runs = last_json(cli("runs", "--json", data_dir=data_dir))["runs"]
    assert [r["run_id"] for r in runs] == [result["run_id"]] and runs[0]["head"] == "ovr"
    shown = last_json(cli("show", result["run_id"], "--json", data_dir=data_dir))
    assert shown["config"]["train"]["seed"] == 3 and shown["metrics"]["test_accuracy"] == result["test_accuracy"]


def test_errors_are_messages_with_a_nonzero_exit(tmp_path):
    proc = cli("show", "not-a-run", "--json", data_dir=tmp_path, check=False)
    assert proc.returncode == 2
    assert "is not a run id" in last_json(proc)["error"] and "Traceback" not in proc.stderr

    proc = cli("inspect", "--data", str(tmp_path / "missing"), data_dir=tmp_path, check=False)
    assert proc.returncode == 2 and "No folder or zip file" in proc.stderr

    root = make_toy_folder(tmp_path / "toy", n_per_class=2)
    proc = cli("train", "--data", str(root), "--weights", "none", "--image-size", "32", "--json", data_dir=tmp_path, check=False)
    result = last_json(proc)
    assert proc.returncode == 1 and result["status"] == "failed"
    assert "at least 3 per class" in result["error"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--help"], ["--json", "--feature-cut", "--no-stage-cache", "--no-accelerate", "--no-start-from-probe"]),
        (["advise", "--help"], ["--sample", "--image-size", "--no-rank"]),
        (["--help"], ["inspect", "advise", "train"]),
    ],
)
def test_help_lists_the_options(argv, expected, tmp_path):
    out = cli(*argv, data_dir=tmp_path).stdout
    assert all(option in out for option in expected), out


@pytest.mark.skipif(not MOBILENET_NOTOP.is_file(), reason="../shared/weights (real MobileNet ImageNet weights) is absent")
def test_compare_runs_every_strategy_on_the_same_splits_and_gives_verdicts(tmp_path):
    root = make_toy_folder(tmp_path / "toy", n_per_class=10)
    env_weights = {"TL_WEIGHTS_DIR": str(SHARED_WEIGHTS)}
    proc = cli(
        "compare", "--data", str(root), "--image-size", "32", "--epochs", "2", "--fine-tune-epochs", "1",
        "--unfreeze-blocks", "0", "--splits", "1", "--feature-splits", "3", "--json",
        data_dir=tmp_path / "store", extra_env=env_weights,
    )
    result = last_json(proc)
    runs = result["runs"]
    # Split by split: the first split of every strategy first, then the heads' extra splits.
    assert [(r["strategy"], r["head"], r["split_seed"]) for r in runs] == [
        ("feature_extractor", "softmax", 42), ("feature_extractor", "ovr", 42), ("finetune", "softmax", 42),
        ("scratch", "softmax", 42), ("feature_extractor", "softmax", 43), ("feature_extractor", "ovr", 43),
        ("feature_extractor", "softmax", 44), ("feature_extractor", "ovr", 44),
    ]
    assert all(r["status"] == "succeeded" for r in runs)
    assert all(r["n_test"] == 6 and len(r["test_accuracy_ci"]) == 2 for r in runs)
    strategies = {s["label"]: s for s in result["strategies"]}
    assert set(strategies) == {"Feature extractor (softmax)", "Feature extractor (ovr)",
                               "Two-stage fine-tuning (LP-FT)", "From scratch"}
    softmax = strategies["Feature extractor (softmax)"]
    assert softmax["seeds"] == [42, 43, 44] and len(softmax["accuracies"]) == 3
    assert softmax["mean_accuracy"] == pytest.approx(sum(softmax["accuracies"]) / 3)
    assert softmax["accuracy_ci"][0] <= softmax["mean_accuracy"] <= softmax["accuracy_ci"][1]
    assert strategies["From scratch"]["accuracies"] == [r["test_accuracy"] for r in runs if r["strategy"] == "scratch"]
    # One verdict per pair of strategies; the best group holds the best mean and whatever ties with it.
    assert len(result["verdicts"]) == 6
    assert {v["verdict"] for v in result["verdicts"]} <= {"better", "worse", "tied"}
    assert result["best"][0] == result["strategies"][0]["label"]
    shown = last_json(cli("show", runs[2]["run_id"], "--json", data_dir=tmp_path / "store"))
    assert shown["config"]["train"]["unfreeze_blocks"] == 2  # "0 = skip stage 2" is not a two-stage run
    assert len(shown["epochs"]["stage2"]) == 1
    assert last_json(cli("show", runs[3]["run_id"], "--json", data_dir=tmp_path / "store"))["config"]["train"]["weights"] == "none"


def test_the_cli_defaults_are_the_train_configs_and_the_export_formats_are_the_engines():
    from tl_core.__main__ import _train_config, build_parser
    from tl_core.config import EXPORT_FORMATS, TrainConfig

    parser = build_parser()
    assert _train_config(parser.parse_args(["train", "--data", "x"])) == TrainConfig()
    export = parser.parse_args(["export", "RUN", "--format", EXPORT_FORMATS[-1], "--out", "x"])
    assert export.format == EXPORT_FORMATS[-1]


def test_train_json_reports_the_calibration_and_the_precision(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO, make_toy_folder

    root = make_toy_folder(tmp_path / "toy", n_per_class=12)
    done = subprocess.run([sys.executable, "-m", "tl_core", "train", "--data", str(root), "--backbone", "vgg16",
                           "--weights", "none", "--image-size", "32", "--precision", "float32", "--json", "--quiet",
                           "--data-dir", str(tmp_path / "store")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["precision"] == "float32"
    assert set(result["calibration"]) >= {"temperature", "ece_before", "ece_after", "threshold", "test_coverage"}
