"""The benchmark write-up from perf_analyzer rows (no servers involved)."""

from __future__ import annotations

from loadtests import bench_report
from loadtests.bench import BEGIN, END, splice
from loadtests.bench_profiles import PROFILES, gateway_config, second_version, setup_commands


def _row(system: str, c: int, tput: float, p50: float, rep: int = 0, **kw) -> dict:
    return {
        "system": system,
        "tool": "pa",
        "model": "logreg",
        "concurrency": c,
        "rep": rep,
        "throughput": tput,
        "p50_us": p50,
        "p99_us": 2 * p50,
        "server_cores": 1.0,
        "rc": 0,
        **kw,
    }


ROWS = [
    _row("gateway", 8, 3000, 2000, 0),
    _row("gateway", 8, 3300, 1800, 1),
    _row("gateway", 8, 2700, 2200, 2),
    _row("bare-ort", 8, 4000, 1600),
    _row("mlserver-pw0", 8, 1500, 5000),
    {"system": "gateway", "tool": "pa", "model": "logreg", "concurrency": 1, "rep": 0, "rc": 2},
    _row("gateway-full", 8, 2800, 2100),
]


def test_medians_over_repetitions_and_failed_runs() -> None:
    cells = bench_report.medians(ROWS)
    gw = cells[("gateway", "logreg", 8)]
    assert gw.throughput == 3000 and gw.p50_us == 2000 and gw.runs == 3
    assert ("gateway", "logreg", 1) not in cells  # its only run failed


def test_ratio_tables_divide_the_gateway_by_each_reference() -> None:
    cells = bench_report.medians(ROWS)
    bare = "\n".join(bench_report.ratio_table(cells, "bare-ort", ["logreg"], [1, 8]))
    mls = "\n".join(bench_report.ratio_table(cells, "mlserver-pw0", ["logreg"], [1, 8]))
    assert "| logreg | – | – | – | 0.75 | 1.25 | 1.25 |" in bare
    assert "| logreg | – | – | – | 2.00 | 0.40 | 0.40 |" in mls


def test_document_names_the_sitting_machine_and_commands(tmp_path) -> None:
    cells = bench_report.medians(ROWS)
    text = bench_report.render(
        cells=cells,
        systems=["gateway", "bare-ort", "mlserver-pw0"],
        models=["logreg"],
        concs=[1, 8, 32],
        when="2026-11-30 06:00 UTC",
        machine={"cores": "2"},
        commands=["perf_analyzer -i grpc ..."],
        notes=["a note"],
        mode="quick",
        duration_s=600,
        plot_name="bench.png",
    )
    assert "2026-11-30 06:00 UTC" in text and "- cores: 2" in text
    assert "perf_analyzer -i grpc ..." in text
    assert "Ratios gateway (serving core) / bare" in text
    assert "Ratios gateway (serving core) / MLServer" in text
    assert ("| gateway: serving core (request log off) | logreg | – | – | 3,000 | 2,000 / 4,000 |"
            in text)
    png = bench_report.plot(
        cells, ["gateway", "bare-ort"], ["logreg"], [1, 8, 32], tmp_path / "b.png"
    )
    assert png.stat().st_size > 5_000


def test_the_headline_table_has_a_row_per_gateway_configuration() -> None:
    cells = bench_report.medians(ROWS)
    lines = bench_report.headline_table(cells, ["gateway", "gateway-full", "bare-ort"],
                                        ["logreg"])
    assert lines[2] == ("| gateway: serving core (request log off) | logreg | – | 0.75 | – "
                        "| 2.00 | – |")
    assert lines[3].startswith("| gateway: A/B 50/50 + request log") and "| 0.70 |" in lines[3]
    assert len(lines) == 4


def test_profile_configs_and_their_setup(tmp_path) -> None:
    import tomllib

    core = tomllib.loads(gateway_config(tmp_path, ["logreg", "rf"], PROFILES["gateway"]))
    assert core["models"]["logreg"]["artifact"] == f"{tmp_path}/logreg.onnx"
    assert core["request_log"] == {"enabled": False} and "auth" not in core
    assert tomllib.loads(gateway_config(tmp_path, ["rf"], PROFILES["gateway-uvloop"])
                         )["server"] == {"uvloop": True}
    full = tomllib.loads(gateway_config(tmp_path, ["rf"], PROFILES["gateway-full"]))
    assert "request_log" not in full and full["auth"]["tokens"]["bench"]["role"] == "operator"
    assert setup_commands(PROFILES["gateway"], "rf", tmp_path / "v2.onnx") == []
    assert setup_commands(PROFILES["gateway-shadow"], "rf", tmp_path / "v2.onnx") == [
        ["register", "rf", str(tmp_path / "v2.onnx")],
        ["traffic", "set", "rf", "1=100", "--shadow", "2:0.2"]]


def test_the_second_version_is_the_same_graph_in_other_bytes(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])])
    source = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(source))
    copy = second_version(source, tmp_path / "m2.onnx")
    assert copy.read_bytes() != source.read_bytes()
    assert onnx.load(str(copy)).graph == onnx.load(str(source)).graph


def test_the_sitting_replaces_its_own_section_and_keeps_the_rest() -> None:
    first = splice("# Benchmarks\n\n## Hot swap\nswap figures\n",
                   "# Benchmarks: sitting 1\n\n## Figures\none")
    assert first.startswith("# Benchmarks\n\n" + BEGIN + "\n## Benchmarks: sitting 1")
    assert "### Figures\none\n" + END in first and first.endswith("## Hot swap\nswap figures\n")
    second = splice(first, "# Benchmarks: sitting 2\n\n## Figures\ntwo")
    assert "sitting 1" not in second and "### Figures\ntwo" in second
    assert second.count(BEGIN) == 1 and second.endswith("## Hot swap\nswap figures\n")


def test_the_batching_bench_serves_each_model_with_and_without_batching(tmp_path) -> None:
    import argparse
    import tomllib

    from loadtests import bench_batching

    config = tomllib.loads(bench_batching.gateway_config(
        {"mlp": tmp_path / "mlp.onnx"}, max_batch=64, delay_us=500))
    assert config["models"]["mlp"] == {"artifact": str(tmp_path / "mlp.onnx")}
    assert config["models"]["mlp_batched"]["dynamic_batching"] == {
        "max_batch_size": 64, "max_queue_delay_us": 500}
    assert config["request_log"] == {"enabled": False}
    row = {"model": "mlp", "batches": {8: 10}, "usual_batch": 8, "batch_compute_us": 900.0,
           "p99_bound_us": 500 + 900 + 4000.0,
           "unbatched": {"throughput": 1000.0, "p50_us": 2000.0, "p99_us": 4000.0},
           "batched": {"throughput": 1600.0, "p50_us": 1500.0, "p99_us": 5000.0}}
    args = argparse.Namespace(concurrency=64, max_batch=64, delay_us=500)
    text = bench_batching.render([row], args, ["perf_analyzer ..."], "today")
    assert ("| mlp | 1,000 | 2,000 / 4,000 | 1,600 | 1,500 / 5,000 | 1.60 | 8 | 900 | 5,400 "
            "| yes |") in text
