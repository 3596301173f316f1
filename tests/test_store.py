"""The run store on SQLite and on PostgreSQL: ids, lifecycle, epoch metrics, the queue, persistence, path safety."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from tl_core import store as store_module
from tl_core.errors import ConfigError, RunNotFoundError
from tl_core.store import RunStore, is_valid_run_id, new_run_id, parse_database_url

NO_SUCH_PID = 2**22 + 12345  # above Linux's largest pid


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """The same tests on both back ends; PostgreSQL gets a new database per test."""
    if request.param == "sqlite":
        return RunStore(tmp_path / "data")
    return RunStore(tmp_path / "data", database_url=request.getfixturevalue("postgres_url"))


def reopen(store: RunStore) -> RunStore:
    """A second store on the same database and folder, as another process would open it."""
    return RunStore(store.data_dir, database_url=store.database_url, artifacts_url=store.artifacts_url)


def test_run_lifecycle_is_persisted(store):
    run_id = store.create_run({"train": {"strategy": "finetune"}}, name="first")
    assert store.get_run(run_id)["status"] == "queued"
    store.set_status(run_id, "running")
    store.add_epoch(run_id, "stage1", 1, {"loss": 1.5, "val_accuracy": 0.4})
    store.add_epoch(run_id, "stage1", 2, {"loss": 1.1, "val_accuracy": 0.6})
    store.set_dataset(run_id, {"n_images": 10})
    store.finish(run_id, "succeeded", {"test_accuracy": 0.8})

    reopened = reopen(store)  # a new process would see the same
    run = reopened.get_run(run_id)
    assert run["status"] == "succeeded" and run["name"] == "first"
    assert run["metrics"] == {"test_accuracy": 0.8} and run["dataset"] == {"n_images": 10}
    assert [e["val_accuracy"] for e in run["epochs"]["stage1"]] == [0.4, 0.6]
    assert json.loads((reopened.run_dir(run_id) / "metrics.json").read_text()) == {"test_accuracy": 0.8}
    assert json.loads((reopened.run_dir(run_id) / "config.json").read_text())["train"]["strategy"] == "finetune"
    assert [r["id"] for r in reopened.list_runs(status="succeeded")] == [run_id]


def test_failed_runs_keep_their_error(store):
    run_id = store.create_run({}, status="running")
    store.finish(run_id, "failed", error="Class 'cat' has 1 image")
    run = store.get_run(run_id)
    assert run["status"] == "failed" and run["error"] == "Class 'cat' has 1 image"
    with pytest.raises(ValueError):
        store.finish(run_id, "running")


def test_run_ids_are_unguessable_and_never_become_paths(store):
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
    # One random id in 64 used to start with "-", which the command line took for an option.
    assert not any(new_run_id().startswith("-") for _ in range(2000))


def test_delete_run_removes_rows_and_folder(store):
    run_id = store.create_run({})
    store.add_epoch(run_id, "scratch", 1, {"loss": 1.0})
    store.delete_run(run_id)
    assert not store.run_dir(run_id).exists()
    with pytest.raises(RunNotFoundError):
        store.get_run(run_id)


def test_list_runs_is_newest_first_and_filters_by_status_and_workspace(store):
    first = store.create_run({}, workspace="ws-a")
    second = store.create_run({}, status="running", workspace="ws-b")
    third = store.create_run({}, workspace="ws-a")
    assert [r["id"] for r in store.list_runs()] == [third, second, first]
    assert [r["id"] for r in store.list_runs(limit=2)] == [third, second]
    assert [r["id"] for r in store.list_runs(status="queued", workspace="ws-a")] == [third, first]
    assert [r["id"] for r in store.list_runs(workspace="ws-b")] == [second]
    assert "epochs" not in store.list_runs()[0] and store.list_runs()[0]["config"] == {}


def test_a_repeated_epoch_replaces_the_earlier_and_every_write_is_a_heartbeat(store):
    run_id = store.create_run({}, status="running")
    beats = [store.get_run(run_id)["updated_at"]]
    for stage, epoch, loss in (("stage1", 1, 0.9), ("stage1", 2, 0.7), ("stage2", 1, 0.6), ("stage2", 1, 0.5)):
        time.sleep(0.01)
        store.add_epoch(run_id, stage, epoch, {"loss": loss})
        beats.append(store.get_run(run_id)["updated_at"])
    time.sleep(0.01)
    store.set_progress(run_id, {"current": "stage2"})
    run = store.get_run(run_id)
    beats.append(run["updated_at"])
    assert beats == sorted(beats) and len(set(beats)) == len(beats)  # each write moved the heartbeat on
    assert list(run["epochs"]) == ["stage1", "stage2"]  # the order they arrived in
    assert run["epochs"]["stage2"] == [{"epoch": 1, "loss": 0.5}]  # replaced, not repeated
    assert run["progress"] == {"current": "stage2"}
    with pytest.raises(RunNotFoundError):
        store.add_epoch("B" * 22, "stage1", 1, {"loss": 1.0})


def test_the_local_worker_never_claims_a_run_of_another_executor(store):
    ray_job = store.create_run({}, executor="ray")
    local = store.create_run({})
    assert store.claim_next_queued() == local
    assert store.claim_next_queued() is None  # the Ray job waits for its own runner
    assert store.get_run(ray_job)["executor"] == "ray" and store.get_run(local)["executor"] is None

    assert store.claim_run(ray_job) is True
    run = store.get_run(ray_job)
    assert run["status"] == "running" and run["owner_pid"] == store_module.os.getpid()
    assert run["owner_host"] == store_module.socket.gethostname()
    assert store.claim_run(ray_job) is False  # claimed already
    cancelled = store.create_run({}, executor="ray")
    assert store.request_cancel(cancelled) == "cancelled" and store.claim_run(cancelled) is False
    with pytest.raises(RunNotFoundError):
        store.claim_run("C" * 22)

    moved = store.create_run({}, executor="ray")  # Ray went away: the local worker takes it after all
    store.set_executor(moved, None)
    assert store.claim_next_queued() == moved
    with pytest.raises(ConfigError, match="Only a queued run can change who runs it; this one is running"):
        store.set_executor(moved, "ray")
    with pytest.raises(RunNotFoundError):
        store.set_executor("C" * 22, None)


def test_cancel_and_requeue_on_both_back_ends(store):
    queued = store.create_run({})
    assert store.request_cancel(queued) == "cancelled" and not store.is_cancel_requested(queued)
    running = store.create_run({}, status="running")
    assert store.request_cancel(running) == "running" and store.is_cancel_requested(running)
    store.finish(running, "cancelled", error="Cancelled.")
    store.requeue(running)
    run = store.get_run(running)
    assert run["status"] == "queued" and run["owner_pid"] is None and run["owner_host"] is None
    assert not store.is_cancel_requested(running) and run["error"] is None
    assert store.claim_next_queued() == running
    with pytest.raises(ConfigError, match="this one is running"):
        store.requeue(running)
    with pytest.raises(RunNotFoundError):
        store.request_cancel("D" * 22)


@pytest.mark.timeout(120)
def test_claims_are_atomic_when_many_workers_claim_at_once(store):
    queued = [store.create_run({}) for _ in range(24)]
    claimed: list[str] = []
    errors: list[BaseException] = []

    def worker(own: RunStore) -> None:
        try:
            while (run_id := own.claim_next_queued()) is not None:
                claimed.append(run_id)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(reopen(store),)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(claimed) == sorted(queued)  # each run exactly once
    assert {r["status"] for r in store.list_runs()} == {"running"}

    contested = store.create_run({}, executor="ray")
    wins: list[bool] = []

    def claimer(own: RunStore) -> None:
        wins.append(own.claim_run(contested))

    threads = [threading.Thread(target=claimer, args=(reopen(store),)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_interrupted_runs_are_judged_by_pid_here_and_by_heartbeat_elsewhere(store, monkeypatch):
    here_alive = store.create_run({}, status="running")
    here_dead = store.create_run({}, status="running")
    with store._connect() as conn:  # a process of this machine that is gone
        conn.cursor().execute(
            f"UPDATE runs SET owner_pid = {NO_SUCH_PID} WHERE id = '{here_dead}'"  # ids are [A-Za-z0-9_-]
        )
    with monkeypatch.context() as patch:  # runs claimed on another machine
        patch.setattr(store_module, "_host", lambda: "node-b")
        elsewhere_fresh = store.create_run({}, status="running")
        elsewhere_quiet = store.create_run({}, status="running")
        legacy = store.create_run({}, status="running")
    with store._connect() as conn:  # a run of a version that recorded no machine: judged here, by pid
        conn.cursor().execute(
            f"UPDATE runs SET owner_pid = {NO_SUCH_PID}, owner_host = NULL WHERE id = '{legacy}'"
        )
    for run_id in (elsewhere_fresh, elsewhere_quiet):  # its pid means nothing here
        assert store.get_run(run_id)["owner_host"] == "node-b"
    time.sleep(0.3)
    store.set_progress(elsewhere_fresh, {"current": "stage1"})  # a heartbeat

    failed = store.fail_interrupted("gone", stale_seconds=0.2)
    assert sorted(failed) == sorted([here_dead, elsewhere_quiet, legacy])
    assert store.get_run(here_alive)["status"] == "running"
    assert store.get_run(elsewhere_fresh)["status"] == "running"
    assert store.get_run(elsewhere_quiet)["error"] == "gone"
    assert store.fail_interrupted("gone") == []  # the default: 15 minutes of silence


def test_an_old_sqlite_store_gains_the_new_columns(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "runs.db") as conn:  # the first version's schema
        conn.executescript(
            "CREATE TABLE runs (id TEXT PRIMARY KEY, created_at REAL NOT NULL, updated_at REAL NOT NULL, "
            "status TEXT NOT NULL, error TEXT, name TEXT, config TEXT NOT NULL, dataset TEXT, metrics TEXT, "
            "progress TEXT);"
            "CREATE TABLE epochs (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, stage TEXT NOT NULL, "
            "epoch INTEGER NOT NULL, logs TEXT NOT NULL, PRIMARY KEY (run_id, stage, epoch));"
        )
        conn.execute("INSERT INTO runs VALUES (?, 1.0, 1.0, 'queued', NULL, 'old', '{}', NULL, NULL, NULL)", ("E" * 22,))
        conn.execute("INSERT INTO epochs VALUES (?, 'stage2', 1, '{\"loss\": 0.5}')", ("E" * 22,))
        conn.execute("INSERT INTO epochs VALUES (?, 'stage1', 3, '{\"loss\": 0.9}')", ("E" * 22,))
    store = RunStore(data)
    run = store.get_run("E" * 22)
    assert run["name"] == "old" and run["executor"] is None and run["cancel_requested"] == 0
    assert list(run["epochs"]) == ["stage2", "stage1"]  # still the order they arrived in
    assert store.claim_next_queued() == "E" * 22
    assert store.get_run("E" * 22)["owner_host"] == store_module.socket.gethostname()
    with sqlite3.connect(data / "runs.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_unreachable_database_is_a_clear_error_without_the_password(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_DATABASE_URL", "postgresql://alice:s3cr3t-pw@127.0.0.1:1/runs")
    with pytest.raises(ConfigError) as caught:
        RunStore(tmp_path / "data")
    message = str(caught.value)
    assert "127.0.0.1:1" in message and "TL_DATABASE_URL" in message and "user 'alice'" in message
    assert "s3cr3t-pw" not in message and "s3cr3t-pw" not in repr(caught.value.__cause__.args)
    monkeypatch.delenv("TL_DATABASE_URL")
    with pytest.raises(ConfigError, match="the database_url argument") as caught:
        RunStore(tmp_path / "data", database_url="postgresql://alice:s3cr3t-pw@127.0.0.1:1/runs")
    assert "s3cr3t-pw" not in str(caught.value)


def test_pasted_urls_are_read_or_refused_with_a_reason():
    assert parse_database_url("postgresql://u:p@db.example.com/x?sslmode=require").drivername == "postgresql+psycopg"
    assert parse_database_url("postgres://u:p@db.example.com/x").drivername == "postgresql+psycopg"
    assert parse_database_url("sqlite:////tmp/runs.db").get_backend_name() == "sqlite"
    with pytest.raises(ConfigError, match="PostgreSQL") as caught:
        parse_database_url("mysql://u:hunter2@db.example.com/x")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="not a database URL") as caught:
        parse_database_url("hunter2 is my password")
    assert "hunter2 is" not in str(caught.value)


def test_stores_of_one_database_share_one_engine_and_never_show_its_password(store):
    again = reopen(store)
    assert again.engine is store.engine  # one connection pool per database per process
    for _ in range(20):
        reopen(store).list_runs()
    if store.engine.dialect.name == "postgresql":
        assert store.engine.pool.checkedout() == 0  # every connection went back
        assert store.engine.url.password and f":{store.engine.url.password}@" not in repr(store)
        assert "***" in repr(store)
        # Another process (a worker, a Ray job) is given the whole URL to open the same store.
        assert store.env_vars() == {"TL_DATABASE_URL": store.database_url}
        assert f":{store.engine.url.password}@" in store.database_url
    else:
        assert store.database_url is None and store.env_vars() == {}
