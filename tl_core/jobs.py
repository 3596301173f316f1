"""Background training: queued runs in the store, executed one at a time by a worker process.

The app (or anyone) :func:`submit`\\ s a run; :func:`ensure_worker` starts ``python -m tl_core
worker`` in its own process session if none is alive, so training survives page reloads, closed
tabs and a restarted app server. One worker per data folder is guaranteed by an exclusive
``flock`` on ``worker.lock``, which the operating system releases if the worker dies; a new worker
then marks failed, with an explanation, each ``running`` run whose process is gone. POSIX only
(``fcntl``): Linux, macOS, WSL.

The worker itself never imports TensorFlow: it trains each run it claims in a fresh child process,
so the memory a run took goes back to the operating system when the run ends.

With ``TL_RAY_ADDRESS`` set, :func:`submit` sends each run to a Ray cluster instead
(:mod:`tl_core.ray_jobs`) and no local worker is started; both execute a run with
:func:`tl_core.execution.execute_run`, so progress, cancel and results go through the same store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tl_core import quotas, ray_jobs
from tl_core.config import DataConfig, TrainConfig, env_number, run_payload
from tl_core.errors import ConfigError, DataError
from tl_core.execution import train_claimed
from tl_core.store import RunStore

LOCK_NAME = "worker.lock"
SPAWN_STAMP = "worker.spawned"
SPAWN_GRACE_SECONDS = 15.0
# Training yields the CPU to the app server, so pages stay quick while a job runs (POSIX niceness).
WORKER_NICE_ENV, WORKER_NICENESS = "TL_WORKER_NICE", 10
INTERRUPTED = (
    "The training worker stopped while this run was in progress (it crashed, was killed or the "
    "machine restarted). Resume it to go on from its last completed epoch."
)
# TensorFlow keeps most of what a run allocated until its process exits, so a worker that trained in
# its own process grew run after run (bench/memory_ten_runs.py). TL_WORKER_IN_PROCESS=1 does that
# anyway (the bench's baseline); by default each run trains in a fresh child process.
IN_PROCESS_ENV = "TL_WORKER_IN_PROCESS"


STANDBY_ENV = "TL_WORKER_STANDBY"


def standby_enabled() -> bool:
    """Whether an idle worker keeps a training process started ahead (``TL_WORKER_STANDBY=0``: not)."""
    return os.environ.get(STANDBY_ENV, "").strip() != "0"


class Standby:
    """A training process started ahead while the worker is idle: it has imported TensorFlow and waits
    for a run id on its standard input, so a run starts training without paying the imports.

    It exists only while no run trains (the run it takes is the next one), so the worker's peak
    memory is the same with it; it ends with the worker (its input closes, or the kernel's
    parent-death signal).
    """

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start one unless one is waiting already."""
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(_child_command(self.store, "--standby"), stdin=subprocess.PIPE,
                                            env=engine_env(**self.store.env_vars()))

    def take(self) -> subprocess.Popen | None:
        """The waiting process, handed over (None if there is none or it died)."""
        process, self.process = self.process, None
        return process if process is not None and process.poll() is None else None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()  # end of input: it exits
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _child_command(store: RunStore, *args: str) -> list[str]:
    return [sys.executable, "-m", "tl_core", "worker", "--data-dir", str(store.data_dir.resolve()), "--quiet",
            *args, "--worker-pid", str(os.getpid())]


def fresh_process_per_run() -> bool:
    """Whether each run trains in a fresh child process (the default; ``TL_WORKER_IN_PROCESS=1``: not)."""
    return os.environ.get(IN_PROCESS_ENV, "").strip() != "1"


