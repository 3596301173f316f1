"""What a newcomer takes away from Result and Predict: the model as one any-size download whose
snippet runs, settings a person reads, the best run first, and predictions from the camera."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import TOY_COLORS, make_toy_folder, png_bytes
from PIL import Image
from test_pages import _open, app  # noqa: F401 - app: the AppTest fixture

from tl_core import export, model_files
from tl_core.config import DataConfig, TrainConfig
from tl_core.data import prepare_image
from tl_core.runner import run_training


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_folder(tmp_path_factory.mktemp("takeaway"), n_per_class=12)


def _train(folder, store, data_config=DataConfig(), **settings):
    run = run_training(folder, TrainConfig(backbone="vgg16", weights="none", image_size=32, **settings), data_config,
                       store=store)
    assert run["status"] == "succeeded", run.get("error")
    return run


def _settings(app) -> dict[str, str]:
    """The Result page's settings table, its Markdown escapes read back as text."""
    table = app.table[0].value
    return {key: re.sub(r"\\(.)", r"\1", value) for key, value in zip(table.index, table["value"])}


def _non_square_photo(path, color=TOY_COLORS["red"]) -> bytes:
    """A 172 x 307 (height x width) JPEG of the toy's kind: noise around a centred block of one class's colour."""
    pixels = np.random.default_rng(7).integers(0, 90, (172, 307, 3)).astype(np.uint8)
    pixels[43:129, 77:230] = color
    data = png_bytes(Image.fromarray(pixels), "JPEG", quality=95)
    path.write_bytes(data)
    return data


