"""Runs, their epoch metrics and artifacts: a database (SQLite or PostgreSQL) plus one folder per run.

The data folder is ``$TL_DATA_DIR`` (default ``~/.tl_studio``): ``runs.db``, ``runs/<run_id>/``
(``config.json``, ``metrics.json``, ``model.keras``) and ``cache/`` (decoded pixels, features).
Run ids are 128 random bits, URL-safe, because a run's id is its share link.

A hosted app whose disk is wiped on restart keeps its runs elsewhere: ``$TL_DATABASE_URL`` (a
``postgresql://`` URL, as Neon or Supabase give it) holds the runs, and ``$TL_ARTIFACTS_URL``
(see :mod:`tl_core.artifacts`) a copy of each finished run's folder, fetched back when missing.
Without them the store is SQLite in the data folder and nothing is copied.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    create_engine,
    event,
    exc,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateIndex, CreateTable

from tl_core.artifacts import ARTIFACTS_ENV, ArtifactMirror, mirror_from_env
from tl_core.errors import ConfigError, RunNotFoundError, TLCoreError
from tl_core.fsutil import swap_folder, temporary_path, write_json_atomic

DATA_DIR_ENV = "TL_DATA_DIR"
DATABASE_ENV = "TL_DATABASE_URL"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")  # whole string: fullmatch ("$" takes "id\n")
# A running run of another machine is judged interrupted when it has not written for this long.
STALE_SECONDS = 900.0
# In a run's folder: the test split's file names, and its labels and predictions in that order.
SPLIT_FILE = "split.json"
PREDICTIONS_FILE = "predictions.json"
_SCHEMA_LOCK = 0x544C5354  # PostgreSQL advisory lock: one process creates or migrates the tables

METADATA = MetaData()
RUNS = Table(
    "runs",
    METADATA,
    Column("id", Text, primary_key=True),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),  # also the heartbeat of a running run
    Column("status", Text, nullable=False),
    Column("error", Text),
    Column("name", Text),
    Column("config", Text, nullable=False),
    Column("dataset", Text),
    Column("metrics", Text),
    Column("progress", Text),
    Column("cancel_requested", Integer, nullable=False, server_default="0"),
    Column("owner_pid", Integer),
    Column("workspace", Text),
    Column("executor", Text),  # None: the local worker; else who runs it (e.g. "ray")
    Column("owner_host", Text),
    Index("runs_created", "created_at"),
)
EPOCHS = Table(
    "epochs",
    METADATA,
    Column("run_id", Text, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("stage", Text, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("logs", Text, nullable=False),
    Column("logged_at", Double),  # the order epochs arrived in (SQLite stores of old versions: rowid)
    PrimaryKeyConstraint("run_id", "stage", "epoch"),
)

_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


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


def _host() -> str:
    return socket.gethostname()


def default_data_dir() -> Path:
    """``$TL_DATA_DIR`` or ``~/.tl_studio``."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".tl_studio").expanduser()


def new_run_id() -> str:
    """22 URL-safe characters carrying 128 random bits, never starting with "-" (a command line
    would take it for an option: ``python -m tl_core show -abc...``)."""
    while True:
        run_id = secrets.token_urlsafe(16)
        if not run_id.startswith("-"):
            return run_id


def is_valid_run_id(run_id: str) -> bool:
    return isinstance(run_id, str) and bool(RUN_ID_PATTERN.fullmatch(run_id))


def new_workspace_key() -> str:
    """A private workspace key for a visitor of a hosted app: 128 random bits, like a run id."""
    return new_run_id()


def is_valid_workspace_key(key: str) -> bool:
    return is_valid_run_id(key)


# --------------------------------------------------------------------------- engines


