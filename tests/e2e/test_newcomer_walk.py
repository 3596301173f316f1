"""A newcomer's whole path in a real browser, with a screenshot of every step.

Without weights: clear guidance before any run is queued. With them: upload a zip -> its health ->
Strategy -> Compare strategies -> Runs (the best marked, filtered by dataset) -> Result of the best
run -> its share link in a fresh browser -> the model downloaded and its snippet run on a non-square
image -> Predict. Screenshots go to ``artifacts/screenshots/walk_*.png``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import zipfile

import pytest
from PIL import Image

from conftest import MOBILENET_NOTOP, SHARED, make_toy_folder, zip_folder
from tl_core.comparison import best_run
from tl_core.store import RunStore

from .conftest import _serve
from .test_browser import TIMEOUT, _choose, _fill_number, _goto_page, _settle

pytestmark = pytest.mark.e2e
CLIPART = SHARED / "datasets" / "clipart8"
CLASSES = sorted(p.name for p in CLIPART.iterdir() if p.is_dir()) if CLIPART.is_dir() else []
PER_CLASS = 30  # 240 images: a test split of 36, where a run's interval starts to mean something
FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture()
def offline_server(tmp_path_factory):
    """A fresh data folder on a machine with no ImageNet weights and no way to download them."""
    yield from _serve(tmp_path_factory.mktemp("walk-offline"), weights=False)


@pytest.fixture()
def walk_server(tmp_path_factory):
    yield from _serve(tmp_path_factory.mktemp("walk"))


def _shot(page, path) -> None:
    """The whole page once it has settled, with no tooltip left open under the mouse. Streamlit scrolls
    inside its main block, so the window is made as tall as that block for the picture."""
    page.mouse.move(0, 0)
    _settle(page)
    size = page.viewport_size
    height = page.evaluate("Math.max(...Array.from(document.querySelectorAll('[data-testid=stMain], "
                           "[data-testid=stAppViewContainer]')).map(e => e.scrollHeight), 0)")
    page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), 5000)})
    page.wait_for_timeout(800)  # charts redraw at the new size
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)


def _upload(page, archive) -> None:
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(archive))


def _clipart_zip(path) -> None:
    """clipart8's classes, PER_CLASS images each, in a zip under one top folder (as people zip)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in CLASSES:
            for image in sorted((CLIPART / name).iterdir())[:PER_CLASS]:
                archive.write(image, f"clipart/{name}/{image.name}")


def _wait_until_finished(store: RunStore, n_runs: int, timeout: float) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = store.list_runs()
        if len(runs) >= n_runs and all(r["status"] in FINISHED for r in runs):
            return runs
        time.sleep(3)
    pytest.fail(f"runs did not finish in {timeout:.0f} s: {[(r['id'][:6], r['status']) for r in store.list_runs()]}")


def test_without_weights_the_app_says_what_to_do_before_anything_is_queued(offline_server, browser, tmp_path,
                                                                          screenshot_dir):
    folder = make_toy_folder(tmp_path / "shapes", n_per_class=8)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # Offline, nothing may be fetched from elsewhere (a Material favicon is fetched from Google's fonts).
    elsewhere = []
    page.on("request", lambda r: elsewhere.append(r.url)
            if not r.url.startswith((offline_server["url"], "data:", "blob:")) else None)
    page.goto(offline_server["url"] + "/")
    page.get_by_role("heading", name=re.compile("Data")).first.wait_for(timeout=TIMEOUT)
    # A whole folder of class folders, straight from the browser (no zip), as Teachable Machine users do.
    page.get_by_role("tab", name="Upload a folder").click()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').nth(1).set_input_files(str(folder))
    page.get_by_role("button", name="Load these 24 files").click()
    page.get_by_text("Health of").wait_for(timeout=TIMEOUT)
    page.get_by_text("Health of “shapes”").wait_for(timeout=TIMEOUT)
    for name in ("red", "green", "blue"):
        page.get_by_text(name, exact=True).first.wait_for(timeout=TIMEOUT)

    _goto_page(page, "Strategy")  # measuring needs the weights: the page says how to get them
    page.get_by_text("The ImageNet weights of MobileNet v1 are not on this machine").wait_for(timeout=TIMEOUT)
    assert page.get_by_text("weights 'none'").count() == 0  # not the useless advice of training without them
    _shot(page, screenshot_dir / "walk_1_offline_strategy.png")

    _goto_page(page, "Train")  # the warning is there before any click, with the restart it needs
    warning = page.get_by_text("The ImageNet weights of MobileNet v1 are not on this machine")
    warning.wait_for(timeout=TIMEOUT)
    page.get_by_text(re.compile(r"TL_WEIGHTS_DIR=~/weights streamlit run app\.py")).first.wait_for(timeout=TIMEOUT)
    page.get_by_role("button", name="Train", exact=True).click()
    page.get_by_text("Not queued: it needs the ImageNet weights named above.").wait_for(timeout=TIMEOUT)
    page.get_by_role("button", name="Compare strategies").click()
    page.get_by_text("Not queued: it needs the ImageNet weights named above.").wait_for(timeout=TIMEOUT)
    assert page.get_by_text(re.compile(r"Queued \d+ run")).count() == 0
    _shot(page, screenshot_dir / "walk_2_offline_train.png")
    assert RunStore(offline_server["data_dir"]).list_runs() == []

    # Weights "none" needs nothing: it is queued (the settings are a form: they apply on a click).
    _choose(page, "Weights", "none")
    size = page.get_by_role("spinbutton", name="Image size (px)")
    size.fill("32")
    size.press("Enter")  # commits the value; it must not queue a run (Streamlit forms submit on Enter by default)
    page.wait_for_timeout(1500)
    assert RunStore(offline_server["data_dir"]).list_runs() == []
    page.get_by_role("button", name="Train", exact=True).click()
    page.get_by_text("Queued 1 run(s).").wait_for(timeout=TIMEOUT)
    assert page.get_by_text("The ImageNet weights of MobileNet v1 are not on this machine").count() == 0
    assert len(RunStore(offline_server["data_dir"]).list_runs()) == 1
    assert elsewhere == []
    page.close()


