"""Test-split metrics against values worked out by hand."""

import numpy as np
import pytest

from tl_core.metrics import evaluate


def test_metrics_match_a_hand_computed_case():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.3, 0.1, 0.6], [0.95, 0.0, 0.05]]
    )
    m = evaluate(y_true, probabilities, ["a", "b", "c"], [f"f{i}" for i in range(6)])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
    assert [x["file"] for x in m["top_mistakes"]] == ["f5", "f1"]  # most confident first
    assert m["top_mistakes"][0] == {"file": "f5", "true": "c", "predicted": "a", "probability": 0.95}