def parse_database_url(url: str | URL, source: str = DATABASE_ENV) -> URL:
    """A SQLAlchemy URL from what a user pasted: ``postgresql://`` and ``postgres://`` use psycopg 3.

    Raises:
        ConfigError: not a URL, a port that is not a number from 1 to 65535, or neither SQLite nor
            PostgreSQL (never repeating the password, not even in the chained error).
    """
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", str(url))  # never echo the rest: it may hold a password
    example = "postgresql://user:password@host:5432/dbname"
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise ConfigError(
            f"{source} is not a database URL ({f'{scheme[0]}...' if scheme else 'no scheme://'}). Give one like "
            f"{example}, or leave it unset for SQLite in the data folder."
        ) from None
    except ValueError:  # SQLAlchemy's int() of the port; its message may quote part of the URL
        parsed = None
    if parsed is None or (parsed.port is not None and not 1 <= parsed.port <= 65535):
        raise ConfigError(
            f"{source} has a port that is not a number from 1 to 65535 "
            f"({scheme[0] if scheme else ''}...:port). Write it like {example}, or leave the port out for 5432."
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"{source} names a {parsed.get_backend_name()} database ({parsed.render_as_string(hide_password=True)}); "
            "the store works with PostgreSQL (postgresql://...) or SQLite (sqlite:///path/runs.db)."
        )
    return parsed


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        # A connection per transaction, as SQLite wants across processes: no pool keeps files open.
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": 10}
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args=connect_args)


def engine_for(url: URL) -> Engine:
    """One engine (one connection pool) per database URL in this process, shared by every store."""
    key = url.render_as_string(hide_password=False)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = _create_engine(url)
        return _ENGINES[key]


def dispose_engines() -> None:
    """Close every pooled connection (at shutdown, or before a test drops its database)."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()


def _forget_pools_after_fork() -> None:
    for engine in _ENGINES.values():  # a child must not share its parent's sockets
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _schema(conn: Connection) -> None:
    """Create the tables, or add the columns an older version's store lacks."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
    for table in METADATA.sorted_tables:
        conn.execute(CreateTable(table, if_not_exists=True))
        for index in table.indexes:
            conn.execute(CreateIndex(index, if_not_exists=True))
        present = {column["name"] for column in inspect(conn).get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                _add_column(conn, table, column)


def _add_column(conn: Connection, table: Table, column: Column) -> None:
    ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(conn.dialect)}"
    if column.server_default is not None:
        ddl += f" NOT NULL DEFAULT {column.server_default.arg}"
    try:
        conn.exec_driver_sql(ddl)
    except exc.OperationalError as err:  # SQLite: another process added it a moment ago
        if "duplicate column" not in str(err):
            raise


# --------------------------------------------------------------------------- the store


