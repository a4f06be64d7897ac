"""Ask the demo gateway for `fraud` predictions with an unmodified tritonclient.

    .venv/bin/python examples/predict_fraud.py [--url 127.0.0.1:8001]
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.grpc as tc

from lifecycle.synthetic import FraudGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--rows", type=int, default=5)
    args = parser.parse_args()
    features, labels = FraudGenerator(seed=42).sample(args.rows)
    item = tc.InferInput("features", list(features.shape), "FP32")
    item.set_data_from_numpy(features)
    with tc.InferenceServerClient(args.url) as client:
        result = client.infer("fraud", [item])
    response = result.get_response()
    print(f"model fraud, version {response.model_version}, request id {response.id}")
    for row, (label, proba, truth) in enumerate(
        zip(result.as_numpy("label"), result.as_numpy("probabilities"), labels, strict=True)
    ):
        print(f"row {row}: label={label} p(fraud)={proba[1]:.3f} (true label {truth})")
    np.testing.assert_equal(len(result.as_numpy("label")), args.rows)


if __name__ == "__main__":
    main()
