"""Faults injected for real: a SIGKILLed worker, a cancelled stage, a write the OS refuses, a restart.

Nothing is lost and nothing stays stuck: a killed run is marked failed as soon as the app looks,
and resumes from its last completed epoch; a failed write fails the run with its reason and
leaves the store consistent.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys

from conftest import REPO, make_toy_folder, sigkill_after_epochs, wait_for_status
from streamlit.testing.v1 import AppTest

from tl_core.config import TrainConfig
from tl_core.jobs import INTERRUPTED, queue_snapshot, resume, submit
from tl_core.progress import NullProgress
from tl_core.runner import run_training
from tl_core.store import RunStore

FAST = dict(backbone="vgg16", weights="none", image_size=32, batch_size=8)




def _worker(store) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tl_core", "worker", "--data-dir", str(store.data_dir), "--quiet", "--idle-exit", "5"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def test_a_sigkilled_worker_is_noticed_within_seconds_and_the_run_resumes_from_its_last_epoch(tmp_path, store):
    root = make_toy_folder(tmp_path / "toy", n_per_class=8, size=32)
    config = TrainConfig(strategy="scratch", epochs=8, patience=8, **FAST)
    run_id = submit(store, root, config)
    worker = _worker(store)
    done_before = sigkill_after_epochs(worker, store, run_id, 2)
    assert 2 <= done_before < 8, "the kill must land mid-training"

    assert store.get_run(run_id)["status"] == "running"  # nobody has looked yet
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    app.run()  # one page view: the sidebar's queue view (refreshed every 2 s while a run is shown) looks
    assert not app.exception
    run = store.get_run(run_id)
    assert run["status"] == "failed" and run["error"] == INTERRUPTED
    assert not queue_snapshot(store)["running"]
    assert (store.run_dir(run_id) / "checkpoints" / "scratch" / "training_metadata.json").exists()

    resume(store, run_id)  # what the Resume button does: queue it again and start a worker
    run = wait_for_status(store, run_id, {"succeeded", "failed"})
    assert run["status"] == "succeeded", run["error"]
    notes = " ".join(run["metrics"]["notes"])
    restored = int(notes.split("last completed epoch (")[1].split(")")[0])
    assert restored >= done_before - 1  # a kill between an epoch's end and its backup loses that one epoch
    history = run["metrics"]["history"]["scratch"]
    assert [epoch["epoch"] for epoch in history] == list(range(1, 9))  # earlier epochs kept, none twice
    assert not (store.run_dir(run_id) / "checkpoints").exists()  # cleaned once the run succeeded
    assert (store.run_dir(run_id) / "model.keras").exists()


class StopDuringStage2(NullProgress):
    """Asks to stop once stage 2 has completed its first epoch."""

    def __init__(self) -> None:
        self.stop = False

    def on_step(self, stage, step, logs=None):
        if stage == "stage2" and logs is not None:
            self.stop = True

    def should_stop(self) -> bool:
        return self.stop


def test_a_cancelled_fine_tuning_resumes_with_stage_1_done_and_stage_2_from_its_epoch(toy_folder, store):
    config = TrainConfig(strategy="finetune", epochs=3, fine_tune_epochs=4, patience=10, unfreeze_blocks=1,
                         start_from_probe=False, **FAST)
    first = run_training(toy_folder, config, store=store, progress=StopDuringStage2())
    assert first["status"] == "cancelled"
    stage1 = first["epochs"]["stage1"]
    assert len(stage1) == 3 and len(first["epochs"]["stage2"]) >= 1

    store.requeue(first["id"])
    run = run_training(toy_folder, config, store=store, run_id=first["id"])
    assert run["status"] == "succeeded", run["error"]
    notes = " ".join(run["metrics"]["notes"])
    assert "stage1 had finished before the interruption" in notes
    assert "stage2 went on from its last completed epoch (1)" in notes
    assert run["metrics"]["history"]["stage1"] == [{k: v for k, v in e.items()} for e in stage1]
    assert [e["epoch"] for e in run["metrics"]["history"]["stage2"]] == [1, 2, 3, 4]


class StopAfterStage1Epoch(NullProgress):
    """Asks to stop once stage 1 has completed ``n`` epochs."""

    def __init__(self, n: int) -> None:
        self.n, self.stop = n, False

    def on_step(self, stage, step, logs=None):
        if stage == "stage1" and logs is not None and step >= self.n:
            self.stop = True

    def should_stop(self) -> bool:
        return self.stop


def test_a_run_resumed_in_stage_1_still_trains_every_stage_2_epoch(toy_folder, store):
    # With augmentation both stages fit the same Keras model: the epoch Keras resumes stage 1 from
    # must not carry over into stage 2.
    config = TrainConfig(strategy="finetune", epochs=3, fine_tune_epochs=2, patience=10, unfreeze_blocks=1,
                         start_from_probe=False,
                         augment=True, **FAST)
    first = run_training(toy_folder, config, store=store, progress=StopAfterStage1Epoch(1))
    assert first["status"] == "cancelled" and len(first["epochs"]["stage1"]) == 1
    store.requeue(first["id"])
    run = run_training(toy_folder, config, store=store, run_id=first["id"])
    assert run["status"] == "succeeded", run["error"]
    assert "stage1 went on from its last completed epoch (1)" in " ".join(run["metrics"]["notes"])
    assert [e["epoch"] for e in run["metrics"]["history"]["stage1"]] == [1, 2, 3]
    assert [e["epoch"] for e in run["metrics"]["history"]["stage2"]] == [1, 2]


def _limit_file_size() -> None:
    # Any write past 8 MB fails with EFBIG ("File too large"), as on a full disk: the model file
    # (VGG16, about 59 MB) cannot be written; the small cache files and the database can.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8 * 1024**2, 8 * 1024**2))


def test_a_refused_write_fails_the_run_with_its_reason_and_leaves_the_store_consistent(toy_folder, store):
    result = subprocess.run(
        [sys.executable, "-m", "tl_core", "train", "--data", str(toy_folder), "--data-dir", str(store.data_dir),
         "--strategy", "feature_extractor", "--backbone", "vgg16", "--weights", "none", "--image-size", "32",
         "--feature-cut", "0", "--quiet", "--json"],  # the whole VGG16: a model file over the size limit
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, preexec_fn=_limit_file_size,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    run = store.get_run(summary["run_id"])
    assert run["status"] == "failed"
    assert "File too large" in run["error"] and "resume" in run["error"]
    folder = store.run_dir(run["id"])
    assert not (folder / "model.keras").exists() and not (folder / "model.tmp.keras").exists()
    assert not list(folder.glob("*.tmp*"))
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # With the space back, the same run resumes from the command line and succeeds in the same store.
    resumed = subprocess.run(
        [sys.executable, "-m", "tl_core", "resume", run["id"], "--data-dir", str(store.data_dir), "--json"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["status"] == "succeeded"
    assert store.get_run(run["id"])["status"] == "succeeded" and (folder / "model.keras").exists()


def test_a_restarted_app_keeps_finished_runs_uploaded_datasets_and_share_links(tmp_path, toy_folder):
    from streamlit.testing.v1 import AppTest

    from tl_core.data import load_images
    from tl_core.datasets import list_datasets

    data_dir = tmp_path / "data"
    # "Before the restart", in another process: an upload is saved and a run trains on it.
    script = (
        "import sys; from tl_core.store import RunStore; from tl_core.data import load_images; "
        "from tl_core.datasets import save_image_set; from tl_core.runner import run_training; "
        "from tl_core.config import TrainConfig; store = RunStore(sys.argv[1]); "
        "path = save_image_set(store, load_images(sys.argv[2]), 'my upload'); "
        "run = run_training(str(path), TrainConfig(strategy='feature_extractor', backbone='vgg16', weights='none', "
        "image_size=32), store=store); print(run['id'])"
    )
    out = subprocess.run([sys.executable, "-c", script, str(data_dir), str(toy_folder)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300, check=True)
    run_id = out.stdout.strip().splitlines()[-1]

    # "After the restart": a new process state, the same data folder.
    store = RunStore(data_dir)
    run = store.get_run(run_id)
    assert run["status"] == "succeeded"
    saved = list_datasets(store)
    assert [d["name"] for d in saved] == ["my upload"]
    assert run["config"]["source"] == saved[0]["path"]
    assert load_images(saved[0]["path"]).class_names == load_images(toy_folder).class_names
    os.environ["TL_DATA_DIR"] = str(data_dir)
    try:
        page = AppTest.from_file(str(REPO / "app_pages" / "result.py"), default_timeout=60)
        page.query_params["run"] = run_id
        page.run()
    finally:
        os.environ.pop("TL_DATA_DIR")
    assert not page.exception
    assert any(f"{run['metrics']['test_accuracy']:.1%}" in m.value for m in page.metric)
    assert not page.error
