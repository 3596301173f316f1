"""The newcomer's path (issue 19): weights checked before a run is queued, readable runs and charts,
the data page in plain words, an app shell without Streamlit's own buttons and with working deep links."""

from __future__ import annotations

import pytest
from conftest import REPO, make_toy_folder
from streamlit.testing.v1 import AppTest
from test_pages import _open

from tl_core import charts
from tl_core.config import DataConfig, TrainConfig
from tl_core.runner import run_training

APP = str(REPO / "app.py")
TINY = dict(backbone="vgg16", weights="none", image_size=32, batch_size=8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_toy_folder(tmp_path_factory.mktemp("newcomer"), n_per_class=8)


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """No weights anywhere: an empty TL_WEIGHTS_DIR, an empty Keras cache, no network."""
    import socket

    import streamlit as st

    (tmp_path / "weights").mkdir()
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def refuse(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(socket, "create_connection", refuse)
    st.cache_data.clear()  # the reachability check is cached
    yield
    st.cache_data.clear()


def _page(page, dataset=None, **session):
    """A new session (a fresh AppTest) on ``page``, with ``dataset`` as its current dataset if given."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    if dataset is not None:
        session["dataset"] = {"path": str(dataset), "name": "toy"}
    return _open(at, page, **session)


def test_without_weights_train_says_what_to_do_and_queues_nothing(offline, store, folder):
    at = _page("train", folder)
    guidance = " ".join(w.value for w in at.warning)
    assert "mobilenet_v1_1.0_224_imagenet_notop.weights.h5" in guidance
    assert "TL_WEIGHTS_DIR=~/weights streamlit run app.py" in guidance and "restart" in guidance
    next(b for b in at.button if b.label == "Train").click()
    at.run()
    assert not at.exception and not at.success
    assert store.list_runs() == []
    assert "Not queued" in at.error[0].value
    next(b for b in at.button if b.label == "Compare strategies").click()
    at.run()
    assert store.list_runs() == []
    # Weights 'none' needs nothing: no warning, and the run is queued.
    next(s for s in at.selectbox if s.label == "Weights").set_value("none")
    next(b for b in at.button if b.label == "Train").click()
    at.run()
    try:
        assert not at.warning and at.success[0].value == "Queued 1 run(s)."
    finally:
        for run in store.list_runs():
            store.request_cancel(run["id"])


def test_with_weights_on_disk_train_shows_no_warning(store, folder, monkeypatch, tmp_path):
    from tl_core.backbones import get_spec

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / get_spec("mobilenet").weights_files[0]).write_bytes(b"")
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(tmp_path / "w"))
    at = _page("train", folder)
    assert not [w for w in at.warning if "ImageNet weights" in w.value]


def test_without_weights_strategy_does_not_advise_random_weights_nor_pass_an_answer_for_a_measurement(
        offline, store, folder):
    at = _page("strategy", folder)
    # Without weights there is nothing to measure: no button that would fail, the guidance instead.
    assert not [b for b in at.button if b.label == "Measure domain similarity"]
    text = " ".join(w.value for w in at.warning)
    assert "TL_WEIGHTS_DIR" in text and "weights 'none'" not in text
    assert any("not measured" in c.value for c in at.caption)


def test_resume_is_offered_only_where_resuming_helps():
    from ui.run_view import resumable

    assert resumable({"status": "cancelled", "error": "Cancelled."})
    assert resumable({"status": "failed", "error": "The run's training process was killed (SIGKILL). Resume it to "
                                                   "go on from its last completed epoch."})
    assert not resumable({"status": "failed", "error": "Could not download the ImageNet weights of MobileNet v1 "
                                                       "(URL fetch failure). Offline? Put '...' in a folder."})
    assert not resumable({"status": "failed", "error": "Class 'cat' has 1 image; a stratified split needs at least 2."})


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """A store with runs on two datasets: a feature extractor from an earlier block, and a failed run."""
    root = tmp_path_factory.mktemp("two")
    from tl_core.store import RunStore

    store = RunStore(root / "data")
    first = make_toy_folder(root / "first", n_per_class=8)
    second = make_toy_folder(root / "second", n_per_class=8, seed=1)
    runs = [run_training(first, TrainConfig(strategy="feature_extractor", feature_cut=0, **TINY), DataConfig(), store,
                         name="first"),
            run_training(first, TrainConfig(strategy="feature_extractor", feature_cut=2, **TINY), DataConfig(), store,
                         name="first"),
            run_training(second, TrainConfig(strategy="feature_extractor", feature_cut=0, **TINY), DataConfig(), store,
                         name="second"),
            run_training(root / "missing", TrainConfig(strategy="feature_extractor", **TINY), DataConfig(), store,
                         name="second")]
    assert [r["status"] for r in runs] == ["succeeded"] * 3 + ["failed"]
    return root / "data", runs


def test_runs_page_filters_by_dataset_marks_the_best_and_never_shows_none(two_datasets, monkeypatch):
    data_dir, runs = two_datasets
    monkeypatch.setenv("TL_DATA_DIR", str(data_dir))
    at = _page("runs")
    table = at.dataframe[0].value
    assert set(table["dataset"]) == {"first", "second"}
    assert not table.isin(["None"]).any().any()
    assert at.dataframe[0].proto.placeholder == "—"  # cells without a value (a failed run's accuracy)
    best = table[table[""].str.contains("best")]
    assert set(best["dataset"]) == {"first", "second"} and len(best) >= 2
    assert "4 blocks" not in " ".join(table["run"]) and any("2 blocks below the top" in r for r in table["run"])
    at.multiselect(key="runs_datasets").set_value(["second"]).run()
    table = at.dataframe[0].value
    assert set(table["dataset"]) == {"second"} and len(table) == 2
    scatter = [c for c in at.get("plotly_chart")]
    assert scatter and "first" not in str(scatter[0].proto.spec)
    assert any(c.value.startswith("No learning curves to compare: every run here is a feature extractor")
               for c in at.caption)  # one step each: nothing to draw, so no picker


def test_run_labels_tell_runs_of_one_strategy_apart():
    def label(**train):
        return charts.run_label({"id": "Abcdefgh", "config": {"train": {"backbone": "mobilenet", **train}}})

    assert label(strategy="feature_extractor", head="softmax", feature_cut=4, image_size=224) == \
        "Feature extractor (softmax, 4 blocks below the top) · mobilenet · Abcd"
    assert label(strategy="feature_extractor", head="softmax", feature_cut=0) == \
        "Feature extractor (softmax) · mobilenet · Abcd"
    assert label(strategy="finetune", start_from_probe=True, augment=True, image_size=96) == \
        "Two-stage fine-tuning (LP-FT, augmented, 96 px) · mobilenet · Abcd"


def test_time_axis_ticks_are_powers_of_ten_in_seconds_and_epoch_axes_whole():
    runs = [{"id": f"r{i}", "config": {"train": {"strategy": "scratch", "backbone": "vgg16"}},
             "metrics": {"test_accuracy": 0.5, "seconds": s}} for i, s in enumerate((3.2, 45.0, 80.0))]
    axis = charts.accuracy_vs_time(runs).layout.xaxis
    assert list(axis.tickvals) == [1, 2, 5, 10, 20, 50, 100]
    assert list(axis.ticktext) == ["1 s", "2 s", "5 s", "10 s", "20 s", "50 s", "100 s"]
    runs[0]["metrics"]["seconds"] = 0.5
    runs[2]["metrics"]["seconds"] = 3000.0  # five powers of ten: 0.1, 1, 10... only
    assert list(charts.accuracy_vs_time(runs).layout.xaxis.tickvals) == [0.1, 1, 10, 100, 1000, 10000]
    epochs = {"stage1": [{"epoch": 1, "loss": 1.0, "accuracy": 0.5}, {"epoch": 2, "loss": 0.5, "accuracy": 0.7}]}
    for figure in (charts.stage_curves(epochs), charts.learning_curves([{"id": "r1", "config": {}, "epochs": epochs}])):
        assert figure.layout.xaxis.dtick == 1 and figure.layout.xaxis.tickformat == "d"


def test_data_page_says_sizes_and_colour_modes_in_words(store, tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "gray" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (30, 30), 40 * i).save(tmp_path / "gray" / label / f"{i}.png")
    at = _page("data", tmp_path / "gray")
    assert "Images: all 30 x 30 px; 6 grayscale." in [c.value for c in at.caption]


def test_a_new_session_continues_with_the_last_dataset(store, folder):
    at = _page("data")
    next(t for t in at.text_input if t.label == "Folder path").set_value(str(folder))
    at.run()
    next(b for b in at.button if b.label == "Use this folder").click()
    at.run()
    reloaded = _page("train")  # a reload: a new session
    assert reloaded.session_state["dataset"]["path"] == str(folder)
    assert not [i for i in reloaded.info if i.value == "Load a dataset first."]


def test_the_header_has_no_deploy_button_and_pages_use_material_icons():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["client"]["toolbarMode"] == "minimal" and config["server"]["address"] == "127.0.0.1"
    from ui.state import ICONS, PAGES

    assert set(ICONS) == set(PAGES) and all(icon.startswith(":material/") for icon in ICONS.values())


def test_the_advisor_text_agrees_with_the_bench_at_2000_per_class(store, folder):
    from tl_core.advisor import BENCH

    at = _page("strategy", folder)
    text = " ".join(m.value for m in at.markdown)
    assert "training the whole network wins" not in text
    assert f"{BENCH['large']['earlier_features']:.3f}" in text and f"{BENCH['large']['scratch']:.3f}" in text


def test_compare_says_what_it_will_run_before_the_click(store, folder):
    from tl_core.config import COMPARE_COSTLY_SPLITS, COMPARE_FEATURE_SPLITS

    at = _page("train", folder)
    expected = (f"Compare queues {2 * (COMPARE_FEATURE_SPLITS + COMPARE_COSTLY_SPLITS)} runs: Feature extractor "
                f"(softmax) x {COMPARE_FEATURE_SPLITS} splits")
    assert any(c.value.startswith(expected) for c in at.caption)


def test_accuracy_against_time_shows_each_runs_interval_and_marks_the_best_in_words():
    from tl_core.metrics import accuracy_interval

    confusion = [[9, 1], [3, 7]]  # 16 of 20 right
    runs = [{"id": "a", "config": {"train": {"strategy": "scratch", "backbone": "vgg16"}},
             "metrics": {"test_accuracy": 0.8, "seconds": 5.0, "confusion_matrix": confusion, "class_names": ["x", "y"]}},
            {"id": "b", "config": {"train": {"strategy": "scratch", "backbone": "vgg16"}},
             "metrics": {"test_accuracy": 0.5, "seconds": 7.0}}]  # an old run without its matrix: no bar
    fig = charts.accuracy_vs_time(runs, best={"a"})
    low, high = accuracy_interval(16, 20)
    assert fig.data[0].error_y.array[0] == pytest.approx(high - 0.8)
    assert fig.data[0].error_y.arrayminus[0] == pytest.approx(0.8 - low)
    assert fig.data[0].name.startswith("best · ") and fig.data[0].marker.symbol == "diamond"
    assert fig.data[1].error_y.array is None and not fig.data[1].name.startswith("best")
    assert fig.layout.yaxis.title.text == "test accuracy (bars: 95% CI)"
