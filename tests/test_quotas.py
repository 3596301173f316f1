"""Per-workspace quotas of a hosted app: saved datasets on disk, queued runs, the cost of one run.

A real SQLite store and real image files written at test time; a workspace key stands for a
hosted visitor, ``workspace=None`` for a local app, which has no quotas.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_toy_folder, png_bytes
from streamlit.testing.v1 import AppTest

from tl_core import comparison, quotas
from tl_core.config import DataConfig, QuotaConfig, TrainConfig
from tl_core.data import load_images
from tl_core.datasets import datasets_dir, delete_dataset, list_datasets, save_image_set
from tl_core.errors import ConfigError, DataError, QuotaError
from tl_core.jobs import submit
from tl_core.store import new_workspace_key

FAST = TrainConfig(backbone="vgg16", weights="none", image_size=32, batch_size=8)


def noise_upload(n_per_class: int = 4, side: int = 128) -> list[tuple[str, bytes, str]]:
    """Images that do not compress: 12 x ~49 KB, about 0.6 MB."""
    from PIL import Image

    rng = np.random.default_rng(0)
    return [(f"{i}.png", png_bytes(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))), label)
            for label in ("a", "b", "c") for i in range(n_per_class)]


def test_saved_datasets_over_the_workspace_disk_quota_are_refused(store, monkeypatch):
    monkeypatch.setenv("TL_QUOTA_DATASET_MB", "1")
    alice, bob = new_workspace_key(), new_workspace_key()
    upload = load_images(noise_upload())
    first = save_image_set(store, upload, "first", alice)

    with pytest.raises(QuotaError, match=r"^This dataset takes 0\.\d MB and this workspace's 1 saved dataset\(s\) "
                                         r"already take 0\.\d MB; a workspace may keep at most 1 MB on this shared "
                                         r"server, so nothing was saved\. Delete a saved dataset you no longer need "
                                         r"\(Data page, Saved datasets\)"):
        save_image_set(store, upload, "second", alice)
    assert [d["name"] for d in list_datasets(store, alice)] == ["first"]
    assert len(list(datasets_dir(store).iterdir())) == 1  # nothing written, not even a partial folder

    save_image_set(store, upload, "bob's", bob)  # each workspace has its own quota
    for _ in range(3):
        save_image_set(store, upload, "local")  # a local app (no workspace) has none

    with pytest.raises(DataError, match="not a saved upload of this workspace"):
        delete_dataset(store, first, bob)  # nobody frees room with someone else's dataset
    delete_dataset(store, first, alice)  # the way to free room the message gives
    save_image_set(store, upload, "second", alice)
    assert [d["name"] for d in list_datasets(store, alice)] == ["second"]


def test_a_workspace_queue_has_a_quota_and_a_compare_over_it_is_refused_whole(tmp_path, store, monkeypatch):
    root = make_toy_folder(tmp_path / "toy", n_per_class=4)
    alice, bob = new_workspace_key(), new_workspace_key()
    ids = [submit(store, root, FAST, workspace=alice) for _ in range(5)]
    assert store.claim_next_queued() == ids[0]  # a running run counts too

    planned = comparison.plan(FAST, DataConfig())
    assert len(planned) == 16  # the default comparison
    with pytest.raises(QuotaError, match=r"^This workspace has 5 run\(s\) queued or running; queuing these 16 runs "
                                         r"would make 21, and a workspace may have at most 20 at once on this shared "
                                         r"server\. Remove queued runs \(Train page, Waiting in the queue\) or wait "
                                         r"for some to finish, or compare on fewer splits\.$"):
        quotas.check_runs(store, [config for config, _ in planned], alice)
    quotas.check_runs(store, [config for config, _ in planned], bob)  # another workspace's queue is its own
    quotas.check_queue(store, None, 1000)  # a local app has no quota
    costly = comparison.plan(TrainConfig(**{**FAST.to_dict(), "epochs": 300, "image_size": 224}), DataConfig())
    with pytest.raises(QuotaError, match=r"would train 310 epoch\(s\) at 224 px; "):  # its fine-tuning runs
        quotas.check_runs(store, [config for config, _ in costly], bob)
    assert store.list_runs(workspace=bob) == []

    monkeypatch.setenv("TL_QUOTA_QUEUED_RUNS", "6")
    ids.append(submit(store, root, FAST, workspace=alice))
    with pytest.raises(QuotaError, match=r"has 6 run\(s\) queued or running; queuing one more run would make 7, "
                                         r"and a workspace may have at most 6 .* or wait for some to finish\.$"):
        submit(store, root, FAST, workspace=alice)
    assert len(store.list_runs(workspace=alice)) == 6  # the refused run was not stored
    store.request_cancel(ids[-1])  # removing a queued run frees its place
    submit(store, root, FAST, workspace=alice)
    for _ in range(7):
        submit(store, root, FAST)  # local


def test_a_run_over_the_epochs_x_image_size_quota_is_refused_with_what_fits(tmp_path, store, monkeypatch):
    root = make_toy_folder(tmp_path / "toy", n_per_class=4)
    alice = new_workspace_key()
    big = TrainConfig(backbone="vgg16", weights="none", strategy="scratch", epochs=500, image_size=512)
    with pytest.raises(QuotaError, match=r"^This run would train 500 epoch\(s\) at 512 px, as much as 2,612 epochs at "
                                         r"224 px; a run may train at most 200 epochs at 224 px on this shared server "
                                         r"\(epochs x \(image size / 224\)², fine-tuning counts both stages\), which "
                                         r"is 38 epoch\(s\) at 512 px\. Use fewer epochs or a smaller image size\.$"):
        submit(store, root, big, workspace=alice)
    # Fine-tuning counts both stages; the feature extractor runs its ConvNet once, whatever its epochs.
    finetune = TrainConfig(backbone="vgg16", weights="none", strategy="finetune", epochs=30, fine_tune_epochs=200)
    assert quotas.run_cost(finetune) == 230
    with pytest.raises(QuotaError, match=r"would train 230 epoch\(s\) at 224 px; a run may train at most 200 epochs "
                                         r"at 224 px .*both stages\)\. Use fewer epochs"):
        submit(store, root, finetune, workspace=alice)
    submit(store, root, TrainConfig(backbone="vgg16", weights="none", epochs=500, image_size=512), workspace=alice)
    assert store.list_runs(workspace=alice)[0]["config"]["train"]["strategy"] == "feature_extractor"

    submit(store, root, big)  # a local app has no quota
    monkeypatch.setenv("TL_QUOTA_RUN_EPOCHS", "3000")
    submit(store, root, big, workspace=alice)
    monkeypatch.setenv("TL_QUOTA_RUN_EPOCHS", "0")  # lifted
    submit(store, root, TrainConfig(**{**big.to_dict(), "epochs": 10_000}), workspace=alice)


def test_quotas_are_read_from_the_environment(monkeypatch):
    assert QuotaConfig.from_env() == QuotaConfig(dataset_mb=500, queued_runs=20, run_epochs=200)
    monkeypatch.setenv("TL_QUOTA_DATASET_MB", "2000")
    monkeypatch.setenv("TL_QUOTA_QUEUED_RUNS", "5")
    monkeypatch.setenv("TL_QUOTA_RUN_EPOCHS", "50")
    assert QuotaConfig.from_env() == QuotaConfig(dataset_mb=2000, queued_runs=5, run_epochs=50)
    monkeypatch.setenv("TL_QUOTA_QUEUED_RUNS", "lots")
    with pytest.raises(ConfigError, match=r"^TL_QUOTA_QUEUED_RUNS is 'lots'; it must be a number of 0 or more "
                                          r"\(e\.g\. 20\)\. Fix it or unset it"):
        QuotaConfig.from_env()


def test_the_data_page_deletes_a_saved_upload_to_free_room(store, toy_folder):
    save_image_set(store, load_images(toy_folder), "mine")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/data.py").run()
    at.button(key="delete_dataset").click().run()
    assert not at.exception, at.exception
    assert list_datasets(store) == [] and not any(datasets_dir(store).iterdir())


def test_saved_datasets_with_the_same_name_stay_apart_and_deleting_the_one_in_use_loses_nothing(
    store, tmp_path, monkeypatch
):
    """A corrected re-upload has the same name and file count as the first: both are listed, each
    opens its own files, and deleting the dataset a session works on (or its folder vanishing)
    gives a message, never a traceback."""
    older = save_image_set(store, load_images(make_toy_folder(tmp_path / "v1", n_per_class=4, seed=1)), "flowers")
    time.sleep(1.1)  # listed by the second they were saved
    newer = save_image_set(store, load_images(make_toy_folder(tmp_path / "v2", n_per_class=4, seed=2)), "flowers")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/data.py").run()
    picker = next(s for s in at.selectbox if s.label == "Saved dataset")
    assert len(picker.options) == 2 and all(o.startswith("flowers (12 files, saved ") for o in picker.options)
    assert picker.options[0] != picker.options[1]  # told apart by when they were saved

    picker.select_index(1)  # the older one
    next(b for b in at.button if b.label == "Use it").click()
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["dataset"]["path"] == str(older)

    at.button(key="delete_dataset").click().run()  # the one in use
    assert not at.exception, at.exception
    assert len(at.success) == 1 and at.success[0].value.startswith("Deleted “flowers” (12 files, saved ")
    assert [Path(d["path"]) for d in list_datasets(store)] == [newer] and not older.exists()
    assert "No dataset yet" in at.info[0].value

    # The other one in use, then its folder goes (another tab deleted it, or it was moved).
    next(b for b in at.button if b.label == "Use it").click()
    at.run()
    assert at.session_state["dataset"]["path"] == str(newer)
    shutil.rmtree(newer)
    at.switch_page("app_pages/train.py").run()
    assert not at.exception, at.exception
    assert [w.value for w in at.warning][:1] == [
        "The dataset “flowers” is no longer on this server (deleted, or its folder moved or renamed). Load it "
        "again on the Data page."]
    assert "dataset" not in at.session_state


def test_a_dataset_that_a_queued_run_reads_cannot_be_deleted(store, tmp_path):
    saved = save_image_set(store, load_images(make_toy_folder(tmp_path / "toy", n_per_class=4)), "mine")
    run_id = submit(store, saved, FAST)
    with pytest.raises(DataError, match=r"^1 queued or running run\(s\) still read this dataset's files, so nothing "
                                        r"was deleted\. Let them finish \(or cancel them on the Train page\)"):
        delete_dataset(store, saved)
    assert saved.is_dir() and len(list_datasets(store)) == 1
    store.request_cancel(run_id)  # a queued run is cancelled at once
    assert store.get_run(run_id)["status"] == "cancelled"
    delete_dataset(store, saved)
    assert not saved.exists() and list_datasets(store) == []


def test_resuming_a_run_counts_against_the_queue_quota(tmp_path, monkeypatch):
    """A failed run queued again by Resume takes a place in its workspace's queue like a new one."""
    from tl_core.config import TrainConfig
    from tl_core.errors import QuotaError
    from tl_core.jobs import resume, submit
    from tl_core.store import RunStore, new_workspace_key

    monkeypatch.setenv("TL_QUOTA_QUEUED_RUNS", "1")
    monkeypatch.setenv("TL_RAY_ADDRESS", "")
    store = RunStore(tmp_path / "data")
    folder = tmp_path / "folder"
    folder.mkdir()
    ws = new_workspace_key()
    config = TrainConfig(strategy="feature_extractor", backbone="vgg16", weights="none", image_size=32)
    failed = submit(store, folder, config, workspace=ws)
    assert store.claim_next_queued() == failed
    store.finish(failed, "failed", error="The training worker stopped while this run was in progress.")
    submit(store, folder, config, workspace=ws)  # the workspace's one queued run
    with pytest.raises(QuotaError, match="at most 1"):
        resume(store, failed)
    assert store.get_run(failed)["status"] == "failed"
