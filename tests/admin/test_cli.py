"""The ``gateway`` CLI as subprocesses against a ``gateway serve`` subprocess."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from gateway.cli.main import main
from tests import onnx_models
from tests.admin.cli_support import failed, gateway_cli, ok
from tests.admin.helpers import OPERATOR_TOKEN, READER_TOKEN, infer
from tests.conftest import write_config
from tests.support.subprocess_gateway import SubprocessGateway

AUTH = (f'[auth.tokens.ops]\ntoken = "{OPERATOR_TOKEN}"\nrole = "operator"\n'
        f'[auth.tokens.viewer]\ntoken = "{READER_TOKEN}"\nrole = "reader"\n')


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           model_files: dict[str, Path]) -> Iterator[SubprocessGateway]:
    root = tmp_path_factory.mktemp("cli")
    config = write_config(root / "gateway.toml", {"fraud": model_files["logreg"]}, AUTH)
    with SubprocessGateway(config, root / "data") as gw:
        yield gw


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ONNX files "trained elsewhere": fraud-shaped ones, another signature, garbage."""
    root = tmp_path_factory.mktemp("files")
    files = {f"fraud{seed}": onnx_models.logreg_like_model(seed=seed) for seed in (7, 11, 13)}
    files["two_out"] = onnx_models.two_output_model()
    files["garbage"] = b"this is not onnx" * 10
    files["empty"] = b""
    paths = {}
    for name, data in files.items():
        paths[name] = root / f"{name}.onnx"
        paths[name].write_bytes(data)
    return paths


