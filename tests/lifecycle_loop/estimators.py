"""Estimators that misbehave on purpose, importable by the training child.

``CrashingLogisticRegression`` dies with ``os._exit(3)`` in ``fit`` while the file named
by ``$LIFECYCLE_TEST_CRASH_FLAG`` exists, and otherwise is a ``LogisticRegression``
(registered with skl2onnx as one, so a healthy run converts). ``SleepingClassifier``
sleeps in ``fit`` for ``$LIFECYCLE_TEST_SLEEP_S`` seconds (default 60).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from skl2onnx import update_registered_converter
from skl2onnx.operator_converters.linear_classifier import convert_sklearn_linear_classifier
from skl2onnx.shape_calculators.linear_classifier import (
    calculate_linear_classifier_output_shapes,
)
from sklearn.linear_model import LogisticRegression

CRASH_FLAG_ENV = "LIFECYCLE_TEST_CRASH_FLAG"
SLEEP_ENV = "LIFECYCLE_TEST_SLEEP_S"


class CrashingLogisticRegression(LogisticRegression):
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        flag = os.environ.get(CRASH_FLAG_ENV, "")
        if flag and Path(flag).exists():
            os._exit(3)
        return super().fit(X, y, sample_weight)


class SleepingClassifier(LogisticRegression):
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        time.sleep(float(os.environ.get(SLEEP_ENV, "60")))
        return super().fit(X, y, sample_weight)


update_registered_converter(
    CrashingLogisticRegression, "TestsCrashingLogisticRegression",
    calculate_linear_classifier_output_shapes, convert_sklearn_linear_classifier,
    options={"zipmap": [True, False, "columns"], "nocl": [True, False],
             "output_class_labels": [False, True], "raw_scores": [True, False]},
)
update_registered_converter(
    SleepingClassifier, "TestsSleepingClassifier",
    calculate_linear_classifier_output_shapes, convert_sklearn_linear_classifier,
    options={"zipmap": [True, False, "columns"], "nocl": [True, False],
             "output_class_labels": [False, True], "raw_scores": [True, False]},
)
