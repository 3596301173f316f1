"""Every page under Streamlit's AppTest, with the real engine and store behind it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from conftest import REPO, SHARED_WEIGHTS, make_toy_folder, needs_shared_weights
from streamlit.testing.v1 import AppTest

from tl_core.config import DataConfig, TrainConfig
from tl_core.data import decode_dataset, load_images
from tl_core.progress import NullProgress
from tl_core.runner import run_training

APP = str(REPO / "app.py")


@pytest.fixture()
def app(store):
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    return at


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_toy_folder(tmp_path_factory.mktemp("pages"), n_per_class=8)


def _open(at, page, **session):
    for key, value in session.items():
        at.session_state[key] = value
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def _dataset(folder):
    return {"dataset": {"path": str(folder), "name": "toy"}}


class _Logs(NullProgress):
    def __init__(self) -> None:
        self.logs = []

    def on_step(self, stage, step, logs=None):
        self.logs.append(logs)


def test_data_page_loads_a_local_folder_and_reports_its_health(app, folder, store):
    (folder / "red" / "broken.png").write_bytes(b"not an image")
    try:
        next(t for t in app.text_input if t.label == "Folder path").set_value(str(folder))
        app.run()
        next(b for b in app.button if b.label == "Use this folder").click()
        app.run()
        assert not app.exception
        metrics = {m.label: m.value for m in app.metric}
        assert metrics["Images"] == "24" and metrics["Classes"] == "3" and metrics["Skipped"] == "1"
        skipped = next(m.value for m in app.markdown if "broken\\.png" in m.value)  # listed with its whole reason
        assert skipped.startswith("- **red/broken\\.png**: not a readable image\\: the file holds text")
        assert app.session_state["dataset"]["path"] == str(folder)
        # The health check decoded the images into the pixel cache a training run reads (224 px).
        recorder = _Logs()
        decoded = decode_dataset(load_images(folder), 224, DataConfig(), recorder, store.cache_dir / "decoded")
        assert recorder.logs == [{"cached": 1.0}] and len(decoded.x) == 24
    finally:
        (folder / "red" / "broken.png").unlink()


def test_data_page_shows_a_bad_folder_as_a_message(app, tmp_path):
    next(t for t in app.text_input if t.label == "Folder path").set_value(str(tmp_path / "missing"))
    app.run()
    next(b for b in app.button if b.label == "Use this folder").click()
    app.run()
    assert not app.exception
    assert "No folder or zip file" in app.error[0].value


def test_offline_sample_builds_from_scikit_learn(app):
    next(b for b in app.button if b.label == "Load digits").click()
    app.run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Images"] == "1797" and metrics["Classes"] == "10"


def test_strategy_page_places_the_dataset_and_recommends(app, folder, monkeypatch, tmp_path):
    # No weights on disk and no way to download them: the page says how to get them, offers no
    # measurement that would fail, and recommends from the user's answer.
    monkeypatch.delenv("TL_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("TL_OFFLINE", "1")
    _open(app, "strategy", **_dataset(folder))
    assert not any(b.label == "Measure domain similarity" for b in app.button)
    assert "The ImageNet weights of MobileNet v1 are not on this machine" in app.warning[0].value
    assert "streamlit run app.py" in app.warning[0].value
    assert app.subheader[0].value == "Recommended: Feature extractor"
    assert any("smallest class has 8 images" in m.value for m in app.markdown)
    app.radio[0].set_value("different")
    app.run()
    assert "different domain" in " ".join(m.value for m in app.markdown)


def test_strategy_page_asks_before_a_measurement_that_may_download(app, folder, monkeypatch, tmp_path):
    # No weights on disk, but a machine that can download them: measuring could mean a download of
    # megabytes, so the page asks (the weights server's answer is the one thing not tried for real here).
    monkeypatch.delenv("TL_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("ui.state._can_download_weights", lambda host=None: True)
    _open(app, "strategy", **_dataset(folder))
    assert any(b.label == "Measure domain similarity" for b in app.button)
    assert not app.warning


@needs_shared_weights
def test_strategy_page_measures_the_domain_and_shows_why(app, folder, monkeypatch):
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(SHARED_WEIGHTS))  # weights on disk: it measures at once
    _open(app, "strategy", **_dataset(folder))
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Smallest class"] == "8"
    similarity = float(metrics["Similarity to ImageNet"])
    assert 0.0 <= similarity <= 1.0
    assert {"Statistics ×0.5", "Recognition ×0.25", "Transferability ×0.25"} <= set(metrics)
    text = " ".join(m.value for m in app.markdown)
    assert f"Measured similarity to ImageNet: {similarity:.2f}" in text and "smallest class has 8 images" in text
    assert "LogME" in app.dataframe[0].value.columns and len(app.dataframe[0].value) == 4  # last layer + 3 earlier
    assert app.session_state["recommendation"].strategy == "feature_extractor"
    # Cached per dataset: the next visit shows the same numbers without measuring again.
    started = time.perf_counter()
    _open(app, "strategy")
    assert time.perf_counter() - started < 10
    assert {m.label: m.value for m in app.metric}["Similarity to ImageNet"] == f"{similarity:.2f}"


def test_pages_without_a_dataset_point_to_the_data_page(app):
    for page in ("strategy", "train"):
        _open(app, page)
        assert app.info[0].value == "Load a dataset first."


def test_train_page_queues_a_run_that_a_background_worker_finishes(app, folder, store):
    _open(app, "train", **_dataset(folder))
    boxes = {s.label: s for s in app.selectbox}
    boxes["Backbone"].set_value("vgg16")
    boxes["Weights"].set_value("none")
    next(n for n in app.number_input if n.label == "Image size (px)").set_value(32)
    next(b for b in app.button if b.label == "Train").click()
    app.run()
    assert not app.exception
    assert app.success[0].value == "Queued 1 run(s)."
    run = store.list_runs()[0]
    try:
        deadline = time.time() + 240
        while store.get_run(run["id"])["status"] in ("queued", "running") and time.time() < deadline:
            time.sleep(1)
        finished = store.get_run(run["id"])
        assert finished["status"] == "succeeded", finished["error"]
        assert finished["config"]["train"]["backbone"] == "vgg16" and finished["config"]["train"]["image_size"] == 32
    finally:
        import subprocess

        subprocess.run(["pkill", "-f", f"tl_core worker --data-dir {store.data_dir}"], check=False)
    app.run()
    assert any("test accuracy" in m.value for m in app.markdown)


@needs_shared_weights
def test_compare_queues_every_strategy_on_the_same_repeated_splits(app, folder, store, monkeypatch):
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(SHARED_WEIGHTS))  # its transfer runs need ImageNet weights: on disk
    _open(app, "train", **_dataset(folder))
    next(n for n in app.number_input if n.label.startswith("Comparison: splits")).set_value(2)
    next(b for b in app.button if b.label == "Compare strategies").click()
    app.run()
    try:
        runs = store.list_runs()
        seeds = {}
        for r in runs:
            seeds.setdefault((r["config"]["train"]["strategy"], r["config"]["train"]["head"]), set()).add(
                r["config"]["data"]["seed"])
        assert len(runs) == 5 + 5 + 2 + 2 and len({r["config"]["group"] for r in runs}) == 1
        assert seeds == {("feature_extractor", "softmax"): {42, 43, 44, 45, 46},
                         ("feature_extractor", "ovr"): {42, 43, 44, 45, 46},
                         ("finetune", "softmax"): {42, 43}, ("scratch", "softmax"): {42, 43}}
    finally:
        for run in store.list_runs():
            store.request_cancel(run["id"])
        import subprocess

        subprocess.run(["pkill", "-f", f"tl_core worker --data-dir {store.data_dir}"], check=False)


@pytest.fixture()
def finished_run(folder, store):
    config = TrainConfig(backbone="vgg16", weights="none", image_size=32, strategy="finetune", epochs=3, fine_tune_epochs=1, unfreeze_blocks=1)
    run = run_training(folder, config, store=store)
    assert run["status"] == "succeeded"
    return run


def test_runs_result_and_predict_pages_render_a_finished_run(app, finished_run):
    _open(app, "runs")
    table = app.dataframe[0].value
    assert table.loc[0, "status"] == "succeeded" and table.loc[0, "run"].endswith(finished_run["id"][:4])
    assert "link" not in table  # a run opens from a selected row, in this session: no link to copy by mistake
    assert "Select a row (the box at its left) to open its result page." in [c.value for c in app.caption]

    app.query_params["run"] = finished_run["id"]
    _open(app, "result")
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Test accuracy"] == f"{finished_run['metrics']['test_accuracy']:.1%}"
    low, high = finished_run["metrics"]["test_accuracy_ci"]
    assert f"95% CI {low:.1%}-{high:.1%}" in [c.value for c in app.caption]
    assert metrics["Largest class alone"] == f"{finished_run['metrics']['majority_baseline']:.1%}"
    assert f"?run={finished_run['id']}" in app.code[0].value
    n_test = finished_run["metrics"]["n_test"]  # the Confidence tab says what ECE chance alone gives on them
    assert any(c.value.startswith(f"On {n_test} test images a perfectly calibrated model") for c in app.caption)

    _open(app, "predict")
    n_test = finished_run["metrics"]["n_test"]
    assert f"(95% CI {low:.1%}-{high:.1%} · {n_test} test images · largest class alone" in app.selectbox[0].value

    Path(finished_run["model_path"]).unlink()  # a wiped disk and no artifacts location to fetch it from
    _open(app, "predict")
    assert not app.exception and app.error[0].value.startswith("This run's model file is not on this server")


def test_result_page_refuses_bad_links(app, store):
    app.query_params["run"] = "../../etc/passwd"
    _open(app, "result")
    assert "does not point to a run" in app.error[0].value
    app.query_params["run"] = "A" * 22
    _open(app, "result")
    assert "No run with this id" in app.error[0].value


def test_train_page_says_which_fine_tuning_path_runs_and_why(app, folder):
    from tl_core.advisor import Recommendation

    for augment, probe, expected in (
            (False, False, "the frozen layers run once"),
            (True, False, "augmentation is on, so both stages run the whole ConvNet every epoch"),
            (False, True, "stage 1 is the linear probe on the cached features (one fit, LP-FT); stage 2 starts from it "
                          "and trains on cached activations"),
            (True, True, "stage 2 starts from it and runs the whole ConvNet every epoch (augmentation is on")):
        rec = Recommendation("large", "similar", "finetune", "Fine-tune",
                             settings={"strategy": "finetune", "augment": augment, "start_from_probe": probe})
        _open(app, "train", recommendation=rec, **_dataset(folder))
        assert expected in " ".join(c.value for c in app.caption)


def test_runs_page_shows_a_comparison_with_intervals_verdicts_and_the_best_group(app, folder, store):
    from tl_core.config import DataConfig

    tiny = dict(backbone="vgg16", weights="none", image_size=32, batch_size=8)
    for seed in (42, 43):
        for config in (TrainConfig(strategy="feature_extractor", **tiny), TrainConfig(strategy="scratch", epochs=1, **tiny)):
            assert run_training(folder, config, DataConfig(seed=seed), store, name="toy", group="cmp1")["status"] == "succeeded"
    _open(app, "runs")
    table = app.dataframe[0].value
    assert list(table["strategy"]) [:1] == [table.loc[table[""] == "★", "strategy"].iloc[0]]  # best first, starred
    assert set(table["strategy"]) == {"Feature extractor (softmax)", "From scratch"}
    assert set(table["splits"]) == {"2 of 2"} and table["95% CI"].str.match(r"\d+\.\d%-\d+\.\d%").all()
    assert any(c.value.startswith("Always guessing the largest class scores 33.3%") for c in app.caption)
    verdicts = [m.value for m in app.markdown if "Feature extractor (softmax)" in m.value and "From scratch" in m.value]
    assert len(verdicts) == 1 and ("no measurable difference" in verdicts[0] or "better than" in verdicts[0]
                                   or "worse than" in verdicts[0])
    runs_table = app.dataframe[1].value
    assert runs_table[""].str.contains("★").sum() >= 2  # the best group's runs are marked in the runs table too


def test_missing_weights_asks_the_right_server_and_names_the_right_files(monkeypatch, tmp_path):
    """keras.applications download from Google's storage, KerasHub (DINOv2) from Kaggle: the Train page's
    offline check asks the server the backbone would use, and names the files to put in TL_WEIGHTS_DIR."""
    import ui.state

    asked = []
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(ui.state, "_can_download_weights", lambda host: asked.append(host) or False)
    message = ui.state.missing_weights("dinov2_small")
    assert asked == [ui.state.KERAS_HUB_HOST]
    assert "`dinov2_small/model.weights.h5`" in message and "KerasHub's preset folder" in message
    assert "Keras' own download" in ui.state.missing_weights("vgg16") and asked[-1] == ui.state.KERAS_WEIGHTS_HOST


def test_strategy_and_train_refuse_a_dataset_of_one_class_before_any_work(app, tmp_path, store):
    folder = make_toy_folder(tmp_path / "one", n_per_class=4)
    for name in ("green", "blue"):
        shutil.rmtree(folder / name)
    for page in ("strategy", "train"):
        _open(app, page, dataset={"path": str(folder), "name": "one"})
        assert [e.value for e in app.error] == ["A classifier needs at least 2 classes with images; “one” has only 1 "
                                                "class with images: red. Add a folder of images per class on the "
                                                "Data page."]
        assert not [b for b in app.button if b.label in ("Measure domain similarity", "Train", "Compare strategies")]
    assert store.list_runs() == []


def test_a_failed_load_says_the_dataset_in_use_is_unchanged(app, folder, tmp_path):
    _open(app, "data", **_dataset(folder))
    (tmp_path / "empty").mkdir()
    next(t for t in app.text_input if t.label == "Folder path").set_value(str(tmp_path / "empty"))
    app.run()
    next(b for b in app.button if b.label == "Use this folder").click()
    app.run()
    assert not app.exception and app.error[0].value.startswith("No images found")
    assert "Nothing was loaded: the dataset in use, and the report below, are still “toy”." in [
        c.value for c in app.caption]
    assert app.session_state["dataset"]["path"] == str(folder)


def test_runs_table_says_why_a_run_failed(app, store):
    from tl_core.config import run_payload

    run_id = store.create_run(run_payload(TrainConfig(backbone="vgg16", weights="none"), DataConfig(), "/nowhere"),
                              status="running", name="toy")
    store.finish(run_id, "failed", error="Found 1 class (birds); a classifier needs at least 2.\nTraceback ...")
    _open(app, "runs")
    table = app.dataframe[0].value
    assert table.loc[0, "status"] == "failed"
    assert table.loc[0, "warning"] == "Found 1 class (birds); a classifier needs at least 2."