def test_help_at_every_level(capsys: pytest.CaptureFixture[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for command in ("serve", "models", "versions", "register", "promote", "rollback", "alias",
                    "archive", "load", "unload", "events", "loadtest"):
        assert f"\n    {command} " in result.stdout
    paths = [["models"], ["models", "list"], ["models", "show"], ["versions"],
             ["versions", "list"], ["versions", "show"], ["versions", "download"],
             ["register"], ["promote"], ["rollback"], ["alias"], ["archive"], ["load"],
             ["unload"], ["events"], ["serve"]]
    for path in paths:
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: gateway {' '.join(path)} "), out
        if path not in (["models"], ["versions"], ["serve"]):
            assert "--target TARGET" in out and "--json" in out


def test_register_promote_infer_rollback_end_to_end(
        served: SubprocessGateway, onnx_files: dict[str, Path]) -> None:
    """The README walkthrough: a file trained elsewhere becomes production, then is rolled
    back, all from the CLI, while a V2 client watches which version answers."""
    target = served.admin_address
    path = onnx_files["fraud7"]
    out = ok(gateway_cli(target, "register", "fraud", str(path), "--description", "seed 7",
                         "--tag", "candidate", "--metric", "auc=0.93", "--param", "C=0.1",
                         "--param", "solver=lbfgs"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert out == (f"registered fraud version 2 ({path.stat().st_size} bytes, "
                   f"sha256 {digest})\n")
    assert infer(served.grpc_address, "fraud").model_version == "1"

    assert ok(gateway_cli(target, "promote", "fraud", "2")) == "fraud: production 1 -> 2\n"
    response = infer(served.grpc_address, "fraud", rows=4)
    assert response.model_version == "2"
    x = np.random.default_rng(0).normal(size=(4, 20)).astype(np.float32)
    (expected,) = ort.InferenceSession(str(path)).run(["probabilities"], {"features": x})
    index = [o.name for o in response.outputs].index("probabilities")
    got = np.frombuffer(response.raw_output_contents[index], dtype=np.float32).reshape(4, 2)
    np.testing.assert_allclose(got, expected, atol=1e-6)

    assert ok(gateway_cli(target, "rollback", "fraud")) == (
        "fraud: production 2 -> 1 (rolled back)\n")
    assert infer(served.grpc_address, "fraud").model_version == "1"
    error = failed(gateway_cli(target, "rollback", "fraud"))
    assert error == ("gateway: error: FAILED_PRECONDITION: alias 'production' of model "
                     "'fraud' has no earlier version to roll back to")

    events = ok(gateway_cli(target, "events", "--model", "fraud")).splitlines()
    assert events[0].split()[:2] == ["ID", "TIME"]
    actions = [line.split()[3] for line in events[1:]]
    assert actions[:3] == ["alias.rollback", "alias.set", "version.register"]
    assert events[1].split()[2] == "ops"


def test_json_output_uses_proto_names_and_integer_versions(
        served: SubprocessGateway, onnx_files: dict[str, Path]) -> None:
    target = served.admin_address
    registered = json.loads(ok(gateway_cli(
        target, "register", "jsonmodel", str(onnx_files["fraud11"]), "--json",
        "--metric", "auc=0.9", "--tag", "a")))
    assert registered["created"] is True and registered["model_created"] is True
    version = registered["version"]
    assert version["version"] == 1 and isinstance(version["size_bytes"], int)
    assert version["metrics"] == {"auc": 0.9} and version["tags"] == ["a"]
    assert datetime.fromisoformat(version["create_time"]).tzinfo is not None

    change = json.loads(ok(gateway_cli(target, "promote", "jsonmodel", "1", "--json")))
    assert change == {"model": "jsonmodel", "alias": "production", "version": 1}
    models = json.loads(ok(gateway_cli(target, "models", "list", "--json")))
    model = next(m for m in models if m["name"] == "jsonmodel")
    assert model["aliases"] == {"production": 1} and model["served_version"] == 1
    assert model["loads"][0]["state"] == "LOAD_STATE_LOADED"
    assert model["signature"]["inputs"] == [
        {"name": "features", "datatype": "FP32", "shape": [-1, 20]}]
    shown = json.loads(ok(gateway_cli(target, "versions", "show", "jsonmodel", "1",
                                      "--json")))
    assert shown["aliases"] == ["production"] and shown["load"]["production"] is True
    listed = json.loads(ok(gateway_cli(target, "versions", "list", "jsonmodel", "--json")))
    assert [v["version"] for v in listed] == [1]
    events = json.loads(ok(gateway_cli(target, "events", "--model", "jsonmodel", "--json")))
    assert events[0]["action"] == "alias.set" and events[0]["after"] == 1
    assert events[0]["before"] is None and isinstance(events[0]["id"], int)


def test_versions_list_show_download_archive_load_unload(
        served: SubprocessGateway, onnx_files: dict[str, Path], tmp_path: Path) -> None:
    target = served.admin_address
    for seed, tag in ((7, "base"), (11, "cand"), (13, "cand")):
        ok(gateway_cli(target, "register", "vers", str(onnx_files[f"fraud{seed}"]),
                       "--tag", tag, "--description", f"seed {seed}"))
    ok(gateway_cli(target, "promote", "vers", "1"))
    table = ok(gateway_cli(target, "versions", "list", "vers", "--tag", "cand"))
    rows = [line.split() for line in table.splitlines()]
    assert rows[0][:4] == ["VERSION", "STATUS", "ALIASES", "LOAD"]
    assert [r[0] for r in rows[1:]] == ["2", "3"]
    table = ok(gateway_cli(target, "versions", "list", "vers", "--text", "seed 7"))
    assert [line.split()[:3] for line in table.splitlines()[1:]] == [
        ["1", "registered", "production"]]

    shown = ok(gateway_cli(target, "versions", "show", "vers", "2"))
    assert "tags:" in shown and "cand" in shown and "registered by:  ops" in shown

    out = tmp_path / "v2.onnx"
    said = ok(gateway_cli(target, "versions", "download", "vers", "2", "-o", str(out)))
    assert out.read_bytes() == onnx_files["fraud11"].read_bytes()
    assert said.startswith(f"wrote {out}: vers version 2") and "(verified)" in said

    assert ok(gateway_cli(target, "load", "vers", "2")) == "vers version 2: loaded (explicit)\n"
    assert infer(served.grpc_address, "vers", "2").model_version == "2"
    assert ok(gateway_cli(target, "unload", "vers", "2")) == "vers version 2: not loaded\n"
    assert ok(gateway_cli(target, "archive", "vers", "3", "--reason", "worse")) == (
        "vers version 3: archived\n")
    error = failed(gateway_cli(target, "archive", "vers", "1"))
    assert error.startswith("gateway: error: FAILED_PRECONDITION: version 1 of model 'vers' "
                            "is aliased as production")
    assert ok(gateway_cli(target, "alias", "vers", "staging", "2")) == "vers: staging - -> 2\n"
    shown = ok(gateway_cli(target, "models", "show", "vers"))
    assert "production=1, staging=2" in shown and "served version:  1" in shown


def test_errors_exit_nonzero_with_the_servers_message(
        served: SubprocessGateway, onnx_files: dict[str, Path]) -> None:
    target = served.admin_address
    cases = [
        (["models", "show", "nope"], OPERATOR_TOKEN, "NOT_FOUND: model 'nope' not found"),
        (["versions", "show", "fraud", "99"], OPERATOR_TOKEN,
         "NOT_FOUND: version 99 of model 'fraud' not found"),
        (["promote", "fraud", "1"], READER_TOKEN,
         "PERMISSION_DENIED: token 'viewer' has role 'reader'; this needs 'operator'"),
        (["models", "list"], None,
         "UNAUTHENTICATED: missing 'authorization: Bearer <token>' metadata"),
        (["models", "list"], "wrong", "UNAUTHENTICATED: invalid token"),
        (["register", "fraud", str(onnx_files["two_out"])], OPERATOR_TOKEN,
         "INVALID_ARGUMENT: signature does not match the model's: input names differ: "
         "expected ['features'], got ['a']"),
        (["register", "fraud", str(onnx_files["garbage"])], OPERATOR_TOKEN,
         "INVALID_ARGUMENT: not an ONNX model"),
        (["register", "fraud", str(onnx_files["empty"])], OPERATOR_TOKEN,
         "INVALID_ARGUMENT: the upload is empty"),
        (["register", "fraud", "/no/such/file.onnx"], OPERATOR_TOKEN,
         "cannot read /no/such/file.onnx"),
    ]
    for args, token, message in cases:
        error = failed(gateway_cli(target, *args, token=token))
        assert error.startswith(f"gateway: error: {message}"), (args, error)
    assert "argument VERSION: expected a version number" in failed(
        gateway_cli(target, "promote", "fraud", "latest"), code=2)
    unreachable = failed(gateway_cli("127.0.0.1:1", "models", "list"))
    assert unreachable.startswith("gateway: error: UNAVAILABLE")
    # The reader may read.
    assert "fraud" in ok(gateway_cli(target, "models", "list", token=READER_TOKEN))


def test_restart_preserves_aliases_and_explicit_loads(
        tmp_path: Path, model_files: dict[str, Path], onnx_files: dict[str, Path]) -> None:
    config = write_config(tmp_path / "gateway.toml", {"fraud": model_files["logreg"]}, AUTH)
    data = tmp_path / "data"
    with SubprocessGateway(config, data) as gw:
        target = gw.admin_address
        ok(gateway_cli(target, "register", "fraud", str(onnx_files["fraud7"])))
        ok(gateway_cli(target, "register", "fraud", str(onnx_files["fraud11"])))
        ok(gateway_cli(target, "promote", "fraud", "3"))
        ok(gateway_cli(target, "load", "fraud", "2"))
        ok(gateway_cli(target, "alias", "fraud", "staging", "2"))
    # The same config: its models are not seeded again, the database rules.
    with SubprocessGateway(config, data) as gw:
        model = json.loads(ok(gateway_cli(gw.admin_address, "models", "show", "fraud",
                                          "--json")))
        assert model["aliases"] == {"production": 3, "staging": 2}
        assert model["served_version"] == 3
        assert [(v["version"], v["state"], v["production"], v["explicit"])
                for v in model["loads"]] == [(2, "LOAD_STATE_LOADED", False, True),
                                             (3, "LOAD_STATE_LOADED", True, False)]
        assert infer(gw.grpc_address, "fraud").model_version == "3"
        assert infer(gw.grpc_address, "fraud", "2").model_version == "2"
        # The alias history survived too: rollback goes back to 1.
        ok(gateway_cli(gw.admin_address, "rollback", "fraud"))
        assert infer(gw.grpc_address, "fraud").model_version == "1"


def test_loadtest_forwards_everything_to_the_harness() -> None:
    direct = subprocess.run([sys.executable, "-m", "loadtests", "--help"],
                            capture_output=True, text=True, timeout=60)
    forwarded = subprocess.run([sys.executable, "-m", "gateway", "loadtest", "--help"],
                               capture_output=True, text=True, timeout=60)
    assert forwarded.returncode == direct.returncode == 0
    assert forwarded.stdout == direct.stdout and "loadtests" in forwarded.stdout