class RunStore:
    """Persistent runs. Safe to use from several processes and machines (short transactions).

    Args:
        data_dir: the data folder (working copies of run folders, caches); :func:`default_data_dir`
            when ``None``.
        database_url: where runs are stored: a SQLAlchemy URL (``postgresql://user:pw@host/db``,
            ``sqlite:///path``); ``$TL_DATABASE_URL`` when ``None``, else SQLite at ``data_dir/runs.db``.
        artifacts_url: a folder or fsspec URL that keeps a copy of every finished run's folder and
            of saved datasets; ``$TL_ARTIFACTS_URL`` when ``None``, else no copies are made.

    Raises:
        ConfigError: a URL that cannot be used, or a database that cannot be reached (the message
            names the host and where the URL came from, never the password).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        database_url: str | URL | None = None,
        artifacts_url: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._url_source = "the database_url argument" if database_url else DATABASE_ENV
        url = database_url or os.environ.get(DATABASE_ENV, "").strip()
        parsed = parse_database_url(url, self._url_source) if url else None
        # The URLs as another process (a worker, a Ray job) opens the same store with; None: the defaults.
        self.database_url = parsed.render_as_string(hide_password=False) if parsed else None
        self.engine = engine_for(parsed or URL.create("sqlite", database=str((self.data_dir / "runs.db").resolve())))
        sqlite_file = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        self.db_path = Path(sqlite_file) if sqlite_file else None
        self.artifacts: ArtifactMirror | None = mirror_from_env(artifacts_url)
        self.artifacts_url = self.artifacts.url if self.artifacts else None
        self._insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        with self._transaction() as conn:
            _schema(conn)

    def __repr__(self) -> str:
        database = self.engine.url.render_as_string(hide_password=True)
        return f"RunStore({str(self.data_dir)!r}, database={database!r}, artifacts={self.artifacts!r})"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    def env_vars(self) -> dict[str, str]:
        """What a ``python -m tl_core ... --data-dir`` child needs to open this same store (empty by default)."""
        found = {DATABASE_ENV: self.database_url, ARTIFACTS_ENV: self.artifacts_url}
        return {name: value for name, value in found.items() if value}

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction: committed on success, rolled back on error; the connection goes back."""
        try:
            conn = self.engine.connect()
        except exc.DBAPIError as err:
            raise self._unreachable(err) from err
        with conn, conn.begin():
            yield conn

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        """The driver's own connection in one transaction (for maintenance and tests; SQL in its dialect)."""
        conn = self.engine.raw_connection()
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def _unreachable(self, err: exc.DBAPIError) -> ConfigError:
        url = self.engine.url
        reason = " ".join(str(err.orig or err).split())
        if url.password:
            reason = reason.replace(str(url.password), "***")
        if self.db_path is not None:
            return ConfigError(f"Could not open the run database {self.db_path} ({reason}). "
                               "Check that the data folder exists and is writable.")
        return ConfigError(
            f"Could not reach the run database at {url.host or 'localhost'}:{url.port or 5432} "
            f"(database '{url.database}', user '{url.username}'; the URL comes from {self._url_source}): {reason}. "
            "Check that the server is running and reachable from here, and the URL's host, port, user and password."
        )

    # ----------------------------------------------------------------- run folders

    def _local_dir(self, run_id: str) -> Path:
        if not is_valid_run_id(run_id):
            raise RunNotFoundError(f"'{run_id}' is not a run id (22 letters, digits, '-' or '_').")
        return self.data_dir / "runs" / run_id

    def run_dir(self, run_id: str) -> Path:
        """The run's artifact folder here (it may not exist). Only well-formed ids ever become a path.

        Nothing is fetched: call :meth:`ensure_local` before reading files a finished run may have
        left on another machine or before a wiped disk.
        """
        return self._local_dir(run_id)

    def ensure_local(self, run_id: str) -> Path:
        """The run's folder here, complete: with an artifacts location, a missing folder (a wiped
        disk, another server) is fetched from it, and the folder of a run that ended on another
        machine (a Ray node) replaces the copy here once. Without one, just the folder's path.

        Raises:
            RunNotFoundError: a malformed id, or no such run.
        """
        folder = self._local_dir(run_id)
        if self.artifacts is None:
            return folder
        if not folder.is_dir():
            self._fetch(run_id, folder)
            return folder
        with self._transaction() as conn:
            row = conn.execute(select(RUNS.c.status, RUNS.c.owner_host).where(RUNS.c.id == run_id)).first()
        if row is None:
            raise RunNotFoundError(f"No run with id '{run_id}'.")
        if row.status in FINAL_STATUSES and row.owner_host not in (None, _host()):
            self._refresh(run_id, folder)
        return folder

    def _fetch(self, run_id: str, folder: Path) -> None:
        self.artifacts.try_download(f"runs/{run_id}", folder)

    def _refresh(self, run_id: str, folder: Path) -> None:
        """Once, replace the local copy of a run that another machine trained (a Ray node): the copy
        here may be older than the run's end (the folder made when it was queued, or a checkpoint
        copy fetched while it trained). The folders are swapped in one step (see :func:`swap_folder`)."""
        done = folder.with_name(f".final-{run_id}")
        if done.exists():
            return
        fresh = temporary_path(folder)
        if not self.artifacts.try_download(f"runs/{run_id}", fresh):
            return
        swap_folder(folder, fresh)
        done.touch()

    def publish(self, run_id: str) -> None:
        """Copy the run's folder to the artifacts location (only what changed); nothing without one.

        Call it after writing into a finished run's folder (heat maps, exports). :meth:`finish` calls it.

        Raises:
            ConfigError: the copy failed (the local folder is intact).
        """
        folder = self._local_dir(run_id)
        if self.artifacts is None or not folder.is_dir():
            return
        try:
            self.artifacts.upload(folder, f"runs/{run_id}")
        except Exception as err:  # fsspec back ends raise their own kinds
            raise ConfigError(f"Could not copy run {run_id}'s files to {self.artifacts.location} "
                              f"({err.__class__.__name__}: {err}). They are still in {folder}.") from err

    def publish_quietly(self, run_id: str) -> None:
        folder = self._local_dir(run_id)
        if self.artifacts is not None and folder.is_dir():  # a failure is logged: the run itself is stored
            self.artifacts.try_upload(folder, f"runs/{run_id}")

    # ----------------------------------------------------------------- writes

    def create_run(
        self,
        config: dict[str, Any],
        status: str = "queued",
        name: str | None = None,
        workspace: str | None = None,
        executor: str | None = None,
    ) -> str:
        """Store a new run and its folder; returns the new run id.

        Args:
            workspace: the private workspace (hosted mode) the run belongs to; ``None`` in a local app.
            executor: who runs it: ``None`` for the local worker (:meth:`claim_next_queued`), or a
                name such as ``"ray"`` for a runner that takes it with :meth:`claim_run`.
        """
        run_id = new_run_id()
        folder = self._local_dir(run_id)
        folder.mkdir(parents=True, exist_ok=False)
        write_json_atomic(folder / "config.json", config)
        now = time.time()
        owner = status == "running"
        with self._transaction() as conn:
            conn.execute(insert(RUNS).values(
                id=run_id, created_at=now, updated_at=now, status=status, name=name, config=json.dumps(config),
                owner_pid=os.getpid() if owner else None, owner_host=_host() if owner else None,
                workspace=workspace, executor=executor,
            ))
        return run_id

    def _update(self, run_id: str, **columns: Any) -> None:
        with self._transaction() as conn:
            result = conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(**columns, updated_at=time.time()))
            if result.rowcount == 0:
                raise RunNotFoundError(f"No run with id '{run_id}'.")

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if status == "running":  # the process that trains owns the run (see fail_interrupted)
            self._update(run_id, status=status, error=error, owner_pid=os.getpid(), owner_host=_host())
        else:
            self._update(run_id, status=status, error=error)

    def set_executor(self, run_id: str, executor: str | None) -> None:
        """Who runs this queued run: ``None`` for the local worker, or a name such as ``"ray"``.

        Raises:
            RunNotFoundError: no such run. ConfigError: the run is not queued.
        """
        with self._transaction() as conn:
            result = conn.execute(update(RUNS).where(RUNS.c.id == run_id, RUNS.c.status == "queued")
                                  .values(executor=executor, updated_at=time.time()))
            if result.rowcount == 0:
                raise self._refusal(conn, run_id, "Only a queued run can change who runs it")

    @staticmethod
    def _refusal(conn: Connection, run_id: str, what: str) -> TLCoreError:
        status = conn.execute(select(RUNS.c.status).where(RUNS.c.id == run_id)).scalar()
        if status is None:
            return RunNotFoundError(f"No run with id '{run_id}'.")
        return ConfigError(f"{what}; this one is {status}.")

    def set_dataset(self, run_id: str, dataset: dict[str, Any]) -> None:
        self._update(run_id, dataset=json.dumps(dataset))
        write_json_atomic(self.run_dir(run_id) / "dataset.json", dataset)

    def set_progress(self, run_id: str, progress: dict[str, Any]) -> None:
        """The run's progress snapshot; like every write, it refreshes the run's heartbeat."""
        self._update(run_id, progress=json.dumps(progress))

    def add_epoch(self, run_id: str, stage: str, epoch: int, logs: dict[str, float]) -> None:
        """One epoch's metrics (a repeated epoch replaces the earlier one); refreshes the heartbeat."""
        now = time.time()
        row = self._insert(EPOCHS).values(run_id=run_id, stage=stage, epoch=int(epoch), logs=json.dumps(logs),
                                          logged_at=now)
        upsert = row.on_conflict_do_update(
            index_elements=["run_id", "stage", "epoch"], set_={"logs": row.excluded.logs, "logged_at": now}
        )
        with self._transaction() as conn:
            if conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(updated_at=now)).rowcount == 0:
                raise RunNotFoundError(f"No run with id '{run_id}'.")
            conn.execute(upsert)

    def finish(self, run_id: str, status: str, metrics: dict[str, Any] | None = None, error: str | None = None) -> None:
        """Final status, with the metrics (also written to ``metrics.json``) or the error.

        The run's folder, as it is now (model, metrics, heat maps, checkpoints to resume from), is
        then copied to the artifacts location, if one is set.
        """
        if status not in FINAL_STATUSES:
            raise ValueError(f"final status must be one of {FINAL_STATUSES}, got {status!r}")
        if metrics is not None:
            write_json_atomic(self.run_dir(run_id) / "metrics.json", metrics)
        self._update(run_id, status=status, error=error, metrics=json.dumps(metrics) if metrics else None)
        self.publish_quietly(run_id)

    # ----------------------------------------------------------------- queue

    def _claim(self, condition) -> Any:
        return (update(RUNS).where(condition, RUNS.c.status == "queued")
                .values(status="running", owner_pid=os.getpid(), owner_host=_host(), updated_at=time.time()))

    def claim_next_queued(self) -> str | None:
        """Atomically move the oldest ``queued`` run of the local worker to ``running``; its id, or ``None``.

        Runs with an ``executor`` (a Ray job) are left to it. Several workers (processes, machines)
        claiming at once each get a different run: PostgreSQL skips the rows another one has locked.
        """
        oldest = RUNS.alias("oldest")
        pick = (select(oldest.c.id).where(oldest.c.status == "queued", oldest.c.executor.is_(None))
                .order_by(oldest.c.created_at, oldest.c.id).limit(1)
                .with_for_update(skip_locked=True))  # SQLite serialises writers itself
        with self._transaction() as conn:
            row = conn.execute(self._claim(RUNS.c.id == pick.scalar_subquery()).returning(RUNS.c.id)).first()
        return row.id if row else None

    def claim_run(self, run_id: str) -> bool:
        """Atomically move this ``queued`` run to ``running``, owned by this process and machine.

        Returns:
            True if this call claimed it; False if it was not queued (claimed already, cancelled...).

        Raises:
            RunNotFoundError: no such run.
        """
        with self._transaction() as conn:
            if conn.execute(self._claim(RUNS.c.id == run_id)).rowcount == 1:
                return True
            if conn.execute(select(RUNS.c.id).where(RUNS.c.id == run_id)).first() is None:
                raise RunNotFoundError(f"No run with id '{run_id}'.")
        return False

    def request_cancel(self, run_id: str) -> str:
        """Cancel a queued run now, or ask a running one to stop; returns the status after the call."""
        with self._transaction() as conn:
            conn.execute(update(RUNS).where(RUNS.c.id == run_id, RUNS.c.status == "queued")
                         .values(status="cancelled", error="Cancelled before it started.", updated_at=time.time()))
            conn.execute(update(RUNS).where(RUNS.c.id == run_id, RUNS.c.status == "running")
                         .values(cancel_requested=1))
            status = conn.execute(select(RUNS.c.status).where(RUNS.c.id == run_id)).scalar()
        if status is None:
            raise RunNotFoundError(f"No run with id '{run_id}'.")
        return status

    def is_cancel_requested(self, run_id: str) -> bool:
        with self._transaction() as conn:
            return bool(conn.execute(select(RUNS.c.cancel_requested).where(RUNS.c.id == run_id)).scalar())

    def fail_interrupted(self, reason: str, stale_seconds: float = STALE_SECONDS) -> list[str]:
        """Mark failed every ``running`` run whose training process is gone (crashed or killed).

        A run of this machine (or of no recorded machine) is gone when its process is; runs of live
        processes (a command-line ``train``) are left alone. A run of another machine, whose
        processes cannot be seen from here, is gone when it has not written for ``stale_seconds``
        (progress and epochs are its heartbeat). The folders of the failed runs are published.

        Returns:
            The ids of the runs marked failed.
        """
        host, now = _host(), time.time()
        with self._transaction() as conn:
            rows = conn.execute(select(RUNS.c.id, RUNS.c.owner_pid, RUNS.c.owner_host, RUNS.c.updated_at)
                                .where(RUNS.c.status == "running")).all()
        gone = [
            row for row in rows
            if (not _pid_alive(row.owner_pid) if row.owner_host in (None, host) else now - row.updated_at > stale_seconds)
        ]
        failed = []
        with self._transaction() as conn:
            for row in gone:  # unless it wrote meanwhile (a heartbeat, a new owner)
                result = conn.execute(
                    update(RUNS)
                    .where(RUNS.c.id == row.id, RUNS.c.status == "running", RUNS.c.updated_at == row.updated_at)
                    .values(status="failed", error=reason, updated_at=now)
                )
                if result.rowcount:
                    failed.append(row.id)
        for run_id in failed:  # checkpoints and logs, to resume from on another disk
            self.publish_quietly(run_id)
        return failed

    def requeue(self, run_id: str, executor: str | None = None) -> None:
        """Queue a failed or cancelled run again; it resumes from its checkpoints when it has any.

        Args:
            executor: who runs it now (see :meth:`create_run`), set in the same statement.

        Raises:
            RunNotFoundError: no such run. ConfigError: the run is queued, running or succeeded.
        """
        with self._transaction() as conn:  # one statement: two clicks cannot both requeue it
            result = conn.execute(
                update(RUNS).where(RUNS.c.id == run_id, RUNS.c.status.in_(("failed", "cancelled")))
                .values(status="queued", error=None, cancel_requested=0, owner_pid=None, owner_host=None,
                        progress=None, executor=executor, updated_at=time.time())
            )
            if result.rowcount == 0:
                raise self._refusal(conn, run_id, "Only a failed or cancelled run can be resumed")
        self._local_dir(run_id).with_name(f".final-{run_id}").unlink(missing_ok=True)  # it will end again

    def delete_run(self, run_id: str) -> None:
        """Delete the run, its epochs, its folder and the folder's copy at the artifacts location."""
        folder = self._local_dir(run_id)
        with self._transaction() as conn:
            conn.execute(RUNS.delete().where(RUNS.c.id == run_id))
        shutil.rmtree(folder, ignore_errors=True)
        folder.with_name(f".final-{run_id}").unlink(missing_ok=True)
        if self.artifacts is not None:
            self.artifacts.delete(f"runs/{run_id}")

    # ----------------------------------------------------------------- reads

    def _row_to_run(self, row) -> dict[str, Any]:
        run = dict(row._mapping)
        for key in ("config", "dataset", "metrics", "progress"):
            run[key] = json.loads(run[key]) if run.get(key) else None
        run["model_path"] = str(self._local_dir(run["id"]) / "model.keras")
        return run

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run's record with its epoch history under ``epochs`` (a database read, no files:
        :meth:`ensure_local` brings the run's folder).

        Raises:
            RunNotFoundError: a malformed id, or no such run.
        """
        self._local_dir(run_id)  # a malformed id is refused before the database sees it
        with self._transaction() as conn:
            row = conn.execute(select(RUNS).where(RUNS.c.id == run_id)).first()
            if row is None:
                raise RunNotFoundError(f"No run with id '{run_id}'.")
            run = self._row_to_run(row)
            run["epochs"] = self._epochs(conn, run_id)
        return run

    @staticmethod
    def _epochs(conn: Connection, run_id: str) -> dict[str, list[dict[str, float]]]:
        order = [text("rowid")] if conn.dialect.name == "sqlite" else [EPOCHS.c.logged_at, EPOCHS.c.epoch]
        rows = conn.execute(
            select(EPOCHS.c.stage, EPOCHS.c.epoch, EPOCHS.c.logs).where(EPOCHS.c.run_id == run_id).order_by(*order)
        )
        epochs: dict[str, list[dict[str, float]]] = {}
        for row in rows:
            epochs.setdefault(row.stage, []).append({"epoch": row.epoch, **json.loads(row.logs)})
        return epochs

    def list_runs(
        self, status: str | None = None, limit: int = 500, workspace: str | None = None
    ) -> list[dict[str, Any]]:
        """Runs, newest first, without their epoch history (nor fetching their folders).

        Args:
            workspace: only the runs of this private workspace (hosted mode); all runs when ``None``.
        """
        query = select(RUNS).order_by(RUNS.c.created_at.desc()).limit(limit)
        if status:
            query = query.where(RUNS.c.status == status)
        if workspace is not None:
            query = query.where(RUNS.c.workspace == workspace)
        with self._transaction() as conn:
            return [self._row_to_run(row) for row in conn.execute(query)]
