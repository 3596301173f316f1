"""Exports of a finished run: model files checked against the app's model, model cards, an HTML report."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from tl_core import charts, escape
from tl_core.backbones import BACKBONES, weights_label
from tl_core.config import EXPORT_FORMATS, HEAD_NAMES, STRATEGY_LABELS
from tl_core.errors import ExportError, TLCoreError
from tl_core.metrics import accuracy_text, reliability
from tl_core.model_files import load_model_file, model_file


def html_report(run: dict[str, Any], files: bool = True) -> str:
    """One HTML file with the run's settings, metrics and charts (Plotly inlined, works offline).

    ``files=False`` leaves out the names of the test images (a public page whose owner keeps them private).
    """
    metrics = run.get("metrics") or {}
    train = (run.get("config") or {}).get("train", {})
    dataset = run.get("dataset") or {}
    figures = []
    if metrics.get("confusion_matrix"):
        figures.append(charts.confusion(metrics))
    if any(run.get("epochs", {}).values()):
        figures.append(charts.stage_curves(run["epochs"]))
    if dataset.get("per_class"):
        figures.append(charts.class_counts(dataset["per_class"]))
    plots = "".join(
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        for i, fig in enumerate(figures)
    )
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in readable_settings(train, metrics).items()
    )
    per_class = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
        f"<td>{m['f1']:.3f}</td><td>{m['support']}</td></tr>"
        for name, m in (metrics.get("per_class") or {}).items()
    )
    mistakes = "".join(
        f"<tr><td>{html.escape(m['file'])}</td><td>{html.escape(m['true'])}</td>"
        f"<td>{html.escape(m['predicted'])}</td><td>{m['probability']:.2f}</td></tr>"
        for m in (metrics.get("top_mistakes") or [] if files else [])
    )
    headline = (
        _html_headline(metrics)
        if metrics.get("confusion_matrix")
        else f"<p class='big'>Status: {html.escape(run['status'])} {html.escape(run.get('error') or '')}</p>"
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Transfer Learning Studio · run {html.escape(run['id'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#111}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left}}
.big{{font-size:1.3em}}.flag{{color:#8a4b00;font-weight:600}}</style></head><body>
<h1>{html.escape(charts.run_label(run))}</h1>
<p>Run <code>{html.escape(run['id'])}</code> · {html.escape(run['status'])} ·
{time.strftime('%Y-%m-%d %H:%M', time.localtime(run['created_at']))}</p>
{headline}
<p>{dataset.get('n_images', '?')} images in {dataset.get('n_classes', '?')} classes;
{len(dataset.get('skipped', []))} skipped. {html.escape(split_text(metrics.get('split')))}.</p>
{plots}
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>test images</th></tr>{per_class}</table>
<h2>Most confident mistakes</h2><table><tr><th>file</th><th>true</th><th>predicted</th><th>probability</th></tr>{mistakes}</table>
<h2>Settings</h2><table>{rows}</table>
<p>{'<br>'.join(html.escape(n) for n in metrics.get('notes', []))}</p>
</body></html>"""


def split_text(split: dict[str, int] | None) -> str:
    """``211 training / 46 validation / 46 test images`` from a run's split sizes."""
    if not split:
        return "unknown"
    return (f"{split.get('train', 0)} training / {split.get('val', 0)} validation / "
            f"{split.get('test', 0)} test images")




