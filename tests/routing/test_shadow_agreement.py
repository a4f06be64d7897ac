"""When a shadow's outputs count as agreeing with the primary's."""

from __future__ import annotations

import numpy as np

from gateway.shadow import outputs_agree
from gateway.types import InferOutput

PROBS = np.array([[0.25, 0.75]], dtype=np.float32)
LABEL = np.array([1], dtype=np.int64)
PRIMARY = [InferOutput("label", "INT64", LABEL), InferOutput("probabilities", "FP32", PROBS)]


def test_equal_labels_and_close_probabilities_agree() -> None:
    assert outputs_agree(PRIMARY, {"label": LABEL.copy(), "probabilities": PROBS + 5e-5})
    assert outputs_agree(PRIMARY, {"label": LABEL.copy(), "probabilities": PROBS * 1.0005})


def test_another_label_or_distant_probabilities_disagree() -> None:
    assert not outputs_agree(PRIMARY, {"label": np.array([0]), "probabilities": PROBS})
    assert not outputs_agree(PRIMARY, {"label": LABEL, "probabilities": PROBS + 0.01})
    assert not outputs_agree(PRIMARY, {"label": LABEL, "probabilities": PROBS.reshape(2, 1)})


def test_infinities_agree_with_themselves_and_nan_never_does() -> None:
    inf = np.array([[np.inf, -np.inf]], dtype=np.float32)
    nan = np.array([[np.nan, 1.0]], dtype=np.float32)
    assert outputs_agree([InferOutput("p", "FP32", inf)], {"p": inf.copy()})
    assert not outputs_agree([InferOutput("p", "FP32", inf)], {"p": -inf})
    assert not outputs_agree([InferOutput("p", "FP32", nan)], {"p": nan.copy()})


def test_outputs_only_one_side_has_are_ignored() -> None:
    assert outputs_agree(PRIMARY, {"label": LABEL.copy()})
