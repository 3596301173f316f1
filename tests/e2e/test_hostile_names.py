"""A stranger's class, file and dataset names are shown as text on every page, never as a link, an
image, HTML or Markdown: the rendered DOM of a real browser is searched for anything made from them."""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import toy_image, wait_for_status
from tl_core.config import TrainConfig
from tl_core.jobs import submit
from tl_core.store import RunStore

pytestmark = pytest.mark.e2e
TIMEOUT = 60_000

# Survives the upload sanitiser ('/' and ':' are written as HTML entities, which Markdown decodes).
EVIL_CLASS = ("![px](https&#58;&#47;&#47;evil.example&#47;track.png) "
              "[Verify your account](https&#58;&#47;&#47;evil.example&#47;login) **bold** :red[red]")
EVIL_FILE = "[click me](https&#58;&#47;&#47;evil.example&#47;file) _em_"
EVIL_ZIP = "[zip link](https&#58;&#47;&#47;evil.example&#47;zip) **bold**.zip"
PLAIN_CLASS = "plain"
# Names on disk (a local folder, or a run queued from the command line) may hold what an upload
# cannot: Plotly draws <b>, <i>, <br> and <a href> from text.
EVIL_HTML_CLASS = '<b>bold <i>em <br> <a href="https&#58;&#47;&#47;evil.example&#47;plot">plot link'

# Anything a renderer could make from the names: a link or image to the evil host, bold or italic
# made from their asterisks and underscores, a coloured span from the :red[...] directive.
FORBIDDEN = """() => {
  const hits = [];
  for (const el of document.querySelectorAll('a[href], img[src], image, [src], [href]')) {
    const url = el.getAttribute('href') || el.getAttribute('src') || el.getAttribute('xlink:href') || '';
    if (url.includes('evil')) hits.push(el.outerHTML.slice(0, 200));
  }
  for (const el of document.querySelectorAll('strong, b, em, i')) {
    if (['bold', 'em', 'red'].includes(el.textContent.trim())) hits.push(el.outerHTML.slice(0, 200));
  }
  for (const el of document.querySelectorAll('[class*="red"], [style*="color"]')) {
    if (el.textContent.trim() === 'red') hits.push(el.outerHTML.slice(0, 200));
  }
  for (const el of document.querySelectorAll('tspan[style*="bold"], tspan[style*="italic"]')) {
    const text = el.textContent;  // Plotly's <b> and <i> (its own titles are bold)
    if (text.includes('bold') || text.includes('em ') || text.includes('plot link')) hits.push(el.outerHTML.slice(0, 200));
  }
  return hits;
}"""


def _hostile_zip(path, n_per_class: int = 8):
    rng = np.random.default_rng(5)
    with zipfile.ZipFile(path, "w") as archive:
        for label, color in ((EVIL_CLASS, (210, 40, 40)), (PLAIN_CLASS, (40, 60, 210))):
            for i in range(n_per_class):
                image = toy_image(color, rng, 32)
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                name = f"{EVIL_FILE} {i}.png" if label == EVIL_CLASS else f"{label}_{i}.png"
                archive.writestr(f"{label}/{name}", buffer.getvalue())
        archive.writestr(f"{EVIL_CLASS}/{EVIL_FILE} broken.jpg", b"not an image at all")
    return path


def _hostile_folder(root, n_first: int, n: int = 8):
    """The names on disk, the first hostile class with ``n_first`` images (1: a run that fails).
    Pure noise: the model makes test mistakes, so the mistakes gallery has captions to show."""
    rng = np.random.default_rng(6)
    for label, count in ((EVIL_CLASS, n_first), (EVIL_HTML_CLASS, n), (PLAIN_CLASS, n)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            name = f"{EVIL_FILE} {i}.png" if label != PLAIN_CLASS else f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / label / name)
    return root


def _check(page, where: str) -> str:
    page.wait_for_timeout(1500)  # let the script finish and charts draw
    try:
        page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=30_000)
    except Exception:  # noqa: BLE001 - a live view may keep running; the DOM is searched anyway
        pass
    hits = page.evaluate(FORBIDDEN)
    assert not hits, f"{where}: elements made from a user's text: {hits}"
    return page.locator("body").inner_text()


