"""Security: private workspaces in hosted mode, public read-only share links, safe model loading,
no unpickling, and upload limits re-checked by the server."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import REPO
from tl_core.config import TrainConfig
from tl_core.errors import ExportError
from tl_core.jobs import queue_snapshot, run_worker, submit
from tl_core.store import is_valid_workspace_key, new_workspace_key

APP = str(REPO / "app.py")
FAST = TrainConfig(strategy="feature_extractor", backbone="vgg16", weights="none", image_size=32, batch_size=8)


def _noise_folder(root, n_per_class=9):
    """Three classes of pure noise: the model must make test mistakes, so the gallery has images."""
    rng = np.random.default_rng(3)
    for label in ("a", "b", "c"):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def _visit(page, ws=None, run=None):
    at = AppTest.from_file(APP, default_timeout=120)
    if ws:
        at.query_params["ws"] = ws
    at.run()
    assert not at.exception, at.exception
    if ws:  # a workspace from a link opens only when its visitor says so
        at.button(key="open_linked_workspace").click().run()
    if run:
        at.query_params["run"] = run
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def test_workspace_keys_are_unguessable():
    keys = {new_workspace_key() for _ in range(1000)}
    assert len(keys) == 1000 and all(is_valid_workspace_key(k) and len(k) == 22 for k in keys)
    assert not is_valid_workspace_key("../x") and not is_valid_workspace_key("")


def test_hosted_visitors_see_only_their_own_runs_while_share_links_stay_public(tmp_path, store, monkeypatch):
    monkeypatch.setenv("TL_HOSTED", "1")
    folder = _noise_folder(tmp_path / "noise")
    alice, bob = new_workspace_key(), new_workspace_key()
    private = submit(store, folder, FAST, name="alice's", workspace=alice, share_images=False)
    submit(store, folder, FAST, name="bob's", workspace=bob)
    assert run_worker(store, once=True) == 2
    snapshot = queue_snapshot(store, alice)
    assert snapshot["queued"] == [] and snapshot["others_queued"] == 0

    # Alice sees her run, and its images; Bob's does not appear.
    at = _visit("runs", ws=alice)
    assert list(at.dataframe[0].value["dataset"]) == ["alice's"]
    assert at.query_params["ws"] == alice  # the key stays in the URL across pages
    at = _visit("result", ws=alice, run=private)
    assert at.get("image") and not any("chose not to share" in c.value for c in at.caption)
    assert "ws" not in at.query_params  # a result page's address is a share link: no private key in it

    # A stranger with the share link: the metrics, read-only, without the images, no Resume.
    stranger = _visit("result", run=private)
    assert stranger.session_state["workspace"] not in (alice, bob)  # a new, empty workspace
    assert {m.label for m in stranger.metric} >= {"Test accuracy", "Macro F1"}
    assert any("chose not to share" in c.value for c in stranger.caption)
    assert not stranger.get("image")
    assert not [b for b in stranger.button if "Resume" in b.label or "Grad-CAM" in b.label]
    assert "Export" not in [t.label for t in stranger.tabs]  # exports are the owner's
    assert "Export" in [t.label for t in at.tabs]
    runs = _visit("runs", ws=stranger.session_state["workspace"])
    assert "No runs yet." in [i.value for i in runs.info]
    predict = _visit("predict", ws=stranger.session_state["workspace"])
    assert "Train a model first." in [i.value for i in predict.info]

    # Hosted visitors cannot read the server's disk: no local-folder tab.
    data = _visit("data", ws=alice)
    assert "Local folder" not in [t.label for t in data.tabs]


def _texts(at) -> list[str]:
    return [e.value for kind in ("markdown", "caption", "code", "info", "warning", "error", "success")
            for e in getattr(at, kind)]


def test_a_workspace_link_never_replaces_a_visitors_own_without_asking(tmp_path, store, monkeypatch, toy_folder):
    from tl_core.data import load_images
    from tl_core.datasets import list_datasets, save_image_set

    monkeypatch.setenv("TL_HOSTED", "1")
    someone = new_workspace_key()
    at = AppTest.from_file(APP, default_timeout=120).run()
    own = at.session_state["workspace"]
    assert at.query_params["ws"] == own

    # Someone else's link opened in the same session: asked, nothing of theirs shown, still one's own.
    at.query_params["ws"] = someone
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Open this workspace?"]
    assert not at.get("file_uploader") and at.session_state["workspace"] == own
    at.button(key="refuse_linked_workspace").click().run()
    assert at.session_state["workspace"] == own and at.query_params["ws"] == own
    assert "Open this workspace?" not in [t.value for t in at.title]

    # A fresh visitor with the link: asked too; "Start my own" gives a new, empty workspace.
    fresh = AppTest.from_file(APP, default_timeout=120)
    fresh.query_params["ws"] = someone
    fresh.run()
    assert [t.value for t in fresh.title] == ["Open this workspace?"]
    fresh.button(key="refuse_linked_workspace").click().run()
    assert fresh.session_state["workspace"] not in (someone, own)
    save_image_set(store, load_images(toy_folder), "mine", fresh.session_state["workspace"])
    assert list_datasets(store, someone) == []  # an upload after refusing lands in one's own

    # Choosing to open it (one's bookmark): that workspace, from then on in the session.
    at.query_params["ws"] = someone
    at.run()
    at.button(key="open_linked_workspace").click().run()
    assert at.session_state["workspace"] == someone and at.query_params["ws"] == someone
    assert "Open this workspace?" not in [t.value for t in at.title]


def test_no_link_the_app_builds_carries_the_workspace_key(tmp_path, store, monkeypatch):
    monkeypatch.setenv("TL_HOSTED", "1")
    alice = new_workspace_key()
    submit(store, _noise_folder(tmp_path / "noise"), FAST, name="alice's", workspace=alice)
    assert run_worker(store, once=True) == 1
    for page in ("runs", "train", "predict"):
        at = _visit(page, ws=alice)
        frames = [f.value for f in at.dataframe]
        assert all(alice not in str(frame.to_dict()) for frame in frames)  # the Runs table: no links with it
        holders = [t for t in _texts(at) if alice in t]
        # Only the sidebar's bookmark box, which says it is private, holds the key.
        assert len(holders) == 1 and holders[0].endswith(f"?ws={alice}"), holders


def test_saved_datasets_are_listed_only_in_their_workspace(tmp_path, store, toy_folder):
    from tl_core.data import load_images
    from tl_core.datasets import list_datasets, save_image_set

    alice, bob = new_workspace_key(), new_workspace_key()
    images = load_images(toy_folder)
    save_image_set(store, images, "alice's photos", alice)
    save_image_set(store, images, "bob's photos", bob)
    assert [d["name"] for d in list_datasets(store, alice)] == ["alice's photos"]
    assert [d["name"] for d in list_datasets(store, new_workspace_key())] == []
    assert len(list_datasets(store)) == 2  # a local app (no workspaces) lists everything


def test_a_model_file_carrying_python_code_is_refused(tmp_path):
    import keras

    from tl_core.model_files import load_model_file

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "evil.keras")
    with pytest.raises(ExportError, match="contains Python code"):
        load_model_file(tmp_path / "evil.keras")
    (tmp_path / "junk.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ExportError, match="not a Keras model"):
        load_model_file(tmp_path / "junk.keras")


class _Payload:
    """Unpickling this object creates a file: proof that a pickle was loaded."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_cache_file_is_never_unpickled(tmp_path):
    import keras

    from tl_core.features import extract_features

    cache, marker = tmp_path / "features.npy", tmp_path / "unpickled"
    np.save(cache, np.array([[_Payload(marker)] * 3] * 5, dtype=object), allow_pickle=True)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    x = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    features = extract_features(model, x, 4, cache_path=cache)
    assert not marker.exists()  # the payload never ran
    assert features.shape == (5, 3)
    assert np.load(cache, allow_pickle=False).dtype == np.float16  # replaced by a plain array


