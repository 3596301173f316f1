"""Data: load a dataset (zip, files per class, local folder, sample) and see its health."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from tl_core import charts
from tl_core.config import DataConfig
from tl_core.data import load_images
from tl_core.datasets import (
    dataset_name,
    delete_dataset,
    digits_sample,
    flowers_sample,
    is_saved_upload,
    list_datasets,
    local_source,
    save_image_set,
)
from tl_core.errors import TLCoreError
from tl_core.escape import markdown as plain
from ui.gallery import class_thumbnails
from ui.label_review import label_review
from ui.state import (
    ICONS,
    PAGES,
    current_dataset,
    dataset_notice,
    dataset_report,
    forget_dataset,
    get_store,
    hosted,
    notify_dataset,
    saved_label,
    set_dataset,
    upload_too_large,
    workspace,
)

SKIPPED_LISTED = 20  # skipped files listed with their whole reason; more go in a table

st.title(f"{ICONS['data']} Data")
st.caption("One folder per class. JPEG, PNG, BMP, GIF, WebP and TIFF are read; anything else is listed, not lost.")
store = get_store()


def _load(source, name: str, save: bool) -> None:
    try:
        with st.spinner("Reading files..."):
            # An uploaded zip of N MB may expand to at most 4N MB ($TL_MAX_ZIP_EXPANSION): more is a zip bomb.
            image_set = load_images(source, DataConfig.for_uploads() if save else DataConfig())
            path = save_image_set(store, image_set, name, workspace()) if save else source
    except TLCoreError as err:
        st.error(plain(err))
        kept = current_dataset()
        if kept is not None:
            st.caption(f"Nothing was loaded: the dataset in use, and the report below, are still “{plain(kept['name'])}”.")
        return
    set_dataset(path, name)
    st.rerun()


def _class_folder_files(uploads) -> list[tuple[str, bytes, str]]:
    """``(file, bytes, class)`` from a folder upload: each file's class is its first folder below the
    chosen one (``flowers/tulip/a.jpg`` is a tulip); files directly in the chosen folder have none."""
    files = []
    for upload in uploads:
        parts = upload.name.replace("\\", "/").split("/")
        files.append((parts[-1], upload.getvalue(), parts[1] if len(parts) >= 3 else ""))
    return files


MODE_WORDS = {"RGB": "colour", "RGBA": "colour with transparency", "P": "palette colour", "CMYK": "CMYK colour",
              "YCbCr": "colour", "L": "grayscale", "LA": "grayscale with transparency", "1": "black and white",
              "I": "16/32-bit grayscale", "I;16": "16-bit grayscale", "F": "floating-point grayscale"}


def _sizes_in_words(width: dict, height: dict) -> str:
    """``all 300 x 300 px``, or the range of widths and of heights."""
    if width["min"] == width["max"] and height["min"] == height["max"]:
        return f"all {width['min']} x {height['min']} px"
    return f"{width['min']}-{width['max']} px wide, {height['min']}-{height['max']} px high"


def _modes_in_words(modes: dict[str, int]) -> str:
    """``500 grayscale`` or ``480 colour, 20 grayscale``, largest first (Pillow's image modes, in words)."""
    counts: dict[str, int] = {}
    for mode, count in modes.items():
        words = MODE_WORDS.get(mode, f"mode {mode}")
        counts[words] = counts.get(words, 0) + count
    return ", ".join(f"{count} {words}" for words, count in sorted(counts.items(), key=lambda item: -item[1]))


# A deployed app sets TL_HOSTED=1: visitors must not browse the server's disk.
tab_names = (["Upload a zip", "Upload a folder", "Upload per class"] + ([] if hosted() else ["Local folder"])
             + ["Sample sets", "Saved datasets"])
tabs = dict(zip(tab_names, st.tabs(tab_names)))
zip_tab, directory_tab, class_tab, sample_tab, saved_tab = (
    tabs[n] for n in ("Upload a zip", "Upload a folder", "Upload per class", "Sample sets", "Saved datasets"))
folder_tab = tabs.get("Local folder")
with zip_tab:
    upload = st.file_uploader("A .zip with one folder per class: it loads as soon as it is uploaded", type=["zip"],
                              key="zip_upload")
    # Loaded once per uploaded file: the widget keeps the file across reruns.
    if upload is not None and st.session_state.get("zip_loaded") != upload.file_id:
        st.session_state["zip_loaded"] = upload.file_id
        refused = upload_too_large([upload])
        if refused:
            st.error(plain(refused))
        else:
            _load(upload.getvalue(), dataset_name(upload.name), save=True)

with directory_tab:
    chosen = st.file_uploader("A folder with one folder of images per class", accept_multiple_files="directory",
                              key="folder_upload",
                              help="Choose the folder that holds the class folders (flowers/, with flowers/tulip/, "
                                   "flowers/rose/, ...). Each image's class is the name of its folder.")
    if chosen and st.button(f"Load these {len(chosen)} files", type="primary", key="load_folder_upload"):
        refused = upload_too_large(chosen)
        if refused:
            st.error(plain(refused))
        else:
            _load(_class_folder_files(chosen), dataset_name(chosen[0].name.split("/")[0], "Uploaded folder"), save=True)

with class_tab:
    n_classes = st.number_input("Number of classes", min_value=2, max_value=50, value=2)
    files = []
    columns = st.columns(min(int(n_classes), 4))
    for index in range(int(n_classes)):
        with columns[index % len(columns)]:
            label = st.text_input(f"Class {index + 1} name", value=f"class_{index + 1}", key=f"class_name_{index}")
            uploads = st.file_uploader(f"Images of {plain(label)}", accept_multiple_files=True, key=f"class_files_{index}")
            files += [(u, label) for u in uploads or []]
    if st.button("Load these images", type="primary", disabled=not files):
        refused = upload_too_large([u for u, _ in files])
        if refused:
            st.error(plain(refused))
        else:
            _load([(u.name, u.getvalue(), label) for u, label in files], "Uploaded images", save=True)

if folder_tab is not None:
    with folder_tab:
        st.caption("For a copy of the app running on your own machine: the folder is read where it is.")
        folder = st.text_input("Folder path", placeholder="/home/me/photos/my_dataset")
        if st.button("Use this folder", disabled=not folder):
            _load(folder.strip(), folder.strip().rstrip("/").split("/")[-1] or folder, save=False)

with sample_tab:
    left, right = st.columns(2)
    with left:
        st.markdown("**Handwritten digits** — 1,797 scans, 10 classes; ships with scikit-learn (works offline).")
        if st.button("Load digits"):
            _load(str(digits_sample(store)), "Handwritten digits (sample)", save=False)
    with right:
        st.markdown("**TF Flowers** — 3,670 photos, 5 classes: the original article's problem (downloads 220 MB).")
        if st.button("Download TF Flowers"):
            try:
                with st.spinner("Downloading TF Flowers..."):
                    path = flowers_sample(store)
                _load(str(path), "TF Flowers (sample)", save=False)
            except TLCoreError as err:
                st.error(plain(err))

with saved_tab:
    saved = list_datasets(store, workspace())
    if not saved:
        st.caption("Uploaded datasets are kept here.")
    else:
        # Keyed by folder: two saves with the same name and file count (a corrected re-upload) stay apart.
        by_path = {d["path"]: d for d in saved}
        chosen = by_path[st.selectbox("Saved dataset", list(by_path), format_func=lambda p: saved_label(by_path[p]))]
        use, delete = st.columns(2)
        if use.button("Use it"):
            # An upload saved before this server's disk was wiped comes back from the artifacts location.
            path = local_source(store, chosen["path"])
            if Path(path).exists():
                set_dataset(path, chosen["name"])
                st.rerun()
            st.error(f"“{plain(chosen['name'])}” is listed but its files are not on this server, nor at the artifacts "
                     "location: upload it again.")
        if is_saved_upload(chosen["path"]) and delete.button(
            "Delete it", key="delete_dataset",
            help="Frees its room (hosted: a workspace's saved datasets have a disk quota). Runs trained on it keep "
                 "their results, but cannot be resumed. Refused while a queued or running run reads it.",
        ):
            try:
                delete_dataset(store, chosen["path"], workspace())
            except TLCoreError as err:
                st.error(plain(err))
            else:
                deleted = f"Deleted “{plain(chosen['name'])}” ({saved_label(chosen, name=False)})."
                if (current_dataset() or {}).get("path") != chosen["path"]:
                    notify_dataset(deleted)
                else:
                    forget_dataset(deleted)
                st.rerun()

dataset = current_dataset()
dataset_notice()
if dataset is None:
    st.info("No dataset yet: upload one above, or try a sample set.")
    st.stop()

report = dataset_report(dataset["path"])
if report is None:
    st.stop()

st.header(f"Health of “{plain(dataset['name'])}”", anchor=False)  # no anchor link made from a user's name
c1, c2, c3, c4 = st.columns(4)
c1.metric("Images", report["n_images"])
c2.metric("Classes", report["n_classes"])
c3.metric("Skipped", len(report["skipped"]))
c4.metric("Duplicate groups", len(report["duplicates"]))
for warning in report["warnings"]:
    st.warning(plain(warning))
if report["n_classes"] < 2:
    st.error("A classifier needs at least 2 classes with images.")

st.plotly_chart(charts.class_counts(report["per_class"]), key="class_counts")
if report["width"]:
    st.caption(f"Images: {_sizes_in_words(report['width'], report['height'])}; {_modes_in_words(report['modes'])}.")

if report["skipped"]:
    st.subheader("Skipped images")
    if len(report["skipped"]) <= SKIPPED_LISTED:  # each reason whole: it ends with what to do about it
        st.markdown("\n".join(f"- **{plain(s['file'])}**: {plain(s['reason'])}" for s in report["skipped"]))
    else:
        st.caption("Point at a reason to read it whole.")
        st.dataframe(pd.DataFrame(report["skipped"]), hide_index=True)
if report["duplicates"]:
    st.subheader("Identical files")
    st.dataframe(
        pd.DataFrame([{"files": ", ".join(d["files"]), "different labels": d["cross_class"]} for d in report["duplicates"]]),
        hide_index=True,
    )
if report["ignored"]:
    with st.expander(f"{len(report['ignored'])} other files ignored"):
        st.dataframe(pd.DataFrame(report["ignored"]), hide_index=True)

st.subheader("Thumbnails")
class_thumbnails(dataset["path"], report["class_names"])
if report["n_classes"] >= 2:
    label_review(dataset)
st.page_link(PAGES["strategy"], label="Next: get a strategy recommendation", icon=ICONS["strategy"])
