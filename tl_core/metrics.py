"""Evaluation on the held-out test split: the numbers a user compares runs by."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def evaluate(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    names: list[str] | None = None,
    n_mistakes: int = 12,
) -> dict[str, Any]:
    """Accuracy, macro F1, per-class scores, the confusion matrix and the most confident mistakes.

    Args:
        y_true: class index per test image.
        probabilities: ``(n, k)`` predicted probabilities.
        class_names: the label of each class index.
        names: display name per test image (for the list of mistakes).
        n_mistakes: how many of the most confident wrong predictions to keep.
    """
    y_true = np.asarray(y_true)
    y_pred = probabilities.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    confidence = probabilities[np.arange(len(y_pred)), y_pred]
    wrong = np.flatnonzero(y_pred != y_true)
    wrong = wrong[np.argsort(-confidence[wrong])][:n_mistakes]
    names = names or [str(i) for i in range(len(y_true))]
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n_test": int(len(y_true)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "top_mistakes": [
            {
                "file": names[i],
                "true": class_names[y_true[i]],
                "predicted": class_names[y_pred[i]],
                "probability": float(confidence[i]),
            }
            for i in wrong
        ],
    }
