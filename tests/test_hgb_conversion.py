"""Guard for the protobuf pin: skl2onnx must still convert tree ensembles.

skl2onnx 1.20's tree converters put Python bools into ``AttributeProto.ints``;
protobuf 6.33 only warns ("will be rejected in 7.34.0", a DeprecationWarning
that pytest's config ignores); protobuf 7 rejects it, so converting a
HistGradientBoostingClassifier fails. constraints.txt pins
protobuf 6.x for that reason; this test fails if the pin is lifted too early.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import HistGradientBoostingClassifier

from lifecycle.synthetic import FraudGenerator


def test_hist_gradient_boosting_converts_and_matches_predict_proba() -> None:
    X, y = FraudGenerator(21).sample(3_000)
    clf = HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=15, random_state=0)
    clf.fit(X, y)
    model = to_onnx(
        clf,
        initial_types=[("features", FloatTensorType([None, X.shape[1]]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    assert any(node.op_type.startswith("TreeEnsemble") for node in model.graph.node)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    X_new, _ = FraudGenerator(22).sample(2_000)
    label, probabilities = session.run(None, {"features": X_new})
    assert probabilities.shape == (2_000, 2)
    assert np.max(np.abs(probabilities - clf.predict_proba(X_new))) <= 1e-4
    np.testing.assert_array_equal(label, clf.predict(X_new))
