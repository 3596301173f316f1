"""Training jobs on a Ray cluster: ``TL_RAY_ADDRESS`` sends each queued run to Ray instead of the
local background worker.

Each run becomes one detached Ray actor (a task with its own process and resources) that asks for a
GPU when the cluster has GPUs (or ``TL_RAY_GPUS`` GPUs), trains the run with the same code as the
local worker, writes its progress and results to the shared store, and exits. Detached, so a job
keeps training when the app that submitted it restarts; the app only needs the store to follow it.
Cancelling goes through the store's cancel flag, as for the local worker.

Every node of the cluster reaches the same store: on one machine the app's data folder works as is;
across machines set ``TL_DATABASE_URL`` (PostgreSQL) and ``TL_ARTIFACTS_URL`` (s3://, gs://, or a
shared folder) for the app and the cluster alike. The engine's code travels with each job
(``runtime_env`` ``py_modules``); its libraries (``requirements.txt``) must be installed on the
cluster's nodes. Ray itself is optional: ``pip install ray`` where Ray jobs are wanted.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from tl_core.errors import ConfigError
from tl_core.execution import execute_run

ADDRESS_ENV = "TL_RAY_ADDRESS"
GPUS_ENV = "TL_RAY_GPUS"
CPUS_ENV = "TL_RAY_CPUS"
NAMESPACE = "tl_studio"
REACH_TIMEOUT_SECONDS = 5.0
# Settings a job passes on to the process that trains it (the cluster's nodes have their own env).
_FORWARDED_ENV_PREFIXES = ("TL_", "KERAS_", "TF_CPP_MIN_LOG_LEVEL")
_NOT_FORWARDED = {ADDRESS_ENV}


def address() -> str | None:
    """The Ray cluster jobs go to (``TL_RAY_ADDRESS``: ``auto``, ``host:6379`` or ``ray://host:10001``),
    or ``None`` for the local background worker."""
    value = os.environ.get(ADDRESS_ENV, "").strip()
    return value or None


def enabled() -> bool:
    return address() is not None


def gpus_per_job(cluster_resources: dict[str, float]) -> float:
    """GPUs one job asks for: ``TL_RAY_GPUS`` when set, else one when the cluster has any."""
    setting = os.environ.get(GPUS_ENV, "").strip()
    if setting:
        try:
            gpus = float(setting)
        except ValueError:
            raise ConfigError(f"{GPUS_ENV} must be a number of GPUs per job, not '{setting}'.") from None
        if gpus < 0:
            raise ConfigError(f"{GPUS_ENV} cannot be negative ({setting}).")
        return gpus
    return 1.0 if cluster_resources.get("GPU", 0) >= 1 else 0.0


def cpus_per_job() -> float:
    setting = os.environ.get(CPUS_ENV, "").strip()
    try:
        return float(setting) if setting else 1.0
    except ValueError:
        raise ConfigError(f"{CPUS_ENV} must be a number of CPUs per job, not '{setting}'.") from None


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"{ADDRESS_ENV} is set, so jobs go to a Ray cluster, but Ray is not installed here: "
            "`pip install ray` (or unset the setting to train with the local worker)."
        ) from None
    return ray


def _unreachable(target: str, err: Exception) -> ConfigError:
    return ConfigError(
        f"Could not reach the Ray cluster at '{target}' ({ADDRESS_ENV}): {err}. Start it with "
        "`ray start --head` or fix the address (a cluster with token authentication also needs its token: "
        "RAY_AUTH_TOKEN); unset the setting to train with the local worker."
    )


def _check_reachable(target: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at ``host:port`` (``ray.init`` keeps retrying)."""
    if target == "auto":
        return
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{ADDRESS_ENV} must be 'auto', 'host:port' or 'ray://host:port', not '{target}'.")
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_SECONDS).close()
    except OSError as err:
        raise _unreachable(target, err) from None


def _use_auth_token() -> None:
    """Send Ray's authentication token when there is one (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``
    or ``~/.ray/auth_token``, which ``ray start`` writes). Clusters start with token authentication
    on by default since Ray 2.5x, and a driver only sends the token when ``RAY_AUTH_MODE=token``
    was set before Ray was imported; a cluster without authentication accepts it too."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def connect() -> Any:
    """Connect this process to the cluster once (later calls reuse the connection); returns ``ray``."""
    _use_auth_token()  # read once, when Ray is first imported
    ray = _ray()
    if not ray.is_initialized():
        target = address()
        _check_reachable(target)
        try:
            # The engine's code travels with the jobs: the nodes need its libraries, not this checkout.
            ray.init(address=target, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING",
                     configure_logging=False, runtime_env={"py_modules": [str(Path(__file__).resolve().parent)]})
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise _unreachable(target, err) from err
    return ray


def _job_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV_PREFIXES) and k not in _NOT_FORWARDED}


def store_spec(store) -> dict[str, Any]:
    """What a job needs to open the same store on any node."""
    return {
        "data_dir": str(store.data_dir),
        "database_url": store.database_url,
        "artifacts_url": store.artifacts_url,
    }


def _train(run_id: str, spec: dict[str, Any], env: dict[str, str]) -> str:
    """Body of a job, in the Ray worker process: the same execution as the local worker's."""
    os.environ.update(env)
    from tl_core.store import RunStore

    store = RunStore(spec["data_dir"], database_url=spec["database_url"], artifacts_url=spec["artifacts_url"])
    return execute_run(store, run_id)


_actor_class = None


def _job_actor(ray):
    global _actor_class
    if _actor_class is None:

        class TrainingJob:
            """One run; the actor exits (and frees its GPU) when the run ends, however it ends."""

            def run(self, run_id: str, spec: dict[str, Any], env: dict[str, str]) -> str:
                try:
                    return _train(run_id, spec, env)
                finally:
                    ray.actor.exit_actor()

        _actor_class = ray.remote(max_restarts=0, max_task_retries=0)(TrainingJob)
    return _actor_class


def dispatch(store, run_id: str) -> dict[str, Any]:
    """Send a queued run to the Ray cluster; returns what it asked for (``gpus``, ``cpus``).

    Raises:
        ConfigError: Ray is missing or the cluster cannot be reached (the caller marks the run failed).
    """
    ray = connect()
    gpus = gpus_per_job(ray.cluster_resources())
    cpus = cpus_per_job()
    actor = _job_actor(ray).options(
        name=f"tl-run-{run_id}",
        lifetime="detached",
        num_gpus=gpus,
        num_cpus=cpus,
    ).remote()
    actor.run.remote(run_id, store_spec(store), _job_env())
    return {"gpus": gpus, "cpus": cpus}
