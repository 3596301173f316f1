"""The Data page's review of likely label errors: find them, decide per image, save a corrected copy."""

from __future__ import annotations

import streamlit as st

from tl_core.config import DataConfig, TrainConfig
from tl_core.data import load_images
from tl_core.datasets import EXCLUDE, KEEP, corrected_version
from tl_core.errors import TLCoreError
from tl_core.escape import markdown as plain
from tl_core.label_issues import label_issues_for
from ui.gallery import short_name, thumbnail, zoom
from ui.progress import StreamlitProgress
from ui.state import dataset_stamp, get_store, missing_weights, set_dataset, workspace

SHOWN = 24  # likely errors shown at once, most likely first
COLUMNS = 4


def _choices(issue: dict) -> list[str]:
    return [KEEP, issue["suggested"], EXCLUDE]


def _choice_label(issue: dict):
    def label(choice: str) -> str:
        if choice == KEEP:
            return f"Keep as {plain(issue['given'])}"
        if choice == EXCLUDE:
            return "Leave out"
        return f"Relabel as {plain(choice)}"
    return label


def label_review(dataset: dict) -> None:
    """Find likely label errors of ``dataset`` (on request), and save a corrected copy of it."""
    from pathlib import Path

    store = get_store()
    st.subheader("Possible label errors")
    backbone = TrainConfig().backbone
    if missing_weights(backbone):
        st.caption(f"Checking labels needs the ImageNet weights of the default backbone ({backbone}); the Train "
                   "and Strategy pages say where to put them.")
        return
    key = (dataset["path"], dataset_stamp(Path(dataset["path"])))
    found = st.session_state.setdefault("label_issues", {})
    if key not in found:
        st.caption("Each image is scored by a model trained on the other images (5 folds of the frozen ConvNet's "
                   "features); images whose label the rest of the data contradicts come first. About a minute for a "
                   "thousand images. Nothing changes until you save a corrected copy.")
        if st.button("Look for label errors", icon=":material/rule:"):
            try:
                issues = label_issues_for(dataset["path"], backbone=backbone, data_config=DataConfig(),
                                          cache_dir=store.cache_dir, progress=StreamlitProgress("Checking labels"))
            except TLCoreError as err:
                st.error(plain(err))
                return
            found[key] = [issue.to_dict() for issue in issues]
            st.rerun()
        return
    issues = found[key]
    if not issues:
        st.success("No likely label errors: every image's label agrees with what the other images suggest.")
        return
    shown = issues[:SHOWN]
    st.caption(f"{len(issues)} image(s) whose label the rest of the data contradicts"
               + (f"; the {SHOWN} most likely first" if len(issues) > SHOWN else "")
               + ". Decide for each, then save a corrected copy: the original stays as it is.")
    with st.form("label_review", enter_to_submit=False):
        for start in range(0, len(shown), COLUMNS):
            for column, issue in zip(st.columns(COLUMNS), shown[start : start + COLUMNS]):
                with column:
                    image = thumbnail(dataset["path"], issue["file"], 160)
                    if image is None:
                        st.caption("(image unavailable)")
                    else:
                        st.image(image, width=160)
                    st.caption(f"labelled **{plain(issue['given'])}**, looks like **{plain(issue['suggested'])}**",
                               help=f"A model trained on the other images gives its label {1 - issue['score']:.0%}.")
                    st.caption(plain(short_name(issue["file"])), help=plain(issue["file"]))
                    if image is not None:
                        zoom(thumbnail(dataset["path"], issue["file"], 512), issue["file"])
                    st.radio("Decision", _choices(issue), format_func=_choice_label(issue), key=f"fix_{issue['file']}",
                             label_visibility="collapsed")
        saved = st.form_submit_button("Save a corrected copy", type="primary")
    if saved:
        decisions = {i["file"]: st.session_state.get(f"fix_{i['file']}", KEEP) for i in shown}
        changed = {name: choice for name, choice in decisions.items() if choice != KEEP}
        if not changed:
            st.info("Every image is kept as it is: nothing to save.")
            return
        name = f"{dataset['name']} (corrected)"
        try:
            with st.spinner("Saving the corrected copy..."):
                path = corrected_version(store, load_images(dataset["path"]), changed, name, workspace())
        except TLCoreError as err:
            st.error(plain(err))
            return
        set_dataset(path, name)
        st.toast(f"Saved: {len(changed)} image(s) relabelled or left out. The original is under Saved datasets.")
        st.rerun()
