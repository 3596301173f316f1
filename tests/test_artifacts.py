"""The artifacts location: run folders and saved datasets outlive a wiped disk."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from conftest import REPO

from tl_core.artifacts import MANIFEST, ArtifactMirror
from tl_core.data import load_images
from tl_core.datasets import list_datasets, local_source, read_image_bytes, save_image_set
from tl_core.errors import ConfigError
from tl_core.store import RunStore


@pytest.fixture()
def bucket(tmp_path):
    """An artifacts location given as a URL, as s3:// or gs:// would be."""
    return (tmp_path / "bucket").as_uri()


def _files(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_a_finished_run_is_copied_and_a_wiped_disk_gets_it_back(tmp_path, bucket):
    database = f"sqlite:///{tmp_path / 'runs.db'}"  # the database outlives the disk (PostgreSQL when hosted)
    store = RunStore(tmp_path / "data", database_url=database, artifacts_url=bucket)
    run_id = store.create_run({"train": {}}, status="running")
    folder = store.run_dir(run_id)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "stage1.weights.h5").write_bytes(b"w" * 1000)
    (folder / ".config.json.123.tmp").write_text("half written")
    store.finish(run_id, "failed", error="killed")
    remote = tmp_path / "bucket" / "runs" / run_id
    assert _files(remote) == {"config.json", "checkpoints/stage1.weights.h5", MANIFEST}  # no temporary files

    shutil.rmtree(tmp_path / "data")  # the host restarts on an empty disk
    fresh = RunStore(tmp_path / "data", database_url=database, artifacts_url=bucket)
    assert fresh.get_run(run_id)["status"] == "failed"
    fresh.ensure_local(run_id)
    assert (fresh.run_dir(run_id) / "checkpoints" / "stage1.weights.h5").read_bytes() == b"w" * 1000  # to resume

    fresh.requeue(run_id)
    assert fresh.claim_next_queued() == run_id
    shutil.rmtree(fresh.run_dir(run_id) / "checkpoints")  # it succeeded: nothing left to resume
    (fresh.run_dir(run_id) / "model.keras").write_bytes(b"model")
    fresh.finish(run_id, "succeeded", {"test_accuracy": 0.9})
    assert _files(remote) == {"config.json", "metrics.json", "model.keras", MANIFEST}

    (fresh.run_dir(run_id) / "gradcam").mkdir()  # a page draws heat maps later, then publishes them
    (fresh.run_dir(run_id) / "gradcam" / "a.png").write_bytes(b"png")
    assert fresh.artifacts.upload(fresh.run_dir(run_id), f"runs/{run_id}") == 1  # only what changed is sent
    fresh.publish(run_id)
    assert (remote / "gradcam" / "a.png").read_bytes() == b"png"

    fresh.delete_run(run_id)
    assert not remote.exists() and not fresh.run_dir(run_id).exists()


def test_without_an_artifacts_location_nothing_is_copied(tmp_path, monkeypatch):
    monkeypatch.delenv("TL_ARTIFACTS_URL", raising=False)
    store = RunStore(tmp_path / "data")
    run_id = store.create_run({}, status="running")
    store.finish(run_id, "succeeded", {"test_accuracy": 1.0})
    store.publish(run_id)
    assert store.artifacts is None and store.env_vars() == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    shutil.rmtree(store.run_dir(run_id))
    assert not store.run_dir(run_id).exists() and store.get_run(run_id)["status"] == "succeeded"


def test_the_artifacts_location_comes_from_the_environment_and_reaches_child_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_ARTIFACTS_URL", str(tmp_path / "mirror"))  # a plain folder path works too
    store = RunStore(tmp_path / "data")
    run_id = store.create_run({}, status="running")
    store.finish(run_id, "cancelled", error="Cancelled.")
    assert (tmp_path / "mirror" / "runs" / run_id / "config.json").is_file()
    assert store.env_vars() == {"TL_ARTIFACTS_URL": str(tmp_path / "mirror")}
    with pytest.raises(ConfigError, match="cannot be used"):
        ArtifactMirror("nosuchprotocol://bucket/x")


def test_a_failed_copy_never_fails_the_run(tmp_path, caplog):
    (tmp_path / "not-a-folder").write_text("a file where the location should be")
    store = RunStore(tmp_path / "data", artifacts_url=str(tmp_path / "not-a-folder"))
    run_id = store.create_run({}, status="running")
    with caplog.at_level(logging.WARNING, logger="tl_core.artifacts"):
        store.finish(run_id, "succeeded", {"test_accuracy": 1.0})
    assert store.get_run(run_id)["status"] == "succeeded"
    assert "Could not copy" in caplog.text
    with pytest.raises(ConfigError, match=f"still in {store.run_dir(run_id)}"):
        store.publish(run_id)  # asked for explicitly, the failure is an error to show


