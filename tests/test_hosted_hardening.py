"""A hosted app opened to strangers: user text in the model card, the HTML report and charts reads as
typed; the server's folders stay private; ids, database URLs and remote manifests are checked."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tl_core import charts, escape
from tl_core.artifacts import MANIFEST, ArtifactMirror
from tl_core.errors import ConfigError
from tl_core.export import html_report, model_card
from tl_core.store import RunStore, is_valid_run_id, is_valid_workspace_key, new_run_id, parse_database_url

HOSTILE = ("![px](https&#58;&#47;&#47;evil.example&#47;track.png) [Verify](https://evil.example/login) "
           "<img src=x onerror=alert(1)> <svg onload=alert(1)>")
PLOTLY_HOSTILE = '<a href="https://evil.example">Verify</a> <b>bold</b><br><img src=x onerror=alert(1)> &#60;i&#62;'
WEIGHTS_DIR = "/home/owner/secret-weights"
EVIL_ELEMENTS = {"a", "img", "svg", "script", "iframe"}


class _Elements(HTMLParser):
    """The element names and the text of an HTML document (a script's body is text, not elements)."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.text: list[str] = []
        self.feed(document)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)

    def handle_data(self, data):
        self.text.append(data)


def _hostile_run(name: str = HOSTILE) -> dict:
    names = [name, "cat"]
    return {
        "id": "A" * 22, "status": "succeeded", "created_at": 0.0, "error": None,
        "config": {"train": {"strategy": "feature_extractor", "head": "softmax", "backbone": "mobilenet",
                             "weights": f"{WEIGHTS_DIR}/my <img src=x onerror=alert(1)>.h5"},
                   "data": {"seed": 42}},
        "dataset": {"per_class": {n: 5 for n in names}, "n_images": 10, "fingerprint": "ab12"},
        "metrics": {"class_names": names, "confusion_matrix": [[2, 0], [0, 2]], "test_accuracy": 1.0, "macro_f1": 1.0,
                    "image_size": 32, "split": {"test": 4}, "hardware": "CPU",
                    "weights": f"ImageNet ({WEIGHTS_DIR}/mobilenet_1_0_224_tf_no_top.h5)",
                    "per_class": {n: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2} for n in names},
                    "top_mistakes": [{"file": f"{name}/{name}.png", "true": name, "predicted": "cat", "probability": 0.9}]},
        "epochs": {"stage1": [{"epoch": 1, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.6, "val_accuracy": 0.7}]},
    }


_EXPORT = {"format": "keras", "path": "/srv/out/`<img src=x onerror=alert(1)>`.keras", "bytes": 1000,
           "agreement": 1.0, "accuracy": 1.0, "app_accuracy": 1.0, "n_test": 4, "passed": True,
           "required_agreement": 1.0}


# ----------------------------------------------------------------------------- the model card

def test_the_model_card_renders_every_user_text_as_typed_in_a_commonmark_renderer():
    from markdown_it import MarkdownIt

    md, _ = model_card(_hostile_run(), _EXPORT)
    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(md)  # raw HTML on, as CommonMark
    page = _Elements(rendered)
    assert not page.tags & EVIL_ELEMENTS, page.tags & EVIL_ELEMENTS
    text = "".join(page.text)
    assert HOSTILE in text  # the class name reads as typed (entities not decoded)
    assert "`<img src=x onerror=alert(1)>`.keras" in text  # the file name too, backticks and all


def test_the_model_card_names_the_weights_file_never_the_servers_folders():
    md, card = model_card(_hostile_run(), _EXPORT)
    assert WEIGHTS_DIR not in md and WEIGHTS_DIR not in json.dumps(card)
    assert card["model"]["weights"] == "ImageNet (mobilenet_1_0_224_tf_no_top.h5)"
    assert card["model"]["settings"]["weights"] == "my <img src=x onerror=alert(1)>.h5"


# ----------------------------------------------------------------------------- the HTML report

def test_the_html_report_shows_user_text_as_text_and_no_server_folder():
    report = html_report(_hostile_run(PLOTLY_HOSTILE + " </script><img src=x onerror=alert(2)>"))
    page = _Elements(report)
    assert not page.tags & EVIL_ELEMENTS - {"script"}  # Plotly's own <script> elements are expected
    for raw in ("onerror=alert(1)>", "onerror=alert(2)>", '<a href="https://evil', "</script><img"):
        assert raw not in report, raw  # not in the tables, nor in the figures' JSON inside <script>
    assert PLOTLY_HOSTILE in "".join(page.text)  # the tables show the name as typed
    assert WEIGHTS_DIR not in report


# ----------------------------------------------------------------------------- Plotly charts

def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif hasattr(value, "tolist"):  # numpy arrays of names
        yield from _strings(value.tolist())


def _figures(name: str) -> dict:
    run = _hostile_run(name)
    run["config"]["train"]["head"] = name  # run labels are user text too
    summary = {"strategies": [{"label": name, "mean_accuracy": 0.8, "accuracy_ci": [0.7, 0.9], "n_splits": 3,
                               "best": True}]}
    return {
        "class_counts": charts.class_counts(run["dataset"]["per_class"]),
        "confusion": charts.confusion(run["metrics"]),
        "top_classes": charts.top_classes({name: 0.9, "cat": 0.1}),
        "learning_curves": charts.learning_curves([run]),
        "accuracy_vs_time": charts.accuracy_vs_time([{**run, "metrics": {"test_accuracy": 0.9, "seconds": 3}}]),
        "comparison": charts.comparison(summary),
    }


