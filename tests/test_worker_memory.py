"""The worker gives memory back: each run trains in a fresh child process that dies with the worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, make_toy_folder, wait_for_status
from tl_core.config import TrainConfig
from tl_core.jobs import INTERRUPTED, run_worker, submit

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process memory from /proc (Linux)")

FAST = TrainConfig(backbone="vgg16", weights="none", image_size=32, batch_size=8)
LONG = TrainConfig(**{**FAST.to_dict(), "strategy": "scratch", "epochs": 200, "patience": 200})
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# A worker in a process of its own: its resident memory once idle and after running the queue.
WORKER_SCRIPT = """
import json, sys
from pathlib import Path
from tl_core.jobs import run_worker
from tl_core.store import RunStore

from tl_core.hardware import process_memory as rss

store = RunStore(sys.argv[1])
idle = rss()
executed = run_worker(store, once=True)
print(json.dumps({"executed": executed, "idle": idle, "after": rss(), "tensorflow": "tensorflow" in sys.modules}))
"""


def _start_worker(store) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tl_core", "worker", "--data-dir", str(store.data_dir), "--quiet", "--idle-exit", "5"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _training_process(run_id: str, timeout: float = 60) -> int:
    """The pid of the child process training ``run_id``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if f"--run\0{run_id}\0".encode() in cmdline.read_bytes():
                    return int(cmdline.parent.name)
            except OSError:
                continue
        time.sleep(0.1)
    raise AssertionError(f"no process trains {run_id}")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except OSError:
        return True


def _wait_for_epoch(store, run_id: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not store.get_run(run_id)["epochs"].get("scratch") and time.time() < deadline:
        time.sleep(0.2)
    assert store.get_run(run_id)["status"] == "running"


def test_the_worker_never_loads_tensorflow_and_is_back_to_its_idle_size_after_each_run(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=6, size=32)
    ids = [submit(store, root, FAST), submit(store, root, TrainConfig(**{**FAST.to_dict(), "head": "ovr"}))]
    done = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, str(store.data_dir)], env=ENV, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    worker = json.loads(done.stdout.splitlines()[-1])
    assert worker["executed"] == 2
    assert [store.get_run(i)["status"] for i in ids] == ["succeeded", "succeeded"]
    assert store.get_run(ids[1])["metrics"]["test_accuracy"] > 0.5
    assert not worker["tensorflow"]
    assert worker["after"] <= 1.1 * worker["idle"], worker  # in-process training: ~10x


def test_a_killed_training_process_fails_its_run_with_the_reason_and_the_worker_goes_on(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=8, size=32)
    long_run, quick_run = submit(store, root, LONG), submit(store, root, FAST)
    worker = _start_worker(store)
    try:
        _wait_for_epoch(store, long_run)
        os.kill(_training_process(long_run), signal.SIGKILL)  # what the kernel's out-of-memory killer does
        run = wait_for_status(store, long_run, {"failed", "succeeded", "cancelled"}, timeout=30)
        assert run["status"] == "failed" and "was killed (SIGKILL" in run["error"] and "Resume it" in run["error"]
        assert wait_for_status(store, quick_run, {"succeeded", "failed"})["status"] == "succeeded"
    finally:
        worker.kill()
        worker.wait(10)


def test_a_killed_worker_takes_its_training_process_with_it_and_the_run_is_interrupted(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=8, size=32)
    run_id = submit(store, root, LONG)
    worker = _start_worker(store)
    try:
        _wait_for_epoch(store, run_id)
        child = _training_process(run_id)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert run_worker(store, once=True) == 0  # the next worker fails the run at once, child reaped or not
        run = store.get_run(run_id)
        assert run["status"] == "failed" and run["error"] == INTERRUPTED
        deadline = time.time() + 5
        while not _gone(child) and time.time() < deadline:
            time.sleep(0.05)
        assert _gone(child), "the training process outlived its worker"
    finally:
        if worker.poll() is None:
            worker.kill()