def test_a_saved_upload_is_copied_and_found_again_after_a_wipe(tmp_path, bucket, toy_folder):
    store = RunStore(tmp_path / "before", artifacts_url=bucket)
    saved = save_image_set(store, load_images(toy_folder), "my upload")
    name = load_images(toy_folder).items[0].name
    assert local_source(store, str(saved)) == str(saved)

    shutil.rmtree(tmp_path / "before")
    fresh = RunStore(tmp_path / "after", artifacts_url=bucket)
    found = local_source(fresh, str(saved))
    assert found == str(tmp_path / "after" / "datasets" / saved.name)
    assert read_image_bytes(found, name) == (toy_folder / name).read_bytes()
    assert load_images(found).class_names == load_images(toy_folder).class_names
    # The digits sample is rebuilt rather than copied; anything else is returned as it is, for the reader to report.
    digits = local_source(fresh, str(tmp_path / "before" / "datasets" / "sample-digits-3"))
    assert load_images(digits).class_names == ["digit_0", "digit_1", "digit_2"]
    assert local_source(fresh, str(tmp_path / "elsewhere" / "photos")) == str(tmp_path / "elsewhere" / "photos")


def test_a_new_server_lists_the_uploads_saved_before_its_disk_was_wiped(tmp_path, bucket, toy_folder, monkeypatch):
    from streamlit.testing.v1 import AppTest

    before = RunStore(tmp_path / "before", artifacts_url=bucket)
    mine = save_image_set(before, load_images(toy_folder), "my upload")
    save_image_set(before, load_images(toy_folder), "someone else's", workspace="other")
    shutil.rmtree(tmp_path / "before")

    after = RunStore(tmp_path / "after", artifacts_url=bucket)
    listed = list_datasets(after)
    assert sorted(d["name"] for d in listed) == ["my upload", "someone else's"]
    assert [d["name"] for d in list_datasets(after, workspace="other")] == ["someone else's"]  # private stays private
    entry = next(d for d in listed if d["name"] == "my upload")
    assert entry["path"] == str(tmp_path / "after" / "datasets" / mine.name) and entry["n_files"] == 42
    assert not (tmp_path / "after" / "datasets" / mine.name).exists()  # listed, not fetched

    # The Data page of a new server process lists it, and "Use it" brings it back.
    monkeypatch.setenv("TL_DATA_DIR", str(tmp_path / "third"))
    monkeypatch.setenv("TL_ARTIFACTS_URL", bucket)
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    app.run()
    app.switch_page("app_pages/data.py")
    app.run()
    assert not app.exception
    choice = next(s for s in app.selectbox if s.label == "Saved dataset")
    listed_as = [o for o in choice.options if o.startswith("my upload (42 files, saved ")]
    assert len(listed_as) == 1
    choice.select_index(choice.options.index(listed_as[0]))
    next(b for b in app.button if b.label == "Use it").click()
    app.run()
    assert not app.exception and not app.error
    assert {m.label: m.value for m in app.metric}["Images"] == "42"
    assert (tmp_path / "third" / "datasets" / mine.name / "red").is_dir()


@pytest.mark.timeout(600)
def test_a_fresh_server_on_a_wiped_disk_shows_and_predicts_with_an_old_run(
    tmp_path, bucket, toy_folder, postgres_url, monkeypatch
):
    """PostgreSQL for the runs, a file:// artifacts location: a restart on an empty disk loses nothing."""
    from streamlit.testing.v1 import AppTest

    from tl_core.config import TrainConfig
    from tl_core.data import prepare_image
    from tl_core.model_files import load_model_file
    from tl_core.runner import run_training

    before = RunStore(tmp_path / "before", database_url=postgres_url, artifacts_url=bucket)
    dataset = save_image_set(before, load_images(toy_folder), "my upload")
    config = TrainConfig(strategy="feature_extractor", backbone="vgg16", weights="none", image_size=32)
    run = run_training(str(dataset), config, store=before)
    assert run["status"] == "succeeded"
    names = json.loads((before.run_dir(run["id"]) / "split.json").read_text())["test"][:6]
    pixels = np.stack([prepare_image((toy_folder / name).read_bytes(), 32)[0] for name in names])
    expected = load_model_file(run["model_path"]).predict(pixels, verbose=0)

    shutil.rmtree(tmp_path / "before")  # the disk is wiped; the database and the bucket remain
    after = RunStore(tmp_path / "after", database_url=postgres_url, artifacts_url=bucket)
    again = after.get_run(run["id"])
    after.ensure_local(run["id"])
    assert again["status"] == "succeeded" and again["metrics"]["test_accuracy"] == run["metrics"]["test_accuracy"]
    assert again["epochs"] == run["epochs"]
    predicted = load_model_file(again["model_path"]).predict(pixels, verbose=0)  # fetched back
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)
    assert (predicted.argmax(1) == [again["metrics"]["class_names"].index(n.split("/")[0]) for n in names]).mean() > 0.5
    source = local_source(after, again["config"]["source"])
    assert read_image_bytes(source, names[0]) == (toy_folder / names[0]).read_bytes()

    # The share page of a new server process: only the environment says where things are.
    shutil.rmtree(tmp_path / "after" / "runs")
    monkeypatch.setenv("TL_DATA_DIR", str(tmp_path / "after"))
    monkeypatch.setenv("TL_DATABASE_URL", postgres_url)
    monkeypatch.setenv("TL_ARTIFACTS_URL", bucket)
    page = AppTest.from_file(str(REPO / "app_pages" / "result.py"), default_timeout=60)
    page.query_params["run"] = run["id"]
    page.run()
    assert not page.exception and not page.error
    assert any(f"{run['metrics']['test_accuracy']:.1%}" in m.value for m in page.metric)
    assert (tmp_path / "after" / "runs" / run["id"] / "model.keras").is_file()  # the page fetched it