class _Upload:
    def __init__(self, name, size):
        self.name, self.size = name, size


def test_the_server_rechecks_upload_sizes(monkeypatch):
    import streamlit as st

    from ui.state import upload_too_large

    assert st.get_option("server.maxUploadSize") == 200  # read from .streamlit/config.toml
    assert upload_too_large([_Upload("ok.zip", 5 * 1024**2)]) is None
    assert "at most 200 MB per upload" in upload_too_large([_Upload("big.zip", 201 * 1024**2)])
    many = [_Upload(f"{i}.jpg", 30 * 1024**2) for i in range(8)]
    assert "add up to 240 MB" in upload_too_large(many)
    monkeypatch.setenv("TL_MAX_UPLOAD_MB", "10")
    assert "at most 10 MB" in upload_too_large([_Upload("x.zip", 11 * 1024**2)])


@pytest.mark.parametrize("text", [
    "![px](https&#58;&#47;&#47;evil.example&#47;track.png) [Verify your account](https://evil.example/login)",
    "<img src=x onerror=alert(1)>", "<svg onload=alert(1)>", "*bold* _it_ `code` # head", "1. list", "- item",
    "a|b", "~~s~~", ":red[x] :material/home: $x$", "back\\slash", "&amp; &#60;",
])
def test_user_text_escaped_for_markdown_renders_as_typed(text):
    """A class name in a flag, a caption or a model card reads as typed in a CommonMark renderer."""
    import html

    from markdown_it import MarkdownIt

    from tl_core.escape import markdown

    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown(text))
    assert rendered == f"<p>{html.escape(text, quote=False)}</p>\n"


