"""The store, the current dataset and its report, as a Streamlit session sees them."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import streamlit as st

from tl_core.backbones import WEIGHTS_DIR_ENV, get_spec, local_weights_file, offline
from tl_core.config import DataConfig, TrainConfig
from tl_core.data import build_report, decode_dataset, load_images
from tl_core.errors import TLCoreError
from tl_core.escape import markdown as plain
from tl_core.fsutil import write_json_atomic
from tl_core.jobs import ensure_worker, standby_enabled
from tl_core.store import (
    RunStore,
    default_data_dir,
    is_valid_workspace_key,
    new_workspace_key,
)
from ui.progress import StreamlitProgress

LAST_DATASET = "last_dataset.json"
HOSTED_ENV = "TL_HOSTED"
WORKSPACE_PARAM = "ws"
PAGES = {
    "data": "app_pages/data.py",
    "strategy": "app_pages/strategy.py",
    "train": "app_pages/train.py",
    "runs": "app_pages/runs.py",
    "result": "app_pages/result.py",
    "predict": "app_pages/predict.py",
}
# Streamlit's Material icons (a font it ships): emoji render as empty boxes where no emoji font is installed.
ICONS = {
    "data": ":material/folder_open:",
    "strategy": ":material/explore:",
    "train": ":material/model_training:",
    "runs": ":material/leaderboard:",
    "result": ":material/link:",
    "predict": ":material/image_search:",
}


@st.cache_resource
def _store_at(data_dir: str, database_url: str | None, artifacts_url: str | None) -> RunStore:
    return RunStore(data_dir, database_url=database_url, artifacts_url=artifacts_url)


def get_store() -> RunStore:
    """The store of ``$TL_DATA_DIR`` (default ``~/.tl_studio``), with ``$TL_DATABASE_URL`` and
    ``$TL_ARTIFACTS_URL`` when set (root-level secrets on Community Cloud); opened once per server
    process and setting."""
    return _store_at(str(default_data_dir()), os.environ.get("TL_DATABASE_URL") or None,
                     os.environ.get("TL_ARTIFACTS_URL") or None)


def hosted() -> bool:
    """Whether this app is a public deployment (``TL_HOSTED=1``; a root-level secret on Community Cloud).

    Hosted, each visitor works in a private workspace, and nobody can read the server's disk.
    """
    return os.environ.get(HOSTED_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def workspace() -> str | None:
    """This visitor's private workspace key in a hosted app (``None`` in a local one).

    The key lives in the URL (``?ws=...``, 128 random bits) so a bookmark brings the visitor back
    to their datasets and runs; a visitor without one gets a new, empty workspace. A key in the URL
    that is not this session's own is used only once the visitor chose it (:func:`confirm_workspace_link`).
    """
    if not hosted():
        return None
    from_url = st.query_params.get(WORKSPACE_PARAM)
    key = st.session_state.get("workspace") or new_workspace_key()
    st.session_state["workspace"] = key
    if "run" in st.query_params:
        # A result page's address is a share link: it must not carry the private key.
        if from_url:
            del st.query_params[WORKSPACE_PARAM]
    elif from_url != key:
        st.query_params[WORKSPACE_PARAM] = key  # page switches drop it from the URL: put it back
    return key


def linked_workspace() -> str | None:
    """A workspace key in the URL that is not this session's own and not yet chosen, or ``None``."""
    if not hosted():
        return None
    from_url = st.query_params.get(WORKSPACE_PARAM)
    if not from_url or not is_valid_workspace_key(from_url):
        return None
    return None if from_url == st.session_state.get("workspace") else from_url


def confirm_workspace_link() -> None:
    """Ask before a workspace key from a link replaces this visitor's own, then stop the page.

    Anyone who has a workspace link can read and change that workspace, so a link must not drop a
    visitor into someone else's (their next upload would land there). Bookmarks of one's own
    workspace take one click.
    """
    key = linked_workspace()
    if key is None:
        return
    own = st.session_state.get("workspace")
    st.title("Open this workspace?")
    st.warning(
        f"This link opens the private workspace {key[:4]}…: its saved datasets and runs. Open it only if it "
        "is yours (your bookmark). Anyone with this link can see and change what is in it, and what you "
        "upload there is theirs to see too.", icon=":material/lock:")
    left, right = st.columns(2)
    if left.button("Open this workspace", type="primary", key="open_linked_workspace"):
        st.session_state["workspace"] = key
        st.rerun()
    if right.button("Back to my own workspace" if own else "Start my own workspace", key="refuse_linked_workspace"):
        st.session_state["workspace"] = own or new_workspace_key()
        st.query_params[WORKSPACE_PARAM] = st.session_state["workspace"]
        st.rerun()
    st.stop()


