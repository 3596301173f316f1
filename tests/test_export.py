"""The self-contained HTML report of a run."""

from tl_core.config import TrainConfig
from tl_core.export import html_report, model_file
from tl_core.runner import run_training


def test_html_report_is_self_contained_and_carries_the_figures(toy_folder, store):
    run = run_training(toy_folder, TrainConfig(backbone="vgg16", weights="none", image_size=32), store=store)
    html = html_report(run)
    assert html.startswith("<!doctype html>")
    assert f"{run['metrics']['test_accuracy']:.1%}" in html
    assert "Confusion matrix" in html and "plotly" in html.lower()
    assert "<script src=\"http" not in html  # Plotly is inlined: the file works offline
    assert model_file(run).name == "model.keras"
    failed = {**run, "status": "failed"}
    assert model_file(failed) is None
