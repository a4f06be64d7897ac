"""The issue's "done when": two versions of ``fraud`` run an A/B test set from the CLI, and
an unmodified ``tritonclient`` sees the split and the stickiness (the ``x-routing-key``
header, or the ``routing_key`` request parameter)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc

from tests import onnx_models
from tests.admin.cli_support import OPERATOR_TOKEN, gateway_cli, ok
from tests.conftest import write_config
from tests.support.subprocess_gateway import SubprocessGateway

N = 1000


def test_tritonclient_sees_the_split_and_sticky_keys_of_a_cli_ab_test(
        tmp_path: Path, model_files: dict[str, Path]) -> None:
    config = write_config(
        tmp_path / "gateway.toml", {"fraud": model_files["logreg"]},
        f'[auth.tokens.ops]\ntoken = "{OPERATOR_TOKEN}"\nrole = "operator"\n')
    v2 = tmp_path / "fraud-v2.onnx"
    v2.write_bytes(onnx_models.logreg_like_model(seed=7))
    x = np.random.default_rng(5).normal(size=(1, 20)).astype(np.float32)

    with SubprocessGateway(config, tmp_path / "data", "--log-level", "WARNING") as gw:
        client = tc.InferenceServerClient(gw.grpc_address)

        def infer(**kw: object) -> tuple[str, str, str]:
            item = tc.InferInput("features", list(x.shape), "FP32")
            item.set_data_from_numpy(x)
            response = client.infer("fraud", [item], **kw).get_response()
            params = response.parameters
            return (response.model_version, params["routing_arm"].string_param,
                    params["experiment_id"].string_param)

        try:
            ok(gateway_cli(gw.admin_address, "register", "fraud", str(v2)))
            out = ok(gateway_cli(gw.admin_address, "traffic", "set", "fraud", "1=80", "2=20",
                                 "--sticky"))
            assert "split" in out
            answers = [infer() for _ in range(N)]
            versions = Counter(v for v, _, _ in answers)
            assert set(versions) == {"1", "2"}
            assert abs(versions["2"] / N - 0.20) <= 0.04, versions
            experiments = {e for _, _, e in answers}
            assert len(experiments) == 1 and experiments != {""}
            assert all(arm == version for version, arm, _ in answers)

            keys = [f"user-{i}" for i in range(100)]
            first = {k: infer(headers={"x-routing-key": k})[0] for k in keys}
            assert set(first.values()) == {"1", "2"}
            for _ in range(2):
                assert {k: infer(headers={"x-routing-key": k})[0] for k in keys} == first
            # The parameter and the header hash the same key the same way.
            assert {k: infer(parameters={"routing_key": k})[0] for k in keys} == first

            ok(gateway_cli(gw.admin_address, "traffic", "clear", "fraud"))
            assert {infer(headers={"x-routing-key": k})[:2] for k in keys[:20]} == {
                ("1", "production")}
        finally:
            client.close()
