"""The issue's "done when": an ONNX file trained elsewhere is registered, promoted and
answers an unmodified ``tritonclient``, then is rolled back, all from the ``gateway`` CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as tc

from tests import onnx_models
from tests.admin.cli_support import OPERATOR_TOKEN, gateway_cli, ok
from tests.conftest import write_config
from tests.support.subprocess_gateway import SubprocessGateway


def test_register_promote_rollback_seen_by_tritonclient(
        tmp_path: Path, model_files: dict[str, Path]) -> None:
    config = write_config(
        tmp_path / "gateway.toml", {"fraud": model_files["logreg"]},
        f'[auth.tokens.ops]\ntoken = "{OPERATOR_TOKEN}"\nrole = "operator"\n')
    trained_elsewhere = tmp_path / "fraud-v2.onnx"
    trained_elsewhere.write_bytes(onnx_models.logreg_like_model(seed=7))
    x = np.random.default_rng(5).normal(size=(6, 20)).astype(np.float32)

    with SubprocessGateway(config, tmp_path / "data") as gw:
        client = tc.InferenceServerClient(gw.grpc_address)

        def predict() -> tuple[str, np.ndarray]:
            item = tc.InferInput("features", list(x.shape), "FP32")
            item.set_data_from_numpy(x)
            result = client.infer("fraud", [item])
            return result.get_response().model_version, result.as_numpy("probabilities")

        try:
            version, before = predict()
            assert version == "1"
            ok(gateway_cli(gw.admin_address, "register", "fraud", str(trained_elsewhere)))
            assert ok(gateway_cli(gw.admin_address, "promote", "fraud", "2")) == (
                "fraud: production 1 -> 2\n")
            version, after = predict()
            (expected,) = ort.InferenceSession(str(trained_elsewhere)).run(
                ["probabilities"], {"features": x})
            assert version == "2"
            np.testing.assert_allclose(after, expected, atol=1e-6)
            assert not np.allclose(after, before)
            ok(gateway_cli(gw.admin_address, "rollback", "fraud"))
            version, rolled_back = predict()
            assert version == "1"
            np.testing.assert_array_equal(rolled_back, before)
        finally:
            client.close()