KERAS_WEIGHTS_HOST = ("storage.googleapis.com", 443)  # where keras.applications downloads its weights
KERAS_HUB_HOST = ("api.kaggle.com", 443)  # where KerasHub downloads its presets (DINOv2)


@st.cache_data(ttl=600, show_spinner=False)
def _can_download_weights(host: tuple[str, int] = KERAS_WEIGHTS_HOST) -> bool:
    """Whether the weights server ``host`` answers (one connection at most every 10 minutes, never a download).
    ``TL_OFFLINE=1`` says no without trying: a machine that must not download (air-gapped, or a hosted
    server whose operator ships the weights)."""
    if offline():
        return False
    try:
        socket.create_connection(host, timeout=3).close()
    except OSError:
        return False
    return True


def missing_weights(backbone: str) -> str | None:
    """What to do when ``backbone``'s ImageNet weights are neither on disk nor downloadable, else ``None``.

    On disk: ``$TL_WEIGHTS_DIR`` or Keras' download cache (``~/.keras/models``). The message names the
    files and the restart a new ``TL_WEIGHTS_DIR`` needs (the server reads it when it starts).
    """
    spec = get_spec(backbone)
    host = KERAS_HUB_HOST if spec.builder.startswith("tl_core.vit.") else KERAS_WEIGHTS_HOST
    if local_weights_file(spec.weights_files) is not None or _can_download_weights(host):
        return None
    where = (f"The folder in `{WEIGHTS_DIR_ENV}` has none of them, and this" if os.environ.get(WEIGHTS_DIR_ENV)
             else f"`{WEIGHTS_DIR_ENV}` is not set, and this")
    names = " or ".join(f"`{name}`" for name in (spec.weights_files[0], spec.weights_files[-1]))
    source = "KerasHub's preset folder, or its weights file alone" if host == KERAS_HUB_HOST else "Keras' own download"
    return (f"**The ImageNet weights of {spec.title} are not on this machine.** {where} machine cannot download "
            f"them, so a run with weights 'imagenet' would fail. To use them:\n"
            f"1. Put {names} ({source}) in a folder, e.g. `~/weights`.\n"
            f"2. Stop the app and start it again with the variable set: "
            f"`{WEIGHTS_DIR_ENV}=~/weights streamlit run app.py`. The app reads `{WEIGHTS_DIR_ENV}` only when it "
            "starts, so a restart is needed.")


def upload_limit_mb() -> float:
    """``server.maxUploadSize`` from ``.streamlit/config.toml``, lowered by ``TL_MAX_UPLOAD_MB`` if set."""
    limit_mb = float(st.get_option("server.maxUploadSize"))
    if os.environ.get("TL_MAX_UPLOAD_MB"):
        limit_mb = min(limit_mb, float(os.environ["TL_MAX_UPLOAD_MB"]))
    return limit_mb


def upload_too_large(uploads) -> str | None:
    """Why these uploaded files are refused, or ``None``: the server re-checks the browser's limits.

    Each file and all of them together must stay within ``server.maxUploadSize`` (MB, set in
    ``.streamlit/config.toml``); ``TL_MAX_UPLOAD_MB`` may lower it further.
    """
    limit_mb = upload_limit_mb()
    limit = limit_mb * 1024**2
    for upload in uploads:
        if upload.size > limit:
            return f"“{upload.name}” is {upload.size / 1024**2:.0f} MB; at most {limit_mb:g} MB per upload is accepted."
    total = sum(upload.size for upload in uploads)
    if total > limit:
        return (f"These files add up to {total / 1024**2:.0f} MB; at most {limit_mb:g} MB per dataset is accepted. "
                "Upload fewer or smaller images.")
    return None


def owns(run: dict[str, Any]) -> bool:
    """Whether this visitor may act on a run (resume, see its images): always, unless hosted."""
    return not hosted() or run.get("workspace") == workspace()


def may_show_images(run: dict[str, Any]) -> bool:
    """Whether this visitor may see the run's images: its owner, or anyone if the owner shared them.

    Runs made before the setting existed share them in a local app and keep them private when hosted.
    """
    return owns(run) or bool((run.get("config") or {}).get("share_images", not hosted()))


def current_dataset() -> dict[str, Any] | None:
    """``{path, name}`` of the dataset this session works on, if one is loaded.

    A new session (a reload, a new tab) starts with the dataset loaded last in its workspace.
    """
    if "dataset" not in st.session_state and not st.session_state.get("dataset_restored"):
        st.session_state["dataset_restored"] = True  # once: a removed dataset is not brought back
        previous = last_dataset()
        if previous is not None:
            st.session_state["dataset"] = {"path": previous["path"], "name": previous["name"]}
    dataset = st.session_state.get("dataset")
    if dataset is not None and not Path(dataset["path"]).exists():
        # Deleted (in another tab too), or its folder moved: the pages say so instead of failing on it.
        forget_dataset(f"The dataset “{plain(dataset['name'])}” is no longer on this server (deleted, or its "
                       "folder moved or renamed). Load it again on the Data page.", "warning")
        return None
    return dataset


