"""Predict: a finished run's model on new images, with the top classes and their probabilities."""

from __future__ import annotations

import numpy as np
import streamlit as st

from tl_core import charts
from tl_core.calibration import how_sure
from tl_core.charts import run_label
from tl_core.comparison import best_run
from tl_core.export import run_resize
from tl_core.data import prepare_image
from tl_core.errors import ImageDecodeError, TLCoreError
from tl_core.model_files import load_model_file, model_file
from tl_core.novelty import load_novelty, picture_features
from tl_core.gradcam import grad_cam, overlay
from tl_core.hardware import keep_off_gpu
from tl_core.metrics import interval_text
from ui.gallery import heat_legend, short_name, zoom
from ui.reliability import plain, show_flags
from ui.state import ICONS, PAGES, get_store, workspace

keep_off_gpu()  # the server predicts on the CPU; the GPU and its memory are the training worker's

st.title(f"{ICONS['predict']} Predict")
store = get_store()
finished = store.list_runs(status="succeeded", workspace=workspace())
if not finished:
    st.info("Train a model first.")
    st.page_link(PAGES["train"], label="Go to Train", icon="🏋️")
    st.stop()


@st.cache_resource(max_entries=4)
def load_model(path: str):
    return load_model_file(path)  # Keras safe mode: no Python code from a file ever runs


best = best_run(finished)
labels = {f"{run_label(r)} · test accuracy {r['metrics']['test_accuracy']:.1%} ({interval_text(r['metrics'])})"
          + (" · best" if r["id"] == best["id"] else ""): r for r in finished}
choice = st.selectbox("Model", list(labels), index=finished.index(best),
                      help="It opens on the model with the highest test accuracy (the most recent of equals).")
run = labels[choice]
metrics = run["metrics"]
st.caption("Classes: " + plain(", ".join(metrics["class_names"])))
show_flags(metrics)
files, camera = st.columns([3, 2])
uploads = files.file_uploader("Images", type=["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"],
                              accept_multiple_files=True)
# The camera starts only when asked: a browser asks for its permission as soon as the widget is live.
use_camera = camera.toggle("Use the camera", key="use_camera")
photo = camera.camera_input("Take a photo", disabled=not use_camera, label_visibility="collapsed")
pictures = [(upload.name, upload.getvalue()) for upload in uploads or []]
if photo is not None:
    pictures.append(("camera photo", photo.getvalue()))
store.ensure_local(run["id"])  # after a wiped disk: fetches the run's folder from the artifacts location
path = model_file(run)
if path is None:
    st.error("This run's model file is not on this server, nor at the artifacts location, so it cannot predict. "
             "Pick another model, or train this one again.")
    st.stop()
if not pictures:
    st.stop()

try:
    model = load_model(str(path))
except TLCoreError as err:
    st.error(plain(err))
    st.stop()
novelty = load_novelty(path.parent)  # the feature extractor's "none of these" check, when the run has one
size = metrics["image_size"]
resize = run_resize(run)  # padded to a square or stretched, as the run's images were
classes = metrics["class_names"]
explain = st.selectbox("Grad-CAM heat map for", ["the predicted class", *classes],
                       help="Red where the ConvNet's last feature maps pushed this class's score up.")
heat_legend()
for index, (name, data) in enumerate(pictures):  # files and the camera's photo: one prediction path
    try:
        pixels, image = prepare_image(data, size, resize=resize)  # exactly as the training images were
    except ImageDecodeError as err:
        st.warning(plain(f"{name}: skipped ({err})."))
        continue
    target = None if explain == "the predicted class" else classes.index(explain)
    cams, probabilities = grad_cam(model, pixels[None], target)  # the prediction and its heat map, one pass
    probabilities = probabilities[0]
    order = np.argsort(-probabilities)[:5]
    left, middle, right = st.columns([1, 1, 2])
    left.image(image, width=180)
    left.caption(plain(short_name(name)), help=plain(name))  # one line: the middle of a long name cut
    shown = classes[int(order[0])] if target is None else explain
    heat = overlay(image, cams[0])
    middle.image(heat, caption=f"Grad-CAM: {plain(shown)}", width=180)
    with middle:
        zoom(heat, name)
    top = {classes[i]: float(probabilities[i]) for i in order}
    right.markdown(f"**{plain(next(iter(top)))}** ({next(iter(top.values())):.0%})")
    if novelty is not None and novelty.flags(picture_features(model, pixels[None]))[0]:
        right.warning("None of these? This picture lies farther from every class the model learned than "
                      f"{novelty.quantile:.0%} of the validation images do: it may show something else.",
                      icon=":material/help:")
    sure = how_sure(probabilities, classes, metrics.get("calibration"))
    if not sure["sure"]:
        if not sure["plausible"]:
            right.warning("Not sure: this picture fits none of the classes well (it may be none of them).",
                          icon=":material/help:")
        else:
            share = f" (sets like this hold the right class for {sure['coverage']:.0%} of pictures like the " \
                    "training ones)" if sure["coverage"] else ""
            right.warning("Not sure: it could be " + plain(" or ".join(sure["plausible"])) + share + ".",
                          icon=":material/help:")
    right.plotly_chart(charts.top_classes(top), key=f"pred_{index}_{name}")
