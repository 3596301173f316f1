"""Exports of a run: the HTML report, and model files in every format checked against the app's model."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from tl_core.config import TrainConfig
from tl_core.errors import ExportError
from tl_core.export import FORMATS, export_run, html_report, model_card, tflite_interpreter
from tl_core.model_files import load_model_file, model_file
from tl_core.export import test_split as run_test_split  # not collected as a test
from tl_core.runner import run_training


def test_html_report_is_self_contained_and_carries_the_figures(toy_folder, store):
    run = run_training(toy_folder, TrainConfig(backbone="vgg16", weights="none", image_size=32), store=store)
    html = html_report(run)
    assert html.startswith("<!doctype html>")
    assert f"{run['metrics']['test_accuracy']:.1%}" in html
    assert "Confusion matrix" in html and "plotly" in html.lower()
    assert "<script src=\"http" not in html  # Plotly is inlined: the file works offline
    assert model_file(run).name == "model.keras"
    failed = {**run, "status": "failed"}
    assert model_file(failed) is None


# ----------------------------------------------------------------------------- checked exports

@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_folder):
    from tl_core.store import RunStore

    store = RunStore(tmp_path_factory.mktemp("exports"))
    config = TrainConfig(backbone="vgg16", weights="none", image_size=32, strategy="feature_extractor")
    run = run_training(toy_folder, config, store=store)
    # A model that learned (it does not predict one class for all): agreement figures mean something.
    assert run["status"] == "succeeded" and run["metrics"]["test_accuracy"] >= 0.6
    return store, run


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_exported_loaded_back_and_checked(trained, fmt, tmp_path):
    store, run = trained
    result = export_run(run, fmt, tmp_path / "model")
    assert result["n_test"] == run["metrics"]["n_test"] > 0
    assert result["app_accuracy"] == pytest.approx(run["metrics"]["test_accuracy"])
    assert result["accuracy"] >= 0.6  # the export itself classifies, through a fresh object
    if fmt in ("keras", "savedmodel"):
        assert result["agreement"] == 1.0 and result["passed"]
        # The original pictures (40 x 40) at their own size: the export resizes them itself.
        assert result["agreement_any_size"] >= 0.8
    elif fmt == "tflite":
        assert result["agreement"] >= 0.99 and result["passed"] and result["agreement_any_size"] is None
    else:  # int8: not required, reported as measured; dynamic-range quantisation keeps most answers
        assert result["required_agreement"] is None and result["passed"] and result["agreement"] >= 0.8
    card = json.loads(open(f"{result['path']}.card.json").read())
    assert card["data"]["classes"] == run["metrics"]["class_names"]
    assert card["data"]["fingerprint"] == run["dataset"]["fingerprint"]
    assert card["metrics"]["confusion_matrix"] == run["metrics"]["confusion_matrix"]
    assert card["export"]["agreement"] == result["agreement"] and card["versions"]["tensorflow"]
    assert "## Use it" in open(result["card"]).read()


def test_an_exports_test_split_can_stay_on_disk_and_its_files_are_read_only_when_needed(trained, tmp_path):
    _, run = trained
    x, y, items = run_test_split(run)
    mapped, y_mapped, items_mapped = run_test_split(run, tmp_path)  # what an export uses
    assert type(x) is np.ndarray and isinstance(mapped, np.memmap)
    assert Path(mapped.filename).parent == tmp_path.resolve()
    np.testing.assert_array_equal(mapped, x)
    np.testing.assert_array_equal(y_mapped, y)
    names = [item.name for item in items]
    assert names == [item.name for item in items_mapped] and len(names) == run["metrics"]["n_test"]
    assert Image.open(io.BytesIO(items[0].read_bytes())).size == (40, 40)  # the original file


def test_the_keras_export_takes_pixels_of_any_size(trained, tmp_path, toy_folder):
    store, run = trained
    result = export_run(run, "keras", tmp_path / "model.keras")
    exported, original = load_model_file(result["path"]), load_model_file(run["model_path"])
    photo = np.asarray(Image.open(next((toy_folder / "red").iterdir())).convert("RGB"), dtype=np.float32)
    big = np.asarray(Image.fromarray(photo.astype(np.uint8)).resize((150, 110)), dtype=np.float32)
    assert exported.predict(big[None], verbose=0).shape == (1, len(run["metrics"]["class_names"]))
    size = run["metrics"]["image_size"]
    same = np.asarray(Image.fromarray(photo.astype(np.uint8)).resize((size, size)), dtype=np.float32)[None]
    np.testing.assert_allclose(exported.predict(same, verbose=0), original.predict(same, verbose=0), atol=1e-5)


def test_the_usage_snippet_of_the_tflite_card_runs(trained, tmp_path, toy_folder):
    store, run = trained
    result = export_run(run, "tflite", tmp_path / "model")
    snippet = json.loads(open(f"{result['path']}.card.json").read())["usage"]
    photo = next((toy_folder / "blue").iterdir())
    script = snippet.replace('"photo.jpg"', repr(str(photo))).replace(
        f'"{os.path.basename(result["path"])}"', repr(result["path"]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.strip().splitlines()[-1] in run["metrics"]["class_names"]
    assert tflite_interpreter(result["path"]) is not None


def test_an_export_whose_test_images_are_gone_is_refused(trained, tmp_path):
    store, run = trained
    moved = {**run, "config": {**run["config"], "source": str(tmp_path / "gone")}}
    with pytest.raises(ExportError, match="cannot be checked"):
        export_run(moved, "keras", tmp_path / "model.keras")
    with pytest.raises(ExportError, match="Unknown export format"):
        export_run(run, "onnx", tmp_path / "model.onnx")
    (tmp_path / "mine" / "notes.txt").parent.mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="other files in it"):  # never deletes a user's folder
        export_run(run, "savedmodel", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_export_command_prints_path_agreement_and_accuracy(trained, tmp_path):
    store, run = trained
    out = subprocess.run(
        [sys.executable, "-m", "tl_core", "export", run["id"], "--format", "tflite-int8", "--out",
         str(tmp_path / "m.tflite"), "--data-dir", str(store.data_dir), "--json"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-1500:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["path"] == str(tmp_path / "m.tflite") and os.path.getsize(last["path"]) > 0
    assert last["agreement"] >= 0.8 and last["accuracy"] >= 0.6 and os.path.isfile(last["card"])


def test_the_report_and_card_read_the_split_and_settings_in_words(trained, tmp_path):
    _, run = trained
    split = run["metrics"]["split"]
    words = f"{split['train']} training / {split['val']} validation / {split['test']} test images"
    report = html_report(run)
    assert words in report and "{'train'" not in report
    cut = run["metrics"]["feature_cut"]  # the default: chosen by cross-validation
    where = f"{cut} blocks below the top" if cut else "the last layer"
    assert f"<td>Features from</td><td>{where} (chosen by cross-validation)</td>" in report
    assert "fine_tune_learning_rate" not in report
    card, _ = model_card(run, {"format": "keras", "path": str(tmp_path / "model.keras"), "bytes": 1, "agreement": 1.0,
                               "accuracy": 1.0, "app_accuracy": 1.0, "n_test": split["test"], "passed": True,
                               "required_agreement": 1.0})
    assert f"## Split\n{words} (stratified" in card