@pytest.mark.parametrize("chart", ["class_counts", "confusion", "top_classes", "learning_curves",
                                   "accuracy_vs_time", "comparison"])
def test_plotly_charts_show_class_names_and_run_labels_as_text(chart):
    figure = _figures(PLOTLY_HOSTILE)[chart].to_plotly_json()
    strings = list(_strings(figure))
    for raw in ("<a href", "<b>bold", "<br><img", "<img", "&#60;i"):
        assert not [s for s in strings if raw in s], (chart, raw)
    assert any(escape.plotly(PLOTLY_HOSTILE) in s for s in strings), chart


# ----------------------------------------------------------------------------- ids and keys

def test_run_ids_and_workspace_keys_with_a_trailing_newline_are_refused():
    good = new_run_id()
    assert is_valid_run_id(good) and is_valid_workspace_key(good)
    for bad in (good + "\n", good + "\r\n", "\n" + good):
        assert not is_valid_run_id(bad) and not is_valid_workspace_key(bad), repr(bad)


# ----------------------------------------------------------------------------- database URLs

@pytest.mark.parametrize("port", ["abc", "", "99999", "0"])
def test_a_database_url_with_a_bad_port_is_a_config_error_without_the_password(port):
    url = f"postgresql://alice:s3cr3t-pw@db.example.com:{port}/runs"
    with pytest.raises(ConfigError, match="port that is not a number from 1 to 65535") as caught:
        parse_database_url(url)
    assert "s3cr3t-pw" not in str(caught.value) and caught.value.__cause__ is None


def test_a_bad_port_in_the_environment_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_DATABASE_URL", "postgresql://alice:s3cr3t-pw@db.example.com:abc/runs")
    with pytest.raises(ConfigError, match="TL_DATABASE_URL has a port") as caught:
        RunStore(tmp_path / "data")
    assert "s3cr3t-pw" not in str(caught.value)


# ----------------------------------------------------------------------------- remote manifests

@pytest.fixture()
def mirrored(tmp_path):
    """A run folder mirrored to a local bucket (a file:// URL, as s3:// would be) and that bucket's root."""
    folder = tmp_path / "data" / "runs" / "R"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    mirror = ArtifactMirror((tmp_path / "bucket").as_uri())
    mirror.upload(folder, "runs/R")
    return mirror, tmp_path / "bucket"


def _tamper(bucket: Path, names: dict[str, bytes]) -> None:
    """Write ``names`` into the bucket relative to the run's mirror and list them in its manifest."""
    manifest = bucket / "runs" / "R" / MANIFEST
    files = json.loads(manifest.read_text())["files"]
    for name, content in names.items():
        target = Path(str(bucket / "runs" / "R") + "/" + name)  # where fsspec reads it from
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        files[name] = [len(content), 0]
    manifest.write_text(json.dumps({"files": files}))


@pytest.mark.parametrize("name", ["../../../escaped.txt", "ABSOLUTE", "sub\\..\\..\\x.txt", "a/./b.txt",
                                  "nul\0.txt"])
def test_a_tampered_manifest_fetches_nothing(mirrored, tmp_path, name):
    mirror, bucket = mirrored
    if name == "ABSOLUTE":
        name = str(tmp_path / "absolute.txt")
    if "\0" in name:  # no file system stores it: only the manifest can carry it
        manifest = bucket / "runs" / "R" / MANIFEST
        files = json.loads(manifest.read_text())["files"] | {name: [1, 0]}
        manifest.write_text(json.dumps({"files": files}))
    else:
        _tamper(bucket, {name: b"planted"})
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    fresh = tmp_path / "fresh" / "R"
    with pytest.raises(ConfigError, match="outside its folder.*nothing of it was fetched"):
        mirror.download("runs/R", fresh)
    assert not (tmp_path / "fresh").exists()  # refused before any folder was made
    assert {p for p in tmp_path.rglob("*") if p.is_file()} == before
    assert mirror.try_download("runs/R", fresh) is False and not fresh.exists()


def test_a_tampered_manifest_makes_an_upload_remove_nothing_outside_its_key(mirrored, tmp_path):
    mirror, bucket = mirrored
    _tamper(bucket, {"../victim.txt": b"x"})
    victim = bucket / "runs" / "victim.txt"
    victim.write_text("another run's file")
    mirror.upload(tmp_path / "data" / "runs" / "R", "runs/R")
    assert victim.read_text() == "another run's file"
    assert json.loads((bucket / "runs" / "R" / MANIFEST).read_text())["files"].keys() == {"metrics.json"}


def test_saved_dataset_names_with_a_trailing_newline_are_not_saved_uploads(tmp_path):
    from tl_core.datasets import is_saved_upload

    assert is_saved_upload(tmp_path / "AbCdEfGh12345678")
    assert not is_saved_upload(tmp_path / "AbCdEfGh12345678\n")