def _nav(page, title: str) -> str:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=re.compile(title)).first.wait_for(timeout=TIMEOUT)
    return _check(page, title)


def test_hostile_names_are_shown_as_text_everywhere(hosted_server, browser, tmp_path, screenshot_dir):
    store = RunStore(hosted_server["data_dir"])
    archive = _hostile_zip(tmp_path / EVIL_ZIP)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(hosted_server["url"] + "/")
    page.get_by_role("heading", name=re.compile("Data")).first.wait_for(timeout=TIMEOUT)
    page.wait_for_url(re.compile(r"[?&]ws=[A-Za-z0-9_-]{22}"), timeout=TIMEOUT)
    ws = re.search(r"ws=([A-Za-z0-9_-]{22})", page.url).group(1)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(archive))
    page.get_by_text("Health of").wait_for(timeout=TIMEOUT)
    text = _check(page, "Data")
    assert "[zip link]" in text and "[Verify your account]" in text  # the names are there, as typed
    page.screenshot(path=str(screenshot_dir / "hostile_data.png"), full_page=True)

    # A run that succeeds (its mistakes gallery shares images) and one that fails quoting the class.
    good = submit(store, _hostile_folder(tmp_path / "good", 20, 20), TrainConfig(
        strategy="feature_extractor", backbone="vgg16", weights="none", image_size=32, batch_size=8),
        name=EVIL_ZIP, workspace=ws, share_images=True)
    bad = submit(store, _hostile_folder(tmp_path / "bad", 1), TrainConfig(
        strategy="feature_extractor", backbone="vgg16", weights="none", image_size=32, batch_size=8),
        name=EVIL_ZIP, workspace=ws, share_images=True)
    from tl_core.jobs import ensure_worker

    ensure_worker(store)
    assert wait_for_status(store, good, {"succeeded", "failed"})["status"] == "succeeded"
    failed = wait_for_status(store, bad, {"succeeded", "failed"})
    assert failed["status"] == "failed" and "evil.example" in failed["error"]

    for title in ("Strategy", "Train", "Runs", "Predict"):
        text = _nav(page, title)
        page.screenshot(path=str(screenshot_dir / f"hostile_{title.lower()}.png"), full_page=True)
        if title == "Runs":  # a run opens from its selected row, in this session, by a link without the key
            grid = page.get_by_test_id("stDataFrame").last.bounding_box()
            page.mouse.click(grid["x"] + 20, grid["y"] + 35 + 17)  # the first row's selection box
            opener = page.get_by_role("link", name=re.compile("Open the result of"))
            opener.wait_for(timeout=TIMEOUT)
            assert ws not in (opener.get_attribute("href") or "")
            opener.click()
            page.get_by_text("Share this result").wait_for(timeout=TIMEOUT)
            assert page.get_by_text("This address opens on this computer only").count() == 0  # hosted: it does not
            assert "run=" in page.url and ws not in page.url
    assert "[Verify your account]" in text  # Predict lists the classes, as typed

    # Public share pages of both runs, in a fresh browser (a stranger).
    stranger = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    for run_id, shot in ((good, "hostile_result.png"), (bad, "hostile_failed.png")):
        stranger.goto(f"{hosted_server['url']}/result?run={run_id}")
        stranger.get_by_role("heading").first.wait_for(timeout=TIMEOUT)
        text = _check(stranger, f"result {run_id}")
        stranger.screenshot(path=str(screenshot_dir / shot), full_page=True)
        assert "[Verify your account]" in text, text[:2000]
        for tab in ("Confusion matrix", "Per class", "Most confident mistakes"):
            stranger.get_by_role("tab", name=tab).click()
            text = _check(stranger, f"result {run_id}, {tab}")
            if run_id == good:
                stranger.screenshot(path=str(screenshot_dir / f"hostile_result_{tab.split()[-1].lower()}.png"),
                                    full_page=True)
                gallery = text
    assert "[click me]" in gallery  # the gallery's captions quote the file names, as typed
    stranger.close()
    page.close()