@pytest.mark.timeout(600)
def test_a_run_killed_with_its_machine_resumes_on_a_fresh_disk_from_its_mirrored_checkpoints(tmp_path, bucket, monkeypatch):
    """A hosted app's restart kills the worker and wipes the disk mid-training: the checkpoints
    mirrored after each epoch let the run go on from a recent epoch on the new, empty disk."""
    import os
    import subprocess
    import sys

    from conftest import make_toy_folder, sigkill_after_epochs, wait_for_status

    from tl_core.config import TrainConfig
    from tl_core.jobs import resume, submit

    database = f"sqlite:///{tmp_path / 'database' / 'runs.db'}"  # the database outlives the disk
    (tmp_path / "database").mkdir()
    monkeypatch.setenv("TL_CHECKPOINT_MIRROR_SECONDS", "0")  # every epoch (the default is once a minute)
    root = make_toy_folder(tmp_path / "toy", n_per_class=8, size=32)
    first = RunStore(tmp_path / "disk1", database_url=database, artifacts_url=bucket)
    run_id = submit(first, root, TrainConfig(strategy="scratch", epochs=8, patience=8, backbone="vgg16",
                                             weights="none", image_size=32, batch_size=8))
    worker = subprocess.Popen(
        [sys.executable, "-m", "tl_core", "worker", "--data-dir", str(first.data_dir), "--quiet", "--idle-exit", "5"],
        env={**os.environ, "PYTHONPATH": str(REPO), **first.env_vars()},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    done_before = sigkill_after_epochs(worker, first, run_id, 3)
    assert 3 <= done_before < 8, "the kill must land mid-training"
    shutil.rmtree(first.data_dir)  # the restart wipes the disk

    second = RunStore(tmp_path / "disk2", database_url=database, artifacts_url=bucket)
    assert second.fail_interrupted("the machine went away") == [run_id]
    resume(second, run_id)  # fetches the run's folder, checkpoints included, then trains on
    run = wait_for_status(second, run_id, {"succeeded", "failed"})
    assert run["status"] == "succeeded", run["error"]
    notes = " ".join(run["metrics"]["notes"])
    assert "went on from its last completed epoch" in notes, notes
    restored = int(notes.split("last completed epoch (")[1].split(")")[0])
    assert restored >= done_before - 2  # the kill may land between an epoch's end and its copy
    assert [epoch["epoch"] for epoch in run["metrics"]["history"]["scratch"]] == list(range(1, 9))


def test_a_run_trained_on_another_machine_replaces_the_stale_copy_here_once_it_ends(tmp_path, bucket):
    """A Ray node trains the run: the app's folder from when it was queued (only config.json) is
    replaced by the finished run's copy, once; a run trained here keeps its own folder."""
    database = f"sqlite:///{tmp_path / 'runs.db'}"
    app = RunStore(tmp_path / "app", database_url=database, artifacts_url=bucket)
    node = RunStore(tmp_path / "node", database_url=database, artifacts_url=bucket)
    run_id = app.create_run({"train": {}}, executor="ray")
    assert app.run_dir(run_id).is_dir()  # made when it was queued
    assert node.claim_run(run_id)
    app.ensure_local(run_id)  # while it trains: nothing to replace yet
    node.run_dir(run_id).mkdir(parents=True)  # as the runner makes it
    (node.run_dir(run_id) / "model.keras").write_bytes(b"model")
    node._update(run_id, owner_host="gpu-node-1")  # as a Ray node on another machine records it
    node.finish(run_id, "succeeded", {"test_accuracy": 0.9})

    app.ensure_local(run_id)
    assert (app.run_dir(run_id) / "model.keras").read_bytes() == b"model"
    (app.run_dir(run_id) / "gradcam").mkdir()  # drawn here later: never replaced again
    app.ensure_local(run_id)
    assert (app.run_dir(run_id) / "gradcam").is_dir()