def readable_settings(train: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict[str, str]:
    """The settings that applied to a run's strategy, under names a person reads (never a server path).

    Args:
        train: the run's ``TrainConfig`` as stored (``config["train"]``).
        metrics: the run's metrics, when it finished: the image size and the weights file it used.
    """
    metrics = metrics or {}
    strategy = train.get("strategy")
    spec = BACKBONES.get(train.get("backbone"))
    size = train.get("image_size") or metrics.get("image_size") or (spec.input_size if spec else None)
    shown = {"Strategy": STRATEGY_LABELS.get(strategy, str(strategy)),
             "Backbone": spec.title if spec else str(train.get("backbone"))}
    if strategy != "scratch":
        shown["Pretrained weights"] = weights_label(metrics.get("weights") or train.get("weights"))
    shown["Image size"] = f"{size} x {size} px" if size else "the backbone's own"
    if strategy == "feature_extractor":
        cut = charts.feature_cut({"config": {"train": train}, "metrics": metrics})
        shown["Head"] = HEAD_NAMES.get(train.get("head"), str(train.get("head")))
        where = f"{cut} blocks below the top" if cut else "the last layer"
        auto = (train.get("feature_cut") or 0) < 0  # the run chose the block
        shown["Features from"] = "chosen when it trains" if cut is None else \
            where + (" (chosen by cross-validation)" if auto else "")
    else:
        shown.update(_trained_settings(train))
        if strategy == "finetune" and metrics.get("feature_cut"):
            shown["ConvNet ends"] = (f"{metrics['feature_cut']} blocks below the top (the block the feature "
                                     "extractor chose; its top blocks fine-tuned)")
    if metrics.get("precision") and strategy != "scratch":
        chosen = "chosen: faster here" if train.get("precision", "auto") == "auto" else "as set"
        shown["Feature extraction"] = f"{metrics['precision']} ({chosen}); the model is float32"
    shown["Seed"] = str(train.get("seed"))
    return shown


def _trained_settings(train: dict[str, Any]) -> dict[str, str]:
    """The settings of the strategies that train with Adam: two-stage fine-tuning and from scratch."""
    shown = {}
    probe = train.get("strategy") == "finetune" and train.get("start_from_probe")
    stage1 = "Stage 1 " if train.get("strategy") == "finetune" else ""
    if probe:
        shown["Stage 1"] = "linear probe on the frozen features (LP-FT)"
    else:
        shown[f"{stage1}epochs (at most)".capitalize()] = str(train.get("epochs"))
        shown[f"{stage1}learning rate".capitalize()] = f"{train.get('learning_rate'):g}"
        shown["New dense layer"] = f"{train.get('dense_units')} units" if train.get("dense_units") else "none"
        shown["Dropout"] = f"{train.get('dropout'):g}"
    if train.get("strategy") == "finetune":
        blocks = train.get("unfreeze_blocks")
        shown["Stage 2 unfreezes"] = {-1: "every block", 0: "nothing (no stage 2)", 1: "the top block"}.get(
            blocks, f"the top {blocks} blocks")
        if blocks:
            shown["Stage 2 epochs (at most)"] = str(train.get("fine_tune_epochs"))
            shown["Stage 2 learning rate"] = f"{train.get('fine_tune_learning_rate'):g}"
    shown["Augmentation"] = "flip, rotation, zoom, contrast" if train.get("augment") else "off"
    shown["Early stopping"] = f"after {train.get('patience')} epochs without improvement"
    shown["Batch size"] = str(train.get("batch_size"))
    return shown


def public_settings(train: dict[str, Any]) -> dict[str, Any]:
    """A run's training settings with its weights file named by :func:`~tl_core.backbones.weights_label`."""
    return {**train, "weights": weights_label(train["weights"])} if "weights" in train else train


def _html_headline(metrics: dict[str, Any]) -> str:
    facts = reliability(metrics)
    (low, high), (f1_low, f1_high) = facts["test_accuracy_ci"], facts["macro_f1_ci"]
    flags = "".join(f"<p class='flag'>⚠ {html.escape(flag)}</p>" for flag in facts["flags"])
    return (
        f"<p class='big'>Test accuracy <b>{metrics['test_accuracy']:.1%}</b> (95% CI {low:.1%}-{high:.1%}) · "
        f"macro F1 <b>{metrics['macro_f1']:.3f}</b> ({f1_low:.3f}-{f1_high:.3f}) · "
        f"{metrics.get('seconds', 0):.0f} s on {html.escape(str(metrics.get('hardware')))}</p>"
        f"<p>On {facts['n_test']} test images; always guessing the largest class scores "
        f"{facts['majority_baseline']:.1%}.</p>{flags}"
    )


# --------------------------------------------------------------------------- checked exports

FORMATS = EXPORT_FORMATS
# Top-1 agreement with the app's model an export must reach to be offered without a warning.
# int8 quantisation changes the weights: its agreement is reported as measured, not required.
REQUIRED_AGREEMENT = {"keras": 1.0, "savedmodel": 1.0, "tflite": 0.99, "tflite-int8": None}
EXTENSIONS = {"keras": ".keras", "savedmodel": "", "tflite": ".tflite", "tflite-int8": ".tflite"}


def test_split(run: dict[str, Any], cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, list]:
    """The run's test images as its model takes them, their class indices, and their dataset items
    (``item.read_bytes()``: a file's bytes, read when needed).

    With ``cache_dir``, the pixels are decoded into a cache file there and mapped from it, so a
    large test split stays on disk; without, they are held in memory.

    Raises:
        ExportError: the dataset the run trained on is gone or changed (nothing to check against).
    """
    from tl_core.config import DataConfig
    from tl_core.data import decode_dataset, load_images

    folder = Path(run["model_path"]).parent
    metrics = run.get("metrics") or {}
    try:
        names = json.loads((folder / "split.json").read_text())["test"]
        data_config = DataConfig.stored(run["config"].get("data"))
        image_set = load_images(run["config"]["source"], data_config)
    except (OSError, ValueError, KeyError, TypeError, TLCoreError) as err:
        raise ExportError(f"The run's test images cannot be read ({err}), so an export cannot be checked.") from err
    wanted = set(names)
    image_set.items = [item for item in image_set.items if item.name in wanted]
    decoded = decode_dataset(image_set, metrics["image_size"], data_config, cache_dir=cache_dir)
    if sorted(decoded.names) != sorted(names):
        raise ExportError("The run's dataset changed since it trained: its test images are not all there.")
    index = {name: i for i, name in enumerate(metrics["class_names"])}
    y = np.asarray([index[decoded.class_names[label]] for label in decoded.y])
    files = {item.name: item for item in image_set.items}
    return decoded.x, y, [files[name] for name in decoded.names]


# At most this many test images are also run at their own size through an any-size export.
ANY_SIZE_CHECKS = 40


def _any_size_agreement(fmt: str, out: Path, items: list, reference: np.ndarray) -> float | None:
    """Top-1 agreement when the export resizes the original pictures itself (keras, SavedModel).

    The app resizes with Pillow (and decodes JPEGs at reduced size first); the export resizes with
    TensorFlow's antialiased bilinear filter, so this can be slightly below the exact check.
    """
    if fmt not in ("keras", "savedmodel") or not items:
        return None
    import tensorflow as tf

    from tl_core.data import decode_image

    if fmt == "keras":
        model = load_model_file(out)
        predict = lambda image: model(image, training=False)  # noqa: E731 - eager: any size, no retracing
    else:
        serve = tf.saved_model.load(str(out)).signatures["serving_default"]
        predict = lambda image: list(serve(image).values())[0]  # noqa: E731
    agree = []
    for item, expected in list(zip(items, reference))[:ANY_SIZE_CHECKS]:
        picture, _ = decode_image(item.read_bytes(), max_pixels=10**12)  # already accepted by the run's own limit
        pixels = tf.constant(np.asarray(picture, dtype=np.float32)[None])
        agree.append(int(np.asarray(predict(pixels)).argmax()) == int(expected))
    return float(np.mean(agree))


def run_resize(run: dict[str, Any]) -> str:
    """How the run's pictures became its model's square input (``pad`` or ``stretch``)."""
    from tl_core.config import DataConfig

    return DataConfig.stored((run.get("config") or {}).get("data")).resize


def any_size_model(model, image_size: int, resize: str = "pad"):
    """The model behind a resizing layer: it takes RGB pixels (0-255) of any size, as a batch, and
    pads them to a square with white (``pad``, centred, as training did) or stretches them."""
    import keras

    inputs = keras.Input((None, None, 3), name="rgb_pixels")
    resized = keras.layers.Resizing(image_size, image_size, interpolation="bilinear", antialias=True,
                                    pad_to_aspect_ratio=resize == "pad", fill_mode="constant", fill_value=255.0,
                                    name="resize_to_model")(inputs)
    return keras.Model(inputs, model(resized), name="exported_classifier")


# The one file "Download the model" offers: the any-size model and its class names, zipped.
TAKE_HOME_FILES = ("model.keras", "classes.json", "README.md")
TAKE_HOME_USAGE = """import json, zipfile
import keras, numpy as np
from PIL import Image, ImageOps

with zipfile.ZipFile("ZIP") as bundle:  # the file "Download the model" saved
    bundle.extractall("FOLDER")
model = keras.saving.load_model("FOLDER/model.keras")  # any image size: it resizes inside
classes = json.load(open("FOLDER/classes.json"))  # class names, in the model's output order
image = ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGBA")  # your picture
image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")  # transparency on white, as the app
probabilities = model.predict(np.asarray(image, dtype="float32")[None], verbose=0)[0]
print(classes[int(probabilities.argmax())], f"({probabilities.max():.0%})")"""


def take_home_name(run: dict[str, Any]) -> str:
    """The file name "Download the model" gives its zip: ``model-<first 8 characters of the run id>.zip``."""
    return f"model-{run['id'][:8]}.zip"


def take_home_usage(run: dict[str, Any]) -> str:
    """Python that loads the downloaded zip with plain Keras (safe mode) and classifies ``photo.jpg``."""
    name = take_home_name(run)
    return TAKE_HOME_USAGE.replace("ZIP", name).replace("FOLDER", name.removesuffix(".zip"))


def take_home(run: dict[str, Any]) -> Path:
    """The zip "Download the model" offers, built once beside the run's model and reused.

    It holds ``model.keras`` (:func:`any_size_model`: RGB pixels 0-255 of any size, resized and
    preprocessed inside, loadable with plain Keras in safe mode), ``classes.json`` (the class names
    in the model's output order) and ``README.md`` (what it is and :func:`take_home_usage`).

    Raises:
        ExportError: the run has no saved model, or it cannot be loaded.
    """
    import os
    import tempfile
    import zipfile

    path = model_file(run)
    if path is None:
        raise ExportError("Only a finished run with a saved model can be downloaded.")
    bundle = path.parent / "take-home.zip"
    if bundle.is_file() and bundle.stat().st_mtime >= path.stat().st_mtime:
        return bundle
    metrics = run["metrics"]
    with tempfile.TemporaryDirectory(prefix="tl-take-home-", dir=path.parent) as scratch:
        model, partial = Path(scratch) / "model.keras", Path(scratch) / "take-home.zip"
        any_size_model(load_model_file(path), metrics["image_size"], run_resize(run)).save(model)
        with zipfile.ZipFile(partial, "w") as archive:
            archive.write(model, "model.keras")  # stored as is: a .keras file is a zip already
            archive.writestr("classes.json", json.dumps(metrics["class_names"], indent=1), zipfile.ZIP_DEFLATED)
            archive.writestr("README.md", _take_home_readme(run), zipfile.ZIP_DEFLATED)
        os.replace(partial, bundle)  # atomic: a second click never reads a half-written zip
    return bundle


def _take_home_readme(run: dict[str, Any]) -> str:
    metrics = run["metrics"]
    size = metrics["image_size"]
    shown = ", ".join(escape.markdown(name) for name in metrics["class_names"])  # user text: shown as typed
    return f"""# {escape.markdown(charts.run_label(run))}

Test accuracy {accuracy_text(metrics)} ({split_text(metrics.get('split'))}; run `{run['id']}`).

- `model.keras`: a Keras 3 model. It takes RGB pixels 0-255 (float32) of any size, as a batch, and
  {"pads them to a square with white and resizes them" if run_resize(run) == "pad" else "resizes them"} to {size} x {size} itself; preprocessing is inside. Plain `keras.saving.load_model`
  loads it, in safe mode: it holds no Python code.
- `classes.json`: the class names, in the order of the model's outputs: {shown}.

## Use it

```python
{take_home_usage(run)}
```
"""


def _predict_keras(path: Path, x: np.ndarray) -> np.ndarray:
    return _predict_in_batches(load_model_file(path), x)


def _predict_in_batches(model, x: np.ndarray) -> np.ndarray:
    """``model``'s predictions on uint8 pixels, cast to float32 a batch at a time (not all at once)."""
    from tl_core.data import make_batches

    return model.predict(make_batches(x, None, 32), verbose=0)


def _predict_savedmodel(path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    out = [list(serve(tf.constant(x[i : i + 32].astype(np.float32))).values())[0].numpy() for i in range(0, len(x), 32)]
    return np.concatenate(out)


def tflite_interpreter(path: str | Path):
    """A TFLite interpreter: LiteRT's (``ai_edge_litert``) when installed, else TensorFlow's own."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import warnings

        import tensorflow as tf

        with warnings.catch_warnings():  # tf.lite.Interpreter still works; it points to LiteRT
            warnings.simplefilter("ignore", UserWarning)
            return tf.lite.Interpreter(model_path=str(path))
    return Interpreter(model_path=str(path))


def _predict_tflite(path: Path, x: np.ndarray, batch: int = 32) -> np.ndarray:
    interpreter = tflite_interpreter(path)
    index = interpreter.get_input_details()[0]["index"]
    outputs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch].astype(np.float32)
        interpreter.resize_tensor_input(index, list(chunk.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, chunk)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy())
    return np.concatenate(outputs)


def _write_export(model, fmt: str, out: Path, image_size: int, resize: str) -> None:
    import tempfile

    import tensorflow as tf

    if fmt == "keras":
        any_size_model(model, image_size, resize).save(out)
    elif fmt == "savedmodel":
        any_size_model(model, image_size, resize).export(str(out), format="tf_saved_model", verbose=False)
    else:  # TFLite: fixed input size (mobile runtimes resize before calling the model)
        with tempfile.TemporaryDirectory() as tmp:
            model.export(tmp, format="tf_saved_model", verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
            if fmt == "tflite-int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range int8 weights
            content = converter.convert()
        out.write_bytes(content)


def export_run(run: dict[str, Any], fmt: str, out: str | Path) -> dict[str, Any]:
    """Export a finished run's model, load the file back, and check it on the run's test split.

    Writes ``out`` (a ``.keras`` file, a SavedModel folder or a ``.tflite`` file) and, beside it,
    ``<out>.card.md`` and ``<out>.card.json`` (the model card).

    Returns:
        ``path``, ``format``, ``agreement`` (top-1 agreement with the app's model on the test
        split), ``accuracy`` (of the export), ``app_accuracy``, ``n_test``, ``passed``,
        ``required_agreement``, ``card``, ``bytes``.

    Raises:
        ExportError: unknown format, an unfinished run, or an export that cannot be written or read.
    """
    import shutil
    import tempfile

    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    path = model_file(run)
    if path is None:
        raise ExportError("Only a finished run with a saved model can be exported.")
    out = Path(out)
    if EXTENSIONS[fmt] and out.suffix != EXTENSIONS[fmt]:
        out = out.with_name(out.name + EXTENSIONS[fmt])
    if out.is_dir() and any(out.iterdir()) and not (out / "saved_model.pb").exists():
        raise ExportError(f"{out} is a folder with other files in it; give a new path for the SavedModel.")
    model = load_model_file(path)
    size = run["metrics"]["image_size"]
    # The test pixels are mapped from a scratch file: a large test split does not fill memory.
    with tempfile.TemporaryDirectory(prefix="tl-export-") as scratch:
        x, y, items = test_split(run, Path(scratch))
        reference = _predict_in_batches(model, x).argmax(axis=1)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            _write_export(model, fmt, out, size, run_resize(run))
            predict = {"keras": _predict_keras, "savedmodel": _predict_savedmodel}.get(fmt, _predict_tflite)
            predicted = predict(out, x).argmax(axis=1)  # the file, loaded back into a fresh object
            any_size = _any_size_agreement(fmt, out, items, reference)
        except ExportError:
            raise
        except Exception as err:  # noqa: BLE001 - a converter's failure is the user's answer, not a crash
            raise ExportError(f"The {fmt} export failed: {err.__class__.__name__}: {err}") from err
        del x  # the mapping closes before its scratch folder is removed
    agreement = float((predicted == reference).mean()) if len(y) else 1.0
    required = REQUIRED_AGREEMENT[fmt]
    result = {
        "path": str(out),
        "format": fmt,
        "agreement": agreement,
        "agreement_any_size": any_size,
        "accuracy": float((predicted == y).mean()) if len(y) else None,
        "app_accuracy": float((reference == y).mean()) if len(y) else None,
        "n_test": int(len(y)),
        "required_agreement": required,
        "passed": required is None or agreement >= required,
        "bytes": _size(out),
    }
    card_md, card_json = model_card(run, result)
    Path(f"{out}.card.md").write_text(card_md, encoding="utf-8")
    Path(f"{out}.card.json").write_text(json.dumps(card_json, indent=2, default=str), encoding="utf-8")
    result["card"] = f"{out}.card.md"
    return result


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


# The TFLite model takes the model's own size: the picture made square as training made it.
FIT_CODE = {
    "pad": 'ImageOps.pad(ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB"), ({size}, {size}), '
           'Image.BILINEAR, color="white")  # shape kept, white margins, as in training',
    "stretch": 'ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB").resize(({size}, {size}), Image.BILINEAR)',
}
USAGE = {
    "keras": """import keras, numpy as np
from PIL import Image, ImageOps
model = keras.saving.load_model("{file}")  # takes RGB pixels 0-255 of any size
image = np.asarray(ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB"), dtype="float32")
probabilities = model.predict(image[None])[0]
print(CLASSES[int(probabilities.argmax())])""",
    "savedmodel": """import numpy as np, tensorflow as tf
from PIL import Image, ImageOps
serve = tf.saved_model.load("{file}").signatures["serving_default"]  # RGB 0-255, any size
image = np.asarray(ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB"), dtype="float32")
probabilities = list(serve(tf.constant(image[None])).values())[0].numpy()[0]
print(CLASSES[int(probabilities.argmax())])""",
    "tflite": """import numpy as np, tensorflow as tf
from PIL import Image, ImageOps
interpreter = tf.lite.Interpreter(model_path="{file}")  # or ai_edge_litert.interpreter.Interpreter
interpreter.allocate_tensors()
image = {fit}
interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.asarray(image, "float32")[None])
interpreter.invoke()
probabilities = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
print(CLASSES[int(probabilities.argmax())])""",
}


def model_card(run: dict[str, Any], export: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The model card of an export: Markdown for people, JSON for tools."""
    import platform

    metrics = run.get("metrics") or {}
    config = run.get("config") or {}
    train = config.get("train", {})
    dataset = run.get("dataset") or {}
    versions = {"python": platform.python_version()}
    for module in ("tensorflow", "keras", "numpy", "sklearn", "PIL"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            pass
    fmt = export["format"]
    usage = USAGE["tflite" if fmt.startswith("tflite") else fmt].format(
        file=Path(export["path"]).name, size=metrics.get("image_size"),
        fit=FIT_CODE[run_resize(run)].format(size=metrics.get("image_size")),
    ).replace("CLASSES", repr(metrics.get("class_names")))
    card = {
        "run_id": run["id"],
        "export": {k: export.get(k) for k in ("format", "agreement", "agreement_any_size", "accuracy", "app_accuracy",
                                              "n_test", "passed", "required_agreement", "bytes")}
        | {"file": Path(export["path"]).name},
        "input": {
            "pixels": "RGB, 0-255, float32",
            "size": "any (the model {1} to {0} x {0} with TensorFlow's antialiased bilinear filter; the app "
                    "resizes with Pillow, so pictures of other sizes may score slightly differently)".format(
                        metrics.get("image_size"),
                        "pads to a square with white and resizes" if run_resize(run) == "pad" else "resizes")
            if fmt in ("keras", "savedmodel") else f"{metrics.get('image_size')} x {metrics.get('image_size')}",
        },
        "data": {
            "classes": metrics.get("class_names"),
            "per_class": dataset.get("per_class"),
            "n_images": dataset.get("n_images"),
            "fingerprint": dataset.get("fingerprint"),
            "skipped": len(dataset.get("skipped") or []),
        },
        "split": {"sizes": metrics.get("split"), **config.get("data", {})},
        "model": {"backbone": train.get("backbone"), "weights": weights_label(metrics.get("weights")),
                  "strategy": train.get("strategy"), "settings": public_settings(train)},
        "metrics": {**{k: metrics.get(k) for k in ("test_accuracy", "macro_f1", "per_class", "confusion_matrix")},
                    **reliability(metrics)},
        "trained_on": metrics.get("hardware"),
        "versions": versions,
        "usage": usage,
    }
    classes = metrics.get("class_names") or []
    matrix = metrics.get("confusion_matrix") or []
    shown = [escape.markdown(name) for name in classes]  # class names are user text: shown as typed
    confusion = "\n".join(
        ["| true \\ predicted | " + " | ".join(shown) + " |", "|---" * (len(classes) + 1) + "|"]
        + [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(shown, matrix)]
    )
    fence = _backticks(usage, at_least=3)
    agreement = f"{export['agreement']:.1%}"
    md = f"""# Model card: {escape.markdown(charts.run_label(run))}

Exported as **{fmt}** ({_code(Path(export['path']).name)}, {export['bytes'] / 1024**2:.1f} MB) from run `{run['id']}`.

## Checked before download
On the run's {export['n_test']} test images, loaded back from the file: top-1 agreement with the app's
model **{agreement}**, accuracy **{export['accuracy']:.1%}** (the app's model: {export['app_accuracy']:.1%}).
{'Passed' if export['passed'] else 'FAILED'} (required agreement: {export['required_agreement'] if export['required_agreement'] is not None else 'none, int8 reported as measured'}).
{f"Given the original pictures at their own size (the export resizes them itself), it agreed on {export['agreement_any_size']:.1%} of up to {ANY_SIZE_CHECKS} test images." if export.get('agreement_any_size') is not None else ''}

## Input
{card['input']['pixels']}; size: {card['input']['size']}. Preprocessing is inside the model.

## Data
Classes: {', '.join(shown)}. Images per class: {escape.markdown(dataset.get('per_class'))}.
{dataset.get('n_images')} usable images, {card['data']['skipped']} skipped; fingerprint `{dataset.get('fingerprint')}`
(sha256 of the files and their labels).

## Split
{split_text(metrics.get('split'))} (stratified, seed {config.get('data', {}).get('seed')}; identical files kept in one split).

## Model
Backbone **{escape.markdown(train.get('backbone'))}**, weights: {escape.markdown(card['model']['weights'])}.
Strategy **{escape.markdown(train.get('strategy'))}**.
Settings: {_code(json.dumps(card['model']['settings']))}.

## Metrics (test split)
{_card_metrics(metrics)}

{confusion}

## Versions
{', '.join(f'{k} {v}' for k, v in versions.items())}. Trained on {escape.markdown(metrics.get('hardware'))}.

## Use it
{fence}python
{usage}
{fence}
"""
    return md, card


def _backticks(text: str, at_least: int = 1) -> str:
    """More backticks than any run of them in ``text``: a code span or block ``text`` cannot close."""
    return "`" * max(at_least, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))


def _code(text: Any) -> str:
    """``text`` as a Markdown code span: shown literally, whatever it holds (backticks included).
    The spaces inside the backticks are stripped by CommonMark; they keep a leading backtick apart."""
    ticks = _backticks(str(text))
    return f"{ticks} {text} {ticks}"


def _card_metrics(metrics: dict[str, Any]) -> str:
    facts = reliability(metrics)
    (low, high), (f1_low, f1_high) = facts["test_accuracy_ci"], facts["macro_f1_ci"]
    lines = [f"Accuracy {metrics['test_accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}), macro F1 {metrics['macro_f1']:.3f} "
             f"(95% CI {f1_low:.3f}-{f1_high:.3f}), on {facts['n_test']} test images. Always guessing the "
             f"largest class scores {facts['majority_baseline']:.3f}."]
    lines += [f"**Warning:** {escape.markdown(flag)}" for flag in facts["flags"]]
    return "\n\n".join(lines)