def submit(
    store: RunStore,
    source: str | os.PathLike,
    config: TrainConfig,
    data_config: DataConfig = DataConfig(),
    name: str | None = None,
    group: str | None = None,
    workspace: str | None = None,
    share_images: bool = True,
) -> str:
    """Queue a training run on a dataset folder or zip; returns its run id.

    Args:
        source: a folder or zip path the worker process can read (save uploads first).
        group: a label shared by runs queued together (a strategy comparison).
        workspace: the private workspace the run belongs to (hosted mode).
        share_images: whether the run's public page may show its images (mistakes gallery).

    Raises:
        ConfigError: invalid settings. DataError: the source does not exist. QuotaError: a hosted
        workspace's run over its cost quota, or its queue full (:mod:`tl_core.quotas`).
    """
    config.validate()
    data_config.validate()
    quotas.check_runs(store, [config], workspace)  # hosted workspaces only; a comparison checks all its runs first
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise DataError(f"No folder or zip file at '{path}'.")
    payload = {**run_payload(config, data_config, str(path), group), "share_images": bool(share_images)}
    on_ray = ray_jobs.enabled()
    run_id = store.create_run(payload, status="queued", name=name, workspace=workspace,
                              executor="ray" if on_ray else None)
    if on_ray:
        _dispatch_to_ray(store, run_id)
    return run_id


def _dispatch_to_ray(store: RunStore, run_id: str) -> None:
    """Hand a queued run to the Ray cluster; if that fails the run is failed with the reason."""
    try:
        asked = ray_jobs.dispatch(store, run_id)
    except ConfigError as err:
        store.finish(run_id, "failed", error=str(err))
        return
    except Exception as err:  # noqa: BLE001 - whatever Ray raises, the run ends failed with the reason
        store.finish(run_id, "failed", error=f"Could not send the run to the Ray cluster: {err.__class__.__name__}: {err}")
        return
    gpus = asked["gpus"]
    store.set_progress(run_id, {"stages": {}, "message": f"waiting for the Ray cluster, asks for {gpus:g} GPU{'s' if gpus != 1 else ''}"})


def resume(store: RunStore, run_id: str) -> None:
    """Queue a failed or cancelled run again and make sure a worker runs it.

    It goes on from its last completed epoch when it has checkpoints (runs that train epochs);
    decoding and feature extraction come back from their caches.

    Raises:
        QuotaError: the run's hosted workspace already has its quota of queued and running runs.
    """
    quotas.check_queue(store, store.get_run(run_id).get("workspace"))
    on_ray = ray_jobs.enabled()
    store.requeue(run_id, executor="ray" if on_ray else None)
    if on_ray:
        _dispatch_to_ray(store, run_id)
    else:
        ensure_worker(store)


def _lock_path(store: RunStore) -> Path:
    return store.data_dir / LOCK_NAME


