"""The fast subset that ``.ci/run`` also runs on the declared minimum versions (``-m smoke``).

Every module imports, each strategy trains one tiny run through the real engine, one export is
written and checked, and every page renders under AppTest. A library older than its floor in
``requirements.txt`` that lacks an API the code uses fails here.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from conftest import REPO, make_toy_folder
from streamlit.testing.v1 import AppTest

import tl_core
from tl_core.config import TrainConfig
from tl_core.export import export_run
from tl_core.runner import run_training

pytestmark = pytest.mark.smoke

TINY = dict(backbone="vgg16", weights="none", image_size=32, batch_size=8)


def test_every_engine_and_ui_module_imports():
    names = [f"tl_core.{m.name}" for m in pkgutil.iter_modules(tl_core.__path__)]
    names += [f"ui.{path.stem}" for path in sorted((REPO / "ui").glob("*.py")) if path.stem != "__init__"]
    assert "tl_core.runner" in names and "ui.state" in names
    for name in names:
        importlib.import_module(name)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_folder(tmp_path_factory.mktemp("smoke"), n_per_class=16)


@pytest.mark.parametrize(
    "settings",
    [
        dict(strategy="feature_extractor", head="ovr"),
        dict(strategy="finetune", epochs=2, fine_tune_epochs=1, unfreeze_blocks=1, dense_units=16),
        dict(strategy="scratch", epochs=2),
    ],
    ids=["feature_extractor", "two_stage", "scratch"],
)
def test_each_strategy_trains_a_tiny_run(settings, toy, store):
    run = run_training(toy, TrainConfig(**TINY, **settings), store=store)
    assert run["status"] == "succeeded", run["error"]
    assert 0.0 <= run["metrics"]["test_accuracy"] <= 1.0
    if settings["strategy"] == "feature_extractor":
        assert run["metrics"]["test_accuracy"] >= 0.6  # 3 colour classes: chance is 1/3
    else:
        assert run["epochs"], "no epoch was recorded"


def test_an_export_is_written_and_checked(toy, store, tmp_path):
    run = run_training(toy, TrainConfig(strategy="feature_extractor", **TINY), store=store)
    assert run["status"] == "succeeded", run["error"]
    result = export_run(run, "keras", tmp_path / "model.keras")
    assert result["passed"] and result["agreement"] >= 0.99
    assert (tmp_path / "model.keras").is_file() and (tmp_path / "model.keras.card.md").is_file()


@pytest.mark.parametrize("page", ["data", "strategy", "train", "runs", "result", "predict"])
def test_every_page_renders(page, store):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert not at.exception, at.exception


def test_label_errors_are_ranked_with_the_installed_cleanlab():
    import numpy as np

    from tl_core.label_issues import find_label_issues

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = rng.normal(0, 4, (3, 32))[y] + rng.normal(0, 1, (90, 32))  # three clusters
    noisy = y.copy()
    noisy[[0, 30]] = [1, 2]
    issues = find_label_issues(x, noisy, ["a", "b", "c"], [f"{i}.png" for i in range(90)])
    assert {"0.png", "30.png"} <= {issue.file for issue in issues[:4]}