def test_the_downloaded_model_takes_any_size_and_its_snippet_names_the_apps_class(app, toy, store, tmp_path):
    run = _train(toy, store)
    app.query_params["run"] = run["id"]
    _open(app, "result")
    snippet = next(c.value for c in app.code if "load_model" in c.value)  # as the page shows it
    download = next(b for b in app.get("download_button") if b.label.startswith("Download the model"))
    assert ".zip" in download.label

    name = f"model-{run['id'][:8]}.zip"
    assert f'"{name}"' in snippet
    (tmp_path / name).write_bytes(export.take_home(run).read_bytes())  # the bytes the button serves
    with zipfile.ZipFile(tmp_path / name) as bundle:
        assert {"model.keras", "classes.json", "README.md"} <= set(bundle.namelist())
        assert json.loads(bundle.read("classes.json")) == run["metrics"]["class_names"]
        assert f"{run['metrics']['test_accuracy']:.1%} (95% CI " in bundle.read("README.md").decode()  # never alone
    photo = _non_square_photo(tmp_path / "photo.jpg")
    assert Image.open(tmp_path / "photo.jpg").size == (307, 172)

    (tmp_path / "use.py").write_text(snippet)
    proc = subprocess.run([sys.executable, "use.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.strip().splitlines()[-1].rsplit(" (", 1)[0]

    pixels, _ = prepare_image(photo, run["metrics"]["image_size"])  # what the Predict page does
    app_probabilities = np.asarray(model_files.load_model_file(model_files.model_file(run))(pixels[None], training=False))[0]
    assert printed == run["metrics"]["class_names"][int(app_probabilities.argmax())]
    model = model_files.load_model_file(tmp_path / name.removesuffix(".zip") / "model.keras")
    assert tuple(model.input_shape) == (None, None, None, 3)


def test_result_settings_show_what_applied_to_each_strategy_in_words(app, toy, store):
    runs = {
        "feature_extractor": _train(toy, store),
        "finetune": _train(toy, store, strategy="finetune", epochs=1, fine_tune_epochs=1, unfreeze_blocks=1,
                           start_from_probe=False),
        "scratch": _train(toy, store, strategy="scratch", epochs=1),
    }
    shown = {}
    for strategy, run in runs.items():
        app.query_params["run"] = run["id"]
        _open(app, "result")
        shown[strategy] = _settings(app)
        assert not any("_" in key for key in shown[strategy]), shown[strategy]  # no snake_case names
        split = run["metrics"]["split"]
        lines = [m.value for m in app.markdown if "test images" in m.value]
        assert f"{split['train']} training / {split['val']} validation / {split['test']} test images" in lines[0]
        assert not any("{" in line for line in lines)

    extractor = shown["feature_extractor"]
    cut = runs["feature_extractor"]["metrics"]["feature_cut"]  # auto, the default: chosen by cross-validation
    assert extractor["Head"].startswith("softmax") and extractor["Features from"] == \
        (f"{cut} blocks below the top" if cut else "the last layer") + " (chosen by cross-validation)"
    assert extractor["Image size"] == "32 x 32 px" and extractor["Pretrained weights"] == "random initialisation"
    assert not [key for key in extractor if "epoch" in key.lower() or "learning rate" in key.lower()
                or "Stage" in key or "Augmentation" in key]
    tuned = shown["finetune"]
    assert tuned["Stage 2 unfreezes"] == "the top block" and tuned["Stage 2 learning rate"] == "1e-05"
    assert "Head" not in tuned and tuned["Augmentation"] == "off"
    scratch = shown["scratch"]
    assert "Pretrained weights" not in scratch and "Stage 2 learning rate" not in scratch
    assert scratch["Learning rate"] == "0.001" and scratch["Epochs (at most)"] == "1"


def test_result_and_predict_open_on_the_best_run_not_the_newest(app, toy, store):
    best = _train(toy, store)  # the linear probe learns the toy set
    worse = _train(toy, store, strategy="scratch", epochs=1)  # newer, and one epoch from random weights
    assert best["metrics"]["test_accuracy"] > worse["metrics"]["test_accuracy"]

    _open(app, "result")
    picker = app.selectbox[0]
    from tl_core.metrics import accuracy_text

    assert picker.value.endswith(f"test accuracy {accuracy_text(best['metrics'])} · best")  # with its interval
    assert f"{best['metrics']['test_accuracy']:.1%} (95% CI " in picker.value
    assert best["id"][:4] in picker.value
    assert any(f"test accuracy {worse['metrics']['test_accuracy']:.1%}" in option for option in picker.options)

    _open(app, "predict")
    model = app.selectbox[0]
    assert best["id"][:4] in model.value and model.value.endswith(" · best")


def test_predict_classifies_a_camera_photo_through_the_same_code_as_files(app, toy, store, tmp_path):
    # Stretched: a random-weight ConvNet reads a padded photo's white margins (which the toy's square
    # pictures never had) as a colour; Predict follows the run's own resize setting either way.
    run = _train(toy, store, DataConfig(resize="stretch"))
    assert run["config"]["data"]["resize"] == "stretch"
    _open(app, "predict")
    camera = app.get("camera_input")[0]
    assert camera.disabled  # the camera (and the browser's permission prompt) starts only when asked
    next(t for t in app.toggle if t.label == "Use the camera").set_value(True)
    app.run()
    photo = _non_square_photo(tmp_path / "shot.jpg")
    app.get("camera_input")[0].set_value(("shot.jpg", photo, "image/jpeg"))
    app.run()
    assert not app.exception, app.exception
    headline = [m.value for m in app.markdown if m.value.startswith("**") and m.value.endswith("%)")]
    assert len(headline) == 1 and headline[0].startswith("**red**")  # one photo, of the red block, recognised
    assert "Heat map colours" in " ".join(c.value for c in app.caption)


def test_predict_says_none_of_these_for_a_picture_far_from_every_class(app, toy, store, tmp_path):
    """The feature extractor's "none of these" check on Predict: a plain white photo (none of the toy's
    coloured squares on dark noise) is flagged; a picture of the training set is not."""
    run = _train(toy, store)
    assert run["metrics"]["novelty"]["quantile"] == 0.95
    _open(app, "predict")
    next(t for t in app.toggle if t.label == "Use the camera").set_value(True)
    app.run()
    warnings = {}
    for label, photo in (("blank", png_bytes(Image.new("RGB", (40, 40), "white"), "JPEG")),
                         ("toy", (toy / "red" / "red_000.png").read_bytes())):
        app.get("camera_input")[0].set_value((f"{label}.jpg", photo, "image/jpeg"))
        app.run()
        assert not app.exception, app.exception
        warnings[label] = " ".join(w.value for w in app.warning)
    assert "None of these?" in warnings["blank"] and "None of these?" not in warnings["toy"]
    app.query_params["run"] = run["id"]
    _open(app, "result")  # the Confidence tab says how often the check flags the run's own test images
    flagged = f"it flagged {run['metrics']['novelty']['test_flagged']:.0%} of this run's test images"
    assert any(flagged in c.value for c in app.caption), [c.value for c in app.caption]