def worker_alive(store: RunStore) -> bool:
    """Whether a worker holds this data folder's lock right now."""
    with open(_lock_path(store), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


REPO_ROOT = str(Path(__file__).resolve().parent.parent)


def engine_env(**extra: str) -> dict[str, str]:
    """The environment for a ``python -m tl_core`` child process: this checkout importable first."""
    path = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def ensure_worker(store: RunStore) -> bool:
    """Start a worker process for this data folder unless one is alive or starting; True if started.

    Never with ``TL_RAY_ADDRESS`` set: the Ray cluster runs the jobs then.
    """
    stamp = store.data_dir / SPAWN_STAMP
    if ray_jobs.enabled() or worker_alive(store):
        return False
    try:
        if time.time() - stamp.stat().st_mtime < SPAWN_GRACE_SECONDS:
            return False  # started a moment ago: still on its way to the lock
    except FileNotFoundError:
        pass
    stamp.touch()
    env = engine_env(**store.env_vars())  # the same database and artifacts location
    log = open(store.data_dir / "worker.log", "ab")
    subprocess.Popen(
        [sys.executable, "-m", "tl_core", "worker", "--data-dir", str(store.data_dir), "--quiet"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,  # not killed with the app server's process group
    )
    log.close()
    return True


def refresh_seconds(snapshot: dict[str, Any], running: float, queued: float, idle: float) -> float:
    """How often a live view of this snapshot should refresh: often only while it has news to show."""
    return running if snapshot["running"] else queued if snapshot["queued"] else idle


def queue_snapshot(store: RunStore, workspace: str | None = None) -> dict[str, Any]:
    """What the sidebar shows: the running run and the queued ones, oldest first.

    A ``running`` run whose training process is gone (a killed worker) is marked failed here, so
    the app notices within one refresh.

    Args:
        workspace: show only this workspace's runs (hosted mode); the others are only counted.
    """
    running = store.list_runs(status="running", limit=10)
    alive = worker_alive(store)
    if running and not alive and store.fail_interrupted(INTERRUPTED):
        running = store.list_runs(status="running", limit=10)
    queued = sorted(store.list_runs(status="queued", limit=500), key=lambda r: r["created_at"])
    mine = (lambda run: True) if workspace is None else (lambda run: run.get("workspace") == workspace)
    return {
        "running": [r for r in running if mine(r)],
        "queued": [r for r in queued if mine(r)],
        "others_running": sum(not mine(r) for r in running),
        "others_queued": sum(not mine(r) for r in queued),
        "worker_alive": alive,
    }


def lower_priority() -> None:
    """The background worker's process yields the CPU to the app server (``TL_WORKER_NICE``)."""
    niceness = int(env_number(WORKER_NICE_ENV, WORKER_NICENESS))  # a bad value: a ConfigError naming it
    if niceness > 0:
        os.nice(min(niceness, 19))


def run_worker(store: RunStore, idle_exit_seconds: float = 600.0, poll_seconds: float = 0.5, once: bool = False,
               *, fresh_process: bool | None = None) -> int:
    """Execute queued runs one at a time until idle for ``idle_exit_seconds``.

    Args:
        fresh_process: train each run in a child process (:func:`train_in_child`); False: in this one;
            ``None``: as ``TL_WORKER_IN_PROCESS`` says (:func:`fresh_process_per_run`).

    Returns:
        The number of runs executed; 0 at once if another worker holds the lock.
    """
    handle = open(_lock_path(store), "a+")
    deadline = time.monotonic() + 3.0  # an app's liveness probe holds the lock for microseconds
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                return 0
            time.sleep(0.05)
    try:
        # TensorFlow is imported only where a run trains, so a second worker started by mistake exits
        # in a fraction of a second instead of loading it.
        store.fail_interrupted(INTERRUPTED)
        in_child = fresh_process_per_run() if fresh_process is None else fresh_process
        standby = Standby(store) if in_child and standby_enabled() and not once else None
        executed, idle_since = 0, time.monotonic()
        while True:
            run_id = store.claim_next_queued()
            if run_id is None:
                if once or time.monotonic() - idle_since > idle_exit_seconds:
                    return executed
                if standby is not None:
                    standby.start()  # idle: the next run's process imports TensorFlow now
                time.sleep(poll_seconds)
                continue
            if in_child:
                train_in_child(store, run_id, ready=standby.take() if standby is not None else None)
            else:
                train_claimed(store, run_id)
            executed += 1
            idle_since = time.monotonic()
    finally:
        if standby is not None:
            standby.stop()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def train_in_child(store: RunStore, run_id: str, *, ready: subprocess.Popen | None = None) -> None:
    """Train a run this process claimed in a fresh ``python -m tl_core worker --run`` process; wait for it.

    This process stays the run's owner in the store, so a killed worker fails the run at once (the
    child dies with it); a child that dies alone fails its run with how it ended.

    Args:
        ready: a :class:`Standby` process to hand the run to instead of starting one.
    """
    child = None
    if ready is not None:
        try:
            ready.stdin.write(f"{run_id}\n".encode())
            ready.stdin.close()
            child = ready
        except OSError:  # it died meanwhile: start a fresh one
            ready.kill()
    if child is None:
        child = subprocess.Popen(_child_command(store, "--run", run_id), stdin=subprocess.DEVNULL,
                                 env=engine_env(**store.env_vars()))
    stopped_here = False
    try:
        child.wait()
    finally:
        if child.poll() is None:  # the worker itself is stopping (Ctrl-C, an error): so does its run
            stopped_here = True
            child.kill()
            child.wait()
        if store.get_run(run_id)["status"] == "running":
            reason = INTERRUPTED if stopped_here else unfinished_reason(child.returncode)
            store.finish(run_id, "failed", error=reason)


def unfinished_reason(returncode: int) -> str:
    """Why a run whose training process ended on its own before finishing it failed, and what to do."""
    if returncode == -signal.SIGKILL:
        how = ("was killed (SIGKILL; on a small machine most often because memory ran out: a smaller image "
               "size or batch size needs less)")
    elif returncode < 0:
        how = f"was stopped by signal {-returncode}"
    else:
        how = f"exited with code {returncode} (its output is in the worker's log, worker.log in the data folder)"
    return (f"The run's training process {how} before the run ended. "
            "Resume it to go on from its last completed epoch.")
