"""One fact, one place: the advisor's thresholds and bench figures live in tl_core/advisor.py and
bench/results; the README's blocks, the Strategy page and the matrix picture are rendered from them."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO

from tl_core import advisor


def test_the_readme_facts_blocks_are_rendered_from_the_sources():
    done = subprocess.run([sys.executable, "bench/readme_facts.py", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _outside_blocks(text: str) -> str:
    return re.sub(r"<!-- facts:([\w-]+) -->.*?<!-- /facts:\1 -->", "", text, flags=re.S)


def test_no_literal_copy_of_an_advisor_threshold_or_anchor_outside_its_source():
    anchors = [f"{value:.2f}" for value in advisor.SIMILARITY_ANCHORS.values()]
    copies = [f"{advisor.SCRATCH_MIN_PER_CLASS:,} per class", f"{advisor.LARGE_MIN_PER_CLASS:,} per class",
              *[f"{name.split(' (')[0]} {value}" for name, value in zip(advisor.SIMILARITY_ANCHORS, anchors)],
              "photographs 0.89", "noise 0.12", "sample of up to 300", "at most 300 images"]
    files = [*REPO.glob("tl_core/**/*.py"), *REPO.glob("ui/*.py"), *REPO.glob("app_pages/*.py"), REPO / "README.md"]
    found = []
    for path in files:
        if path.name == "advisor.py":
            continue
        text = _outside_blocks(path.read_text())
        found += [f"{path.relative_to(REPO)}: {copy!r}" for copy in copies if copy in text]
    assert found == []


def test_the_bench_figures_come_from_the_results_file():
    assert advisor.BENCH["large"]["earlier_features"] > advisor.BENCH["large"]["scratch"]
    assert advisor._read_bench(REPO / "no such file.json") == {}
    assert str(advisor.BENCH_RESULTS).endswith("bench/results/advisor_vs_best.json")


def test_the_matrix_picture_and_the_page_use_the_thresholds():
    from tl_core import charts

    figure = charts.decision_matrix("large", "different")
    texts = " ".join(str(a.text) for a in figure.layout.annotations)
    assert f"{advisor.SCRATCH_MIN_PER_CLASS:,} per class" in texts
    page = (REPO / "app_pages" / "strategy.py").read_text()
    assert "anchors_sentence()" in page and "{SAMPLE_SIZE}" in page


def test_figures_quoted_inside_sentences_are_checked_against_their_source(monkeypatch):
    from tl_core.calibration import NOT_SURE_BELOW

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import readme_facts

    text = (REPO / "README.md").read_text()
    assert readme_facts.missing_phrases(text) == []
    quoted = f"when the top class is under {NOT_SURE_BELOW:.0%}"
    assert readme_facts.missing_phrases(text.replace(quoted, "when the top class is under 40%")) == [
        f"thresholds: {quoted}"]
    memory = readme_facts.memory_phrases()[0]  # e.g. "**1.54 GB** (server 0.24 GB, worker 1.31 GB)"
    assert readme_facts.missing_phrases(text.replace(memory, "**1.51 GB**")) == [f"memory: {memory}"]
