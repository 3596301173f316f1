"""The SQLite run store: ids, lifecycle, epoch metrics, persistence, path safety."""

from __future__ import annotations

import json

import pytest

from tl_core.errors import RunNotFoundError
from tl_core.store import RunStore, is_valid_run_id


def test_run_lifecycle_is_persisted(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run({"train": {"strategy": "finetune"}}, name="first")
    assert store.get_run(run_id)["status"] == "queued"
    store.set_status(run_id, "running")
    store.add_epoch(run_id, "stage1", 1, {"loss": 1.5, "val_accuracy": 0.4})
    store.add_epoch(run_id, "stage1", 2, {"loss": 1.1, "val_accuracy": 0.6})
    store.set_dataset(run_id, {"n_images": 10})
    store.finish(run_id, "succeeded", {"test_accuracy": 0.8})

    reopened = RunStore(tmp_path)  # a new process would see the same
    run = reopened.get_run(run_id)
    assert run["status"] == "succeeded" and run["name"] == "first"
    assert run["metrics"] == {"test_accuracy": 0.8}
    assert [e["val_accuracy"] for e in run["epochs"]["stage1"]] == [0.4, 0.6]
    assert json.loads((reopened.run_dir(run_id) / "metrics.json").read_text()) == {"test_accuracy": 0.8}
    assert json.loads((reopened.run_dir(run_id) / "config.json").read_text())["train"]["strategy"] == "finetune"
    assert [r["id"] for r in reopened.list_runs(status="succeeded")] == [run_id]


def test_failed_runs_keep_their_error(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run({}, status="running")
    store.finish(run_id, "failed", error="Class 'cat' has 1 image")
    run = store.get_run(run_id)
    assert run["status"] == "failed" and run["error"] == "Class 'cat' has 1 image"
    with pytest.raises(ValueError):
        store.finish(run_id, "running")


def test_run_ids_are_unguessable_and_never_become_paths(tmp_path):
    store = RunStore(tmp_path)
    ids = {store.create_run({}) for _ in range(50)}
    assert len(ids) == 50 and all(is_valid_run_id(i) and len(i) == 22 for i in ids)  # 16 random bytes
    for bad in ("../../etc/passwd", "", "a" * 21, "a" * 23, "abc/def" + "x" * 15):
        assert not is_valid_run_id(bad)
        with pytest.raises(RunNotFoundError):
            store.get_run(bad)
        with pytest.raises(RunNotFoundError):
            store.run_dir(bad)
    with pytest.raises(RunNotFoundError, match="No run with id"):
        store.get_run("A" * 22)


def test_delete_run_removes_rows_and_folder(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run({})
    store.add_epoch(run_id, "scratch", 1, {"loss": 1.0})
    store.delete_run(run_id)
    assert not store.run_dir(run_id).exists()
    with pytest.raises(RunNotFoundError):
        store.get_run(run_id)
