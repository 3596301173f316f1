"""Per-workspace quotas of a hosted app: what one visitor may take of a small shared server.

A workspace exists only in a hosted app (``TL_HOSTED=1``); each check here passes at once for
``workspace=None``, so a local app and the command line have no quotas. The limits are a
:class:`~tl_core.config.QuotaConfig`, read from ``$TL_QUOTA_*`` when none is given; 0 lifts one.
Each refusal is a :class:`~tl_core.errors.QuotaError` that says the limit, the workspace's current
use and how to free room.
"""

from __future__ import annotations

from tl_core.backbones import get_spec
from tl_core.config import QUOTA_REFERENCE_SIZE, QuotaConfig, TrainConfig
from tl_core.errors import QuotaError
from tl_core.store import RunStore

ACTIVE_STATUSES = ("queued", "running")


def _megabytes(n_bytes: float) -> str:
    return f"{n_bytes / 1024**2:,.1f} MB"


def check_dataset_space(
    workspace: str | None, *, used_bytes: int, new_bytes: int, n_datasets: int, quotas: QuotaConfig | None = None
) -> None:
    """Refuses saving ``new_bytes`` more when the workspace's saved datasets would go over their quota.

    Args:
        used_bytes: what the workspace's saved datasets take now, in ``n_datasets`` folders.
        new_bytes: the size of the dataset about to be saved.

    Raises:
        QuotaError: over ``quotas.dataset_mb``; nothing has been written.
    """
    quotas = quotas or QuotaConfig.from_env()
    limit = quotas.dataset_mb * 1024**2
    if workspace is None or not limit or used_bytes + new_bytes <= limit:
        return
    raise QuotaError(
        f"This dataset takes {_megabytes(new_bytes)} and this workspace's {n_datasets} saved dataset(s) "
        f"already take {_megabytes(used_bytes)}; a workspace may keep at most {quotas.dataset_mb:g} MB "
        "on this shared server, so nothing was saved. Delete a saved dataset you no longer need "
        "(Data page, Saved datasets) or upload fewer images."
    )


def check_queue(store: RunStore, workspace: str | None, n_new: int = 1, *, quotas: QuotaConfig | None = None) -> None:
    """Refuses queuing ``n_new`` runs at once (a comparison: all its runs) that would put the
    workspace over its quota of queued and running runs; call it before queuing any of them.

    Raises:
        QuotaError: over ``quotas.queued_runs``.
    """
    quotas = quotas or QuotaConfig.from_env()
    limit = quotas.queued_runs
    if workspace is None or not limit:
        return
    n_active = sum(len(store.list_runs(status=status, workspace=workspace, limit=limit + n_new))
                   for status in ACTIVE_STATUSES)
    if n_active + n_new <= limit:
        return
    asked = "one more run" if n_new == 1 else f"these {n_new} runs"
    raise QuotaError(
        f"This workspace has {n_active} run(s) queued or running; queuing {asked} would make "
        f"{n_active + n_new}, and a workspace may have at most {limit} at once on this shared server. "
        "Remove queued runs (Train page, Waiting in the queue) or wait for some to finish"
        + (", or compare on fewer splits." if n_new > 1 else ".")
    )


def run_epochs(config: TrainConfig) -> int:
    """Epochs a run trains: stage 1 + stage 2 of fine-tuning, those of training from scratch, and 1
    for the feature extractor (its ConvNet runs once; the head fits on the cached features)."""
    if config.strategy == "feature_extractor":
        return 1
    if config.strategy == "finetune" and config.unfreeze_blocks != 0:
        return config.epochs + config.fine_tune_epochs
    return config.epochs


def _image_size(config: TrainConfig) -> int:
    return config.image_size or get_spec(config.backbone).input_size


def run_cost(config: TrainConfig) -> float:
    """What a run costs, in epochs at 224 px: epochs x (image size / 224)²."""
    return run_epochs(config) * (_image_size(config) / QUOTA_REFERENCE_SIZE) ** 2


def check_run_cost(config: TrainConfig, workspace: str | None, *, quotas: QuotaConfig | None = None) -> None:
    """Refuses a run that would train more than ``quotas.run_epochs`` epochs at 224 px.

    Raises:
        QuotaError: over the quota, with the most epochs allowed at the run's image size.
    """
    quotas = quotas or QuotaConfig.from_env()
    cost = run_cost(config)
    if workspace is None or not quotas.run_epochs or cost <= quotas.run_epochs:
        return
    size = _image_size(config)
    reference = f"{QUOTA_REFERENCE_SIZE} px"
    scaled = size != QUOTA_REFERENCE_SIZE
    at_size = int(quotas.run_epochs / (size / QUOTA_REFERENCE_SIZE) ** 2)
    raise QuotaError(
        f"This run would train {run_epochs(config)} epoch(s) at {size} px"
        + (f", as much as {cost:,.0f} epochs at {reference}" if scaled else "")
        + f"; a run may train at most {quotas.run_epochs:g} epochs at {reference} on this shared server "
        f"(epochs x (image size / {QUOTA_REFERENCE_SIZE})², fine-tuning counts both stages)"
        + (f", which is {at_size} epoch(s) at {size} px" if scaled else "")
        + ". Use fewer epochs or a smaller image size."
    )


def check_runs(
    store: RunStore, configs: list[TrainConfig], workspace: str | None, *, quotas: QuotaConfig | None = None
) -> None:
    """Refuses runs queued together (a comparison) as a whole: each one's cost, then the workspace's
    queue with all of them; call it before queuing any.

    Raises:
        QuotaError: a run over its cost quota, or the queue over its quota.
    """
    quotas = quotas or QuotaConfig.from_env()
    for config in configs:
        check_run_cost(config, workspace, quotas=quotas)
    check_queue(store, workspace, len(configs), quotas=quotas)
