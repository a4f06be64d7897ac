"""The CLI's JSON and table rendering, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.cli import output
from gateway.pb import admin_pb2 as apb
from gateway.rpc import admin_converters as convert


def test_to_json_keeps_proto_names_and_makes_int64_integers() -> None:
    model = apb.Model(name="m", aliases={"production": 3}, version_count=4, served_version=3,
                      loads=[apb.VersionLoad(model="m", version=3,
                                             state=apb.LOAD_STATE_LOADED)])
    model.create_time.FromDatetime(datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC))
    data = output.to_json(model)
    assert data["aliases"] == {"production": 3} and data["version_count"] == 4
    assert data["served_version"] == 3 and data["latest_version"] == 0
    assert data["loads"][0]["version"] == 3 and data["loads"][0]["state"] == "LOAD_STATE_LOADED"
    assert data["create_time"] == "2024-05-01T12:00:00Z"
    shape = output.to_json(apb.TensorSpec(name="x", datatype="FP32", shape=[-1, 20]))
    assert shape["shape"] == [-1, 20]


def test_struct_numbers_that_are_whole_become_integers() -> None:
    event = apb.Event(id=9, action="alias.set", before=convert.json_value(1),
                      after=convert.json_value(2), detail=convert.struct({"alias": "p"}))
    data = output.to_json(event)
    assert (data["id"], data["before"], data["after"]) == (9, 1, 2)
    assert data["detail"] == {"alias": "p"} and "version" not in data
    version = apb.ModelVersion(metrics=convert.struct({"auc": 0.5, "rows": 1000}))
    assert output.to_json(version)["metrics"] == {"auc": 0.5, "rows": 1000}


def test_table_and_fields() -> None:
    assert output.table(("A", "LONGER"), [(1, None), ("wide cell", True)]) == (
        "A          LONGER\n1          -\nwide cell  yes")
    assert output.fields([("k", 1.5), ("longer", "")]) == "k:       1.5\nlonger:"
    assert output.compact({"a": [1.0, "x"]}) == '{"a":[1,"x"]}'
    assert output.compact("x" * 50, 10) == "x" * 9 + "…"