@pytest.mark.skipif(not MOBILENET_NOTOP.is_file() or not CLIPART.is_dir(),
                    reason="needs ../shared/weights (MobileNet ImageNet weights) and ../shared/datasets/clipart8")
def test_a_newcomer_walks_from_a_zip_to_a_shared_model_and_predictions(walk_server, browser, tmp_path, screenshot_dir):
    store = RunStore(walk_server["data_dir"])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(walk_server["url"] + "/")
    page.get_by_role("heading", name=re.compile("Data")).first.wait_for(timeout=TIMEOUT)

    # A first small dataset and one quick run on it, so that the Runs page has two datasets to filter.
    shapes = tmp_path / "shapes.zip"
    shapes.write_bytes(zip_folder(make_toy_folder(tmp_path / "shapes", n_per_class=8), prefix="shapes/"))
    _upload(page, shapes)
    page.get_by_text("Health of").wait_for(timeout=TIMEOUT)
    _goto_page(page, "Train")
    _choose(page, "Weights", "none")
    _fill_number(page, "Image size (px)", "32")
    page.get_by_role("button", name="Train", exact=True).click()
    page.get_by_text("Queued 1 run(s).").wait_for(timeout=TIMEOUT)
    _wait_until_finished(store, 1, 300)

    # 1. Upload a zip: it loads at once and its health report shows.
    archive = tmp_path / "clipart.zip"
    _clipart_zip(archive)
    _goto_page(page, "Data")
    _upload(page, archive)
    page.get_by_text("Health of").wait_for(timeout=TIMEOUT)
    for name in CLASSES:  # the images-per-class chart's axis
        page.get_by_text(name, exact=True).first.wait_for(timeout=TIMEOUT)
    _shot(page, screenshot_dir / "walk_3_data.png")

    # 2. Strategy: measured with the real MobileNet, a recommendation with its reasons.
    _goto_page(page, "Strategy")
    page.get_by_text("Similarity to ImageNet").first.wait_for(timeout=180_000)
    page.get_by_text("Recommended:").wait_for(timeout=TIMEOUT)
    _shot(page, screenshot_dir / "walk_4_strategy.png")

    # 3. Compare strategies, kept small for a 2-core machine: 128 px, 2 + 1 epochs, one costly split.
    _goto_page(page, "Train")
    page.get_by_text("Dataset: clipart").first.wait_for(timeout=TIMEOUT)
    _fill_number(page, "Image size (px)", "128")
    page.get_by_text("Fine-tuning and training settings").click()
    _fill_number(page, "Stage 1 epochs", "2")
    _fill_number(page, "Stage 2 epochs", "1")
    _fill_number(page, "Comparison: splits for fine-tuning and from scratch", "1")
    page.get_by_role("button", name="Compare strategies").click()
    queued = page.get_by_text(re.compile(r"^Queued \d+ run\(s\)\.$"))
    queued.wait_for(timeout=TIMEOUT)
    n_planned = int(re.search(r"\d+", queued.inner_text())[0])
    # The plan, said beside the button: both heads on the free splits, the costly strategies on one.
    plan = page.get_by_text(re.compile(r"^Compare queues \d+ runs:")).inner_text()
    assert plan.startswith(f"Compare queues {n_planned} runs:") and n_planned == 2 * 5 + 1 + 1, plan
    runs = _wait_until_finished(store, 1 + n_planned, 1500)
    assert [r["status"] for r in runs].count("succeeded") == len(runs), [(r["status"], r.get("error")) for r in runs]
    page.get_by_text(re.compile(r"✅ .* test accuracy")).first.wait_for(timeout=TIMEOUT)
    _shot(page, screenshot_dir / "walk_5_train.png")

    # 4. Runs: filtered to the current dataset, the comparison's verdicts, the best run marked.
    _goto_page(page, "Runs")
    page.get_by_text("Strategy comparisons").wait_for(timeout=TIMEOUT)
    filter_box = page.get_by_test_id("stMultiSelect").filter(has_text="Datasets")
    assert "clipart" in filter_box.inner_text() and "shapes" not in filter_box.inner_text()
    page.get_by_text(re.compile(r"(better than|no measurable difference)")).first.wait_for(timeout=TIMEOUT)
    table = page.get_by_test_id("stDataFrame").last
    table.wait_for(timeout=TIMEOUT)
    _shot(page, screenshot_dir / "walk_6_runs.png")
    best = best_run([r for r in store.list_runs() if r["status"] in FINISHED])
    assert best["name"] == "clipart" and best["status"] == "succeeded"

    # 5. Result opens on the best run.
    _goto_page(page, "Result")
    picker = page.get_by_role("combobox", name="Run")
    picker.wait_for(timeout=TIMEOUT)
    shown = picker.evaluate("box => box.value || box.innerText || box.getAttribute('aria-label')")
    assert shown.endswith("· best"), shown  # it opens on the best run
    page.get_by_test_id("stBaseButton-primary").filter(has_text="Open").click()
    page.get_by_text("Share this result").wait_for(timeout=TIMEOUT)
    share_url = page.locator('[data-testid="stCode"]').first.inner_text().strip()
    assert share_url.endswith(f"/result?run={best['id']}"), share_url
    _shot(page, screenshot_dir / "walk_7_result.png")

    # 6. The share link in a fresh browser (no session): the same result, and the model to take home.
    fresh = browser.new_context(viewport={"width": 1400, "height": 1000})
    shared = fresh.new_page()
    shared.goto(share_url)
    shared.get_by_text("Test accuracy").first.wait_for(timeout=TIMEOUT)
    assert shared.locator('[data-testid="stMetricValue"]').first.inner_text() == f"{best['metrics']['test_accuracy']:.1%}"
    _shot(shared, screenshot_dir / "walk_8_shared.png")
    shared.get_by_text("Use the downloaded model in Python").click()  # the snippet, as a visitor opens it
    snippet = shared.locator('[data-testid="stCode"]').filter(has_text="load_model").first.inner_text()
    with shared.expect_download() as download:
        shared.get_by_role("button", name="Download the model (.zip)").click()
    name = re.search(r'"(model-[^"]+\.zip)"', snippet or "")[1]
    download.value.save_as(tmp_path / name)
    fresh.close()

    # 7. The snippet, as shown, on the user's own picture: a non-square clip art with transparency, as
    # a PNG (the snippet names photo.jpg; a user puts their file's name there).
    art = Image.open(sorted((CLIPART / "fruit").iterdir())[-1]).convert("RGBA")
    art.resize((307, 172)).save(tmp_path / "photo.png")
    (tmp_path / "use.py").write_text(snippet.replace("photo.jpg", "photo.png"))
    proc = subprocess.run([sys.executable, "use.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"(\w+) \(\d+%\)", printed) and printed.split(" ")[0] in CLASSES, printed

    # 8. Predict opens on the best run too: the same picture gets the snippet's class, and two more
    # pictures from outside the training zip get theirs.
    _goto_page(page, "Predict")
    model_picker = page.get_by_role("combobox", name="Model")
    model_picker.wait_for(timeout=TIMEOUT)
    assert model_picker.evaluate("box => box.value").endswith("· best")
    pictures = [tmp_path / "photo.png"] + [sorted((CLIPART / name).iterdir())[-1] for name in ("mammals", "music")]
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files([str(p) for p in pictures])
    verdicts = page.get_by_text(re.compile(rf"^({'|'.join(CLASSES)}) \(\d+%\)$"))
    verdicts.nth(2).wait_for(timeout=TIMEOUT)
    assert verdicts.first.inner_text().split(" ")[0] == printed.split(" ")[0]  # the app and the download agree
    _shot(page, screenshot_dir / "walk_9_predict.png")
    page.close()
