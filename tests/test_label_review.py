"""The Data page's review of likely label errors, with the real MobileNet features: find, decide, save a copy."""

from __future__ import annotations

from collections import Counter

from conftest import REPO, SHARED_WEIGHTS, make_toy_folder, needs_shared_weights
from streamlit.testing.v1 import AppTest

from tl_core.data import load_images


@needs_shared_weights
def test_the_data_page_finds_a_flipped_label_and_saves_a_corrected_copy(tmp_path, store, monkeypatch):
    monkeypatch.setenv("TL_WEIGHTS_DIR", str(SHARED_WEIGHTS))
    root = make_toy_folder(tmp_path / "toy", n_per_class=10)
    (root / "red" / "red_000.png").rename(root / "green" / "red_000.png")  # a red square labelled green
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.run()
    at.session_state["dataset"] = {"path": str(root), "name": "toy <b>x</b>"}
    at.switch_page("app_pages/data.py")
    at.run()
    next(b for b in at.button if b.label == "Look for label errors").click()
    at.run()
    assert not at.exception, at.exception
    decision = next(r for r in at.radio if r.key == "fix_green/red_000.png")  # found, among the first
    assert decision.options[1] == "Relabel as red"
    decision.set_value("red")
    next(b for b in at.button if b.label == "Save a corrected copy").click()
    at.run()
    assert not at.exception, at.exception
    saved = at.session_state["dataset"]
    assert saved["name"] == "toy <b>x</b> (corrected)" and saved["path"] != str(root)
    corrected = Counter(item.label for item in load_images(saved["path"]).items)
    assert corrected == {"blue": 10, "green": 10, "red": 10}  # the red square is red again (green had 11)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == before  # the original is untouched