def forget_dataset(notice: str, kind: str = "success") -> None:
    """Drops this session's dataset and says why (see :func:`notify_dataset`)."""
    st.session_state.pop("dataset", None)
    st.session_state.pop("recommendation", None)
    notify_dataset(notice, kind)


def notify_dataset(notice: str, kind: str = "success") -> None:
    """``notice`` (Markdown, user text escaped) is shown once, after a rerun, as an ``st.success`` or
    ``st.warning`` (``kind``), by the next :func:`dataset_notice`."""
    st.session_state["dataset_notice"] = (kind, notice)


def saved_label(saved: dict[str, Any], name: bool = True) -> str:
    """How a saved dataset is named in a list (plain text): its name, file count and when it was saved."""
    when = time.strftime("%d %b %Y %H:%M:%S", time.localtime(saved["created_at"])) if saved.get("created_at") else None
    about = f"{saved.get('n_files', '?')} files" + (f", saved {when}" if when else "")
    return f"{saved['name']} ({about})" if name else about


def dataset_notice() -> None:
    """Shows, once, what happened to this session's dataset (see :func:`notify_dataset`)."""
    kind, notice = st.session_state.pop("dataset_notice", (None, None))
    if notice:
        (st.warning if kind == "warning" else st.success)(notice)


def _last_dataset_file() -> Path:
    key = workspace()
    return get_store().data_dir / (LAST_DATASET if key is None else f"last_dataset-{key}.json")


def set_dataset(path: str | Path, name: str) -> None:
    st.session_state["dataset"] = {"path": str(path), "name": name}
    st.session_state.pop("recommendation", None)
    write_json_atomic(_last_dataset_file(), st.session_state["dataset"])
    if standby_enabled():  # training comes next: the worker starts now and gets TensorFlow ready for it
        ensure_worker(get_store())


def last_dataset() -> dict[str, Any] | None:
    """The dataset loaded most recently on this server (in this workspace, hosted), for a reloaded page."""
    try:
        dataset = json.loads(_last_dataset_file().read_text())
    except (OSError, ValueError):
        return None
    return dataset if Path(dataset.get("path", "")).exists() else None


def dataset_stamp(path: Path) -> float:
    """Changes when files are added to or removed from the folder's class folders."""
    if path.is_file():
        return path.stat().st_mtime
    return max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.iterdir() if p.is_dir()])


def dataset_report(path: str) -> dict[str, Any] | None:
    """The dataset's health report, decoded once per session with a progress bar (and into the
    decoded-pixel cache that training reads).

    Errors become an ``st.error`` and ``None``.
    """
    try:
        key = (path, dataset_stamp(Path(path)))
    except OSError as err:  # gone since the page checked
        st.error(f"The dataset's folder cannot be read ({plain(err.strerror or err)}). Load it again on the Data page.")
        return None
    cache = st.session_state.setdefault("reports", {})
    if key not in cache:
        try:
            data_config = DataConfig()
            image_set = load_images(path, data_config)
            # Decoded at the backbones' input size into the run's pixel cache: the first training
            # run then reads its pixels at memory speed instead of decoding the files again.
            decoded = decode_dataset(image_set, get_spec(TrainConfig().backbone).input_size, data_config,
                                     StreamlitProgress("Checking images"), get_store().cache_dir / "decoded")
        except TLCoreError as err:
            st.error(plain(err))
            return None
        cache[key] = build_report(image_set, decoded)
    return cache[key]


def require_dataset() -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The current dataset and its report, or a pointer to the Data page."""
    dataset = current_dataset()
    if dataset is None:
        dataset_notice()
        st.info("Load a dataset first.")
        st.page_link(PAGES["data"], label="Go to Data", icon=ICONS["data"])
        return None
    report = dataset_report(dataset["path"])
    if report is None:
        return None
    usable = [name for name, n in report["per_class"].items() if n > 0]
    if len(usable) < 2:  # nothing to measure or train: say so before any work, not when a run fails
        found = f"only 1 class with images: {plain(usable[0])}" if usable else "no class with images"
        st.error(f"A classifier needs at least 2 classes with images; “{plain(dataset['name'])}” has {found}. "
                 "Add a folder of images per class on the Data page.")
        st.page_link(PAGES["data"], label="Go to Data", icon=ICONS["data"])
        return None
    return dataset, report
