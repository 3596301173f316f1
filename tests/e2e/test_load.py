"""Load: five visitors of a hosted app at once, in five real browser contexts.

Each uploads a dataset and starts a job. Every job completes (one at a time), each visitor sees
only their own runs, and pages render within 2 seconds while the worker trains: 95% of the page
runs the server makes in that time (its own measure, ``TL_RENDER_LOG``; median under 0.5 s), and
the median page as the browser shows it (the five browser tabs share this machine's 2 cores with
the server and the worker, so their slowest paint measures the test rig as much as the app).
"""

from __future__ import annotations

import json
import re
import time

import pytest

from conftest import REPO, make_toy_folder, zip_folder
from tl_core.store import RunStore

PlaywrightTimeout = pytest.importorskip("playwright.sync_api").TimeoutError
SCREENSHOTS = REPO / "artifacts" / "screenshots"
pytestmark = pytest.mark.e2e
TIMEOUT = 60_000
VISITORS = 5
RENDER_LIMIT_S = 2.0


# What shows that each page has rendered its content, not just its title.
CONTENT = {"Runs": '[data-testid="stDataFrame"], [data-testid^="stAlert"]', "Train": '[data-testid="stFormSubmitButton"]'}


def _nav(page, title: str) -> float:
    """Click a page in the sidebar; seconds until its heading and its main content are shown.

    On a timeout the tab is saved (``artifacts/screenshots/load-timeout-<page>.png`` and ``.html``)
    before the error goes on: what the browser showed is what tells a lost click from a stuck server.
    """
    start = time.perf_counter()
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    try:
        page.get_by_role("heading", name=re.compile(title)).first.wait_for(timeout=TIMEOUT)
        page.locator(CONTENT[title]).first.wait_for(timeout=TIMEOUT)
    except PlaywrightTimeout:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"load-timeout-{title}.png"), full_page=True)
        (SCREENSHOTS / f"load-timeout-{title}.html").write_text(page.content(), encoding="utf-8")
        raise
    return time.perf_counter() - start


def _choose(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option, exact=True).click()


def test_five_visitors_at_once(hosted_server, browser, tmp_path, screenshot_dir):
    store = RunStore(hosted_server["data_dir"])
    visitors = []
    for i in range(VISITORS):
        archive = tmp_path / f"set{i}.zip"
        archive.write_bytes(zip_folder(make_toy_folder(tmp_path / f"set{i}", n_per_class=8, size=32, seed=i)))
        context = browser.new_context(viewport={"width": 1300, "height": 900})
        page = context.new_page()
        page.goto(hosted_server["url"] + "/")
        visitors.append({"page": page, "context": context, "archive": archive, "name": f"set{i}"})
    for v in visitors:  # five sessions open at the same time, each in its own private workspace
        v["page"].get_by_role("heading", name=re.compile("Data")).first.wait_for(timeout=TIMEOUT)
        v["page"].wait_for_url(re.compile(r"[?&]ws=[A-Za-z0-9_-]{22}"), timeout=TIMEOUT)
        v["ws"] = re.search(r"ws=([A-Za-z0-9_-]{22})", v["page"].url).group(1)
    assert len({v["ws"] for v in visitors}) == VISITORS

    for v in visitors:
        v["page"].locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(v["archive"]))
    for v in visitors:
        v["page"].get_by_text("Health of").wait_for(timeout=TIMEOUT)
    idle = [_nav(v["page"], page) for v in visitors[:2] for page in ("Runs", "Train")]  # nothing training yet
    for v in visitors:
        _nav(v["page"], "Train")
        _choose(v["page"], "Backbone", "VGG16")
        _choose(v["page"], "Weights", "none")
        box = v["page"].get_by_role("spinbutton", name="Image size (px)")
        box.fill("32")
        box.press("Tab")
    for v in visitors:  # the five jobs are queued within seconds of each other
        v["page"].get_by_role("button", name="Train", exact=True).click()
    for v in visitors:
        v["page"].get_by_text("Queued 1 run(s).").wait_for(timeout=TIMEOUT)
    assert all(r["config"]["train"]["backbone"] == "vgg16" for r in store.list_runs())  # the settings stuck
    for v in visitors:
        v["run"] = next(r["id"] for r in store.list_runs() if r["workspace"] == v["ws"])

    # While the worker trains: every visitor's pages still render quickly.
    renders, most_running, training = [], 0, []
    deadline = time.time() + 600
    while time.time() < deadline:
        runs = store.list_runs()
        running = sum(r["status"] == "running" for r in runs)
        most_running = max(most_running, running)
        if running:
            start = time.time()
            for v in visitors[:2]:
                renders += [_nav(v["page"], title) for title in ("Runs", "Train")]
                # The live panel and the queue show this visitor's run only (labels end in its id's start).
                text = v["page"].locator("body").inner_text()
                assert not [o["run"][:4] for o in visitors if o is not v and f"· {o['run'][:4]}" in text]
            if sum(r["status"] == "running" for r in store.list_runs()):
                training.append((start, time.time()))
        if all(r["status"] in ("succeeded", "failed", "cancelled") for r in runs):
            break
        time.sleep(0.2)
    runs = store.list_runs()
    assert len(runs) == VISITORS and all(r["status"] == "succeeded" for r in runs), [r.get("error") for r in runs]
    assert most_running == 1  # queued, one at a time
    assert renders and training

    log = [json.loads(line) for line in (hosted_server["data_dir"] / "renders.jsonl").read_text().splitlines()]
    server = [e["seconds"] for e in log if any(a <= e["at"] <= b for a, b in training)]
    median = sorted(renders)[len(renders) // 2]
    print(f"\nwhile training: {len(server)} page runs on the server, slowest {max(server):.2f} s; "
          f"{len(renders)} pages in the browser, median {median:.2f} s, slowest {max(renders):.2f} s; "
          f"idle browser: median {sorted(idle)[len(idle) // 2]:.2f} s, slowest {max(idle):.2f} s")
    # Every page the server renders shares one Python process (and here 2 cores with five browsers
    # and the worker): the criterion is on 95% of them; the slowest is printed and reported.
    server.sort()
    assert server and server[int(0.95 * (len(server) - 1))] < RENDER_LIMIT_S, server
    assert server[len(server) // 2] < RENDER_LIMIT_S / 4, server
    assert median < RENDER_LIMIT_S, renders

    # Each visitor sees exactly their own run and nobody else's.
    for v in visitors:
        _nav(v["page"], "Train")
        finished = v["page"].get_by_text(re.compile(r"✅ .* on set\d — test accuracy"))
        finished.first.wait_for(timeout=TIMEOUT)
        assert [re.search(r" on (set\d) ", t).group(1) for t in finished.all_inner_texts()] == [v["name"]]
        owned = [r for r in runs if r["workspace"] == v["ws"]]
        assert [r["name"] for r in owned] == [v["name"]]
    visitors[0]["page"].screenshot(path=str(screenshot_dir / "hosted_runs.png"), full_page=True)
    for v in visitors:
        v["context"].close()
