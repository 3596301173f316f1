"""Runs, their epoch metrics and artifacts: SQLite plus one folder per run.

The data folder is ``$TL_DATA_DIR`` (default ``~/.tl_studio``): ``runs.db``, ``runs/<run_id>/``
(``config.json``, ``metrics.json``, ``model.keras``) and ``cache/`` (decoded pixels, features).
Run ids are 128 random bits, URL-safe, because a run's id is its share link.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tl_core.errors import ConfigError, RunNotFoundError

DATA_DIR_ENV = "TL_DATA_DIR"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    name TEXT,
    config TEXT NOT NULL,
    dataset TEXT,
    metrics TEXT,
    progress TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner_pid INTEGER,
    workspace TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    stage TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    logs TEXT NOT NULL,
    PRIMARY KEY (run_id, stage, epoch)
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);
"""
_ADDED_COLUMNS = {"cancel_requested": "INTEGER NOT NULL DEFAULT 0", "owner_pid": "INTEGER", "workspace": "TEXT"}


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_data_dir() -> Path:
    """``$TL_DATA_DIR`` or ``~/.tl_studio``."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".tl_studio").expanduser()


def new_run_id() -> str:
    """22 URL-safe characters carrying 128 random bits."""
    return secrets.token_urlsafe(16)


def is_valid_run_id(run_id: str) -> bool:
    return isinstance(run_id, str) and bool(RUN_ID_PATTERN.match(run_id))


def new_workspace_key() -> str:
    """A private workspace key for a visitor of a hosted app: 128 random bits, like a run id."""
    return secrets.token_urlsafe(16)


def is_valid_workspace_key(key: str) -> bool:
    return is_valid_run_id(key)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to a temporary name and rename it, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


class RunStore:
    """Persistent runs. Safe to use from several processes (SQLite WAL, short transactions).

    Args:
        data_dir: the data folder; defaults to :func:`default_data_dir`.
    """

    def __init__(self, data_dir: str | os.PathLike | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "runs.db"
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(runs)")}
            for column, kind in _ADDED_COLUMNS.items():  # stores made by an older version
                if column not in columns:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.row_factory = sqlite3.Row
            with conn:  # one transaction: committed on success, rolled back on error
                yield conn
        finally:
            conn.close()

    def run_dir(self, run_id: str) -> Path:
        """The run's artifact folder. Only well-formed ids ever become a path."""
        if not is_valid_run_id(run_id):
            raise RunNotFoundError(f"'{run_id}' is not a run id (22 letters, digits, '-' or '_').")
        return self.data_dir / "runs" / run_id

    # ----------------------------------------------------------------- writes

    def create_run(
        self, config: dict[str, Any], status: str = "queued", name: str | None = None, workspace: str | None = None
    ) -> str:
        """Store a new run and its folder; returns the new run id.

        Args:
            workspace: the private workspace (hosted mode) the run belongs to; ``None`` in a local app.
        """
        run_id = new_run_id()
        folder = self.run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=False)
        write_json_atomic(folder / "config.json", config)
        now = time.time()
        owner = os.getpid() if status == "running" else None
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO runs (id, created_at, updated_at, status, name, config, owner_pid, workspace) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (run_id, now, now, status, name, json.dumps(config), owner, workspace),
            )
        return run_id

    def _update(self, run_id: str, **columns: Any) -> None:
        assignments = ", ".join(f"{key} = ?" for key in columns)
        with self._connect() as conn:
            cursor = conn.execute(
                f"UPDATE runs SET {assignments}, updated_at = ? WHERE id = ?",
                (*columns.values(), time.time(), run_id),
            )
            if cursor.rowcount == 0:
                raise RunNotFoundError(f"No run with id '{run_id}'.")

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if status == "running":  # the process that trains owns the run (see fail_interrupted)
            self._update(run_id, status=status, error=error, owner_pid=os.getpid())
        else:
            self._update(run_id, status=status, error=error)

    def set_dataset(self, run_id: str, dataset: dict[str, Any]) -> None:
        self._update(run_id, dataset=json.dumps(dataset))
        write_json_atomic(self.run_dir(run_id) / "dataset.json", dataset)

    def set_progress(self, run_id: str, progress: dict[str, Any]) -> None:
        self._update(run_id, progress=json.dumps(progress))

    def add_epoch(self, run_id: str, stage: str, epoch: int, logs: dict[str, float]) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO epochs (run_id, stage, epoch, logs) VALUES (?,?,?,?)",
                (run_id, stage, int(epoch), json.dumps(logs)),
            )

    def finish(self, run_id: str, status: str, metrics: dict[str, Any] | None = None, error: str | None = None) -> None:
        """Final status, with the metrics (also written to ``metrics.json``) or the error."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"final status must be one of {FINAL_STATUSES}, got {status!r}")
        if metrics is not None:
            write_json_atomic(self.run_dir(run_id) / "metrics.json", metrics)
        self._update(run_id, status=status, error=error, metrics=json.dumps(metrics) if metrics else None)

    # ----------------------------------------------------------------- queue

    def claim_next_queued(self) -> str | None:
        """Atomically move the oldest ``queued`` run to ``running``; its id, or ``None``."""
        with self._connect() as conn:
            row = conn.execute(
                "UPDATE runs SET status = 'running', owner_pid = ?, updated_at = ? WHERE id = ("
                "SELECT id FROM runs WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1"
                ") RETURNING id",
                (os.getpid(), time.time()),
            ).fetchone()
        return row["id"] if row else None

    def request_cancel(self, run_id: str) -> str:
        """Cancel a queued run now, or ask a running one to stop; returns the status after the call."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE runs SET status = 'cancelled', error = 'Cancelled before it started.', "
                "updated_at = ? WHERE id = ? AND status = 'queued'",
                (time.time(), run_id),
            )
            conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (run_id,))
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"No run with id '{run_id}'.")
        return row["status"]

    def is_cancel_requested(self, run_id: str) -> bool:
        with self._connect() as conn:
            row = conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def fail_interrupted(self, reason: str) -> list[str]:
        """Mark failed every ``running`` run whose training process is gone (crashed or killed).

        Runs of live processes (a command-line ``train`` on this machine) are left alone.
        """
        with self._connect() as conn:
            rows = conn.execute("SELECT id, owner_pid FROM runs WHERE status = 'running'").fetchall()
            dead = [row["id"] for row in rows if not _pid_alive(row["owner_pid"])]
            conn.executemany(
                "UPDATE runs SET status = 'failed', error = ?, updated_at = ? WHERE id = ? AND status = 'running'",
                [(reason, time.time(), run_id) for run_id in dead],
            )
        return dead

    def requeue(self, run_id: str) -> None:
        """Queue a failed or cancelled run again; it resumes from its checkpoints when it has any.

        Raises:
            RunNotFoundError: no such run. ConfigError: the run is queued, running or succeeded.
        """
        with self._connect() as conn:  # one statement: two clicks cannot both requeue it
            cursor = conn.execute(
                "UPDATE runs SET status = 'queued', error = NULL, cancel_requested = 0, owner_pid = NULL, "
                "progress = NULL, updated_at = ? WHERE id = ? AND status IN ('failed', 'cancelled')",
                (time.time(), run_id),
            )
            if cursor.rowcount == 0:
                row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
                if row is None:
                    raise RunNotFoundError(f"No run with id '{run_id}'.")
                raise ConfigError(f"Only a failed or cancelled run can be resumed; this one is {row['status']}.")

    def delete_run(self, run_id: str) -> None:
        import shutil

        folder = self.run_dir(run_id)
        with self._connect() as conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(folder, ignore_errors=True)

    # ----------------------------------------------------------------- reads

    def _row_to_run(self, row: sqlite3.Row) -> dict[str, Any]:
        run = dict(row)
        for key in ("config", "dataset", "metrics", "progress"):
            run[key] = json.loads(run[key]) if run.get(key) else None
        run["model_path"] = str(self.run_dir(run["id"]) / "model.keras")
        return run

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run's record with its epoch history under ``epochs``.

        Raises:
            RunNotFoundError: a malformed id, or no such run.
        """
        if not is_valid_run_id(run_id):
            raise RunNotFoundError(f"'{run_id}' is not a run id (22 letters, digits, '-' or '_').")
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"No run with id '{run_id}'.")
            run = self._row_to_run(row)
            run["epochs"] = self._epochs(conn, run_id)
        return run

    @staticmethod
    def _epochs(conn: sqlite3.Connection, run_id: str) -> dict[str, list[dict[str, float]]]:
        epochs: dict[str, list[dict[str, float]]] = {}
        rows = conn.execute(
            "SELECT stage, epoch, logs FROM epochs WHERE run_id = ? ORDER BY rowid", (run_id,)
        ).fetchall()
        for row in rows:
            epochs.setdefault(row["stage"], []).append({"epoch": row["epoch"], **json.loads(row["logs"])})
        return epochs

    def list_runs(
        self, status: str | None = None, limit: int = 500, workspace: str | None = None
    ) -> list[dict[str, Any]]:
        """Runs, newest first, without their epoch history.

        Args:
            workspace: only the runs of this private workspace (hosted mode); all runs when ``None``.
        """
        query, clauses, params = "SELECT * FROM runs", [], []
        if status:
            clauses.append("status = ?")
            params.append(status)
        if workspace is not None:
            clauses.append("workspace = ?")
            params.append(workspace)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY created_at DESC LIMIT ?"
        params.append(limit)
        with self._connect() as conn:
            return [self._row_to_run(row) for row in conn.execute(query, params).fetchall()]