def test_a_model_card_shows_hostile_class_names_as_typed():
    """Class names reach the card's table, its Classes line and its code block; none turns into an
    image, a link or HTML, and a name full of backticks cannot close the code block early."""
    from markdown_it import MarkdownIt

    from tl_core.export import model_card

    names = ["![px](https://evil.example/t.png)", "<img src=x onerror=alert(1)>", "a|b", "``` `` `"]
    run = {"id": "A" * 22, "config": {"train": {"strategy": "feature_extractor"}, "data": {"seed": 42}},
           "dataset": {"per_class": {n: 5 for n in names}, "n_images": 20},
           "metrics": {"class_names": names, "confusion_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
                       "test_accuracy": 1.0, "macro_f1": 1.0, "image_size": 32, "split": {"test": 4}}}
    export = {"format": "keras", "path": "model.keras", "bytes": 1000, "agreement": 1.0, "accuracy": 1.0,
              "app_accuracy": 1.0, "n_test": 4, "passed": True, "required_agreement": 0.99}
    md, _ = model_card(run, export)
    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(md)
    assert "<img" not in rendered and "<a " not in rendered  # escaped: "&lt;img", "!\[px\]"
    block = rendered.split("<pre><code")[1].split("</code></pre>")[0]
    assert rendered.count("<pre><code") == 1 and "[int(probabilities.argmax())])" in block  # not closed early


def _outward_address() -> str | None:
    """This machine's address on its network (not loopback), or ``None`` when it has none."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_local_mode_listens_on_this_machine_only(tmp_path):
    """``streamlit run app.py`` with the repository's config, no flags: reachable on 127.0.0.1, not
    from the network (its Local folder tab reads the user's disk)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no network address besides loopback")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("STREAMLIT_")}
    env["TL_DATA_DIR"] = str(tmp_path)
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "the app did not start on 127.0.0.1"
                time.sleep(0.5)
        with pytest.raises(OSError):
            socket.create_connection((outward, port), timeout=3).close()
    finally:
        server.terminate()
        server.wait(10)
