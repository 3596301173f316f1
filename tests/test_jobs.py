"""The background queue: real worker processes, cancel, and recovery after a killed worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, make_toy_folder, wait_for_status
from tl_core.config import TrainConfig
from tl_core.errors import DataError
from tl_core.jobs import INTERRUPTED, ensure_worker, queue_snapshot, run_worker, submit, worker_alive

FAST = TrainConfig(backbone="vgg16", weights="none", image_size=32, batch_size=8)




def test_worker_runs_the_queue_in_order(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=6)
    first = submit(store, root, FAST)
    second = submit(store, root, TrainConfig(**{**FAST.to_dict(), "head": "ovr"}))
    snapshot = queue_snapshot(store)
    assert [r["id"] for r in snapshot["queued"]] == [first, second] and not snapshot["worker_alive"]
    assert run_worker(store, once=True) == 2
    runs = [store.get_run(first), store.get_run(second)]
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert runs[0]["updated_at"] <= runs[1]["updated_at"]
    assert runs[1]["metrics"]["test_accuracy"] > 0.5


def test_submit_checks_the_source_and_settings(tmp_path, store):
    with pytest.raises(DataError, match="No folder or zip file"):
        submit(store, tmp_path / "nowhere", FAST)
    assert store.list_runs() == []


def test_cancelling_a_queued_run_never_starts_it(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=6)
    run_id = submit(store, root, FAST)
    assert store.request_cancel(run_id) == "cancelled"
    assert run_worker(store, once=True) == 0
    assert store.get_run(run_id)["error"] == "Cancelled before it started."


def test_a_spawned_worker_trains_and_a_cancel_stops_a_running_job(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=8)
    long_config = TrainConfig(**{**FAST.to_dict(), "strategy": "finetune", "epochs": 200, "patience": 200, "augment": True,
                                          "start_from_probe": False})
    long_run = submit(store, root, long_config)
    quick_run = submit(store, root, FAST)
    assert ensure_worker(store) is True
    try:
        deadline = time.time() + 120
        while not store.get_run(long_run)["epochs"].get("stage1") and time.time() < deadline:
            time.sleep(0.5)
        assert worker_alive(store) and ensure_worker(store) is False  # one worker per data folder
        assert store.request_cancel(long_run) == "running"
        cancelled = wait_for_status(store, long_run, {"cancelled", "failed", "succeeded"})
        assert cancelled["status"] == "cancelled"
        assert 1 <= len(cancelled["epochs"]["stage1"]) < 200
        assert wait_for_status(store, quick_run, {"succeeded", "failed"})["status"] == "succeeded"
    finally:
        subprocess.run(["pkill", "-f", f"tl_core worker --data-dir {store.data_dir}"], check=False)


def test_a_killed_worker_leaves_no_run_stuck_running(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=8)
    run_id = submit(store, root, TrainConfig(**{**FAST.to_dict(), "strategy": "scratch", "epochs": 200, "patience": 200}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tl_core", "worker", "--data-dir", str(store.data_dir), "--quiet"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not store.get_run(run_id)["epochs"].get("scratch") and time.time() < deadline:
            time.sleep(0.5)
        assert store.get_run(run_id)["status"] == "running"
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert not worker_alive(store)  # the OS released the lock with the process
        assert run_worker(store, once=True) == 0  # the next worker cleans up first
        run = store.get_run(run_id)
        assert run["status"] == "failed" and run["error"] == INTERRUPTED
    finally:
        if worker.poll() is None:
            worker.kill()


def test_a_worker_leaves_runs_of_live_processes_alone(store):
    # A command-line `train` in this (live) process, and a run whose process is gone.
    alive = store.create_run({}, status="running")
    orphan = store.create_run({}, status="queued")
    store.claim_next_queued()
    with store._connect() as conn:
        conn.execute("UPDATE runs SET owner_pid = ? WHERE id = ?", (2**22 + 12345, orphan))  # no such pid
    assert run_worker(store, once=True) == 0
    assert store.get_run(alive)["status"] == "running"
    assert store.get_run(orphan)["status"] == "failed"


def _standby_pids(store) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"tl_core worker --data-dir {store.data_dir.resolve()} --quiet --standby"],
                           capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def test_an_idle_worker_keeps_a_training_process_ready_and_hands_it_the_next_run(tmp_path, store):
    from tl_core.progress import time_breakdown

    root = make_toy_folder(tmp_path / "toy", n_per_class=6)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TL_WORKER_STANDBY": "1"}  # the suite turns it off elsewhere
    worker = subprocess.Popen([sys.executable, "-m", "tl_core", "worker", "--data-dir", str(store.data_dir), "--quiet",
                               "--idle-exit", "120"], env=env)
    try:
        deadline = time.time() + 60
        while not _standby_pids(store) and time.time() < deadline:
            time.sleep(0.2)
        [ready] = _standby_pids(store)
        run = wait_for_status(store, submit(store, root, FAST), {"succeeded", "failed"})
        assert run["status"] == "succeeded" and run["progress"]["pid"] == ready  # trained by the ready process
        parts = [part for part, _ in time_breakdown(run)]
        assert set(parts) <= {"waiting", "build", "decode", "decode+extract", "extract", "head", "explain", "between",
                              "finish"}
        assert {"extract", "head"} <= set(run["progress"]["stages"])  # timed, though too short to show here
        assert "startup" not in parts  # TensorFlow's imports were paid before the run was queued
        total = sum(seconds for _, seconds in time_breakdown(run))
        assert total <= run["updated_at"] - run["created_at"] + 0.01  # the parts never overlap
        deadline = time.time() + 60
        while _standby_pids(store) in ([], [ready]) and time.time() < deadline:
            time.sleep(0.2)
        assert len(_standby_pids(store)) == 1 and _standby_pids(store) != [ready]  # the next one, ready again
    finally:
        worker.kill()
        worker.wait(10)
    deadline = time.time() + 10
    while _standby_pids(store) and time.time() < deadline:
        time.sleep(0.2)
    assert _standby_pids(store) == []  # it ends with its worker
