"""Benchmark models built with the ``onnx`` helper (no training, no network).

``mlp``: a compute-heavy multi-layer perceptron for the dynamic-batching benchmark. Its
batch-1 run must cost at least the rest of one request's serving (≈ 300 µs here), so that
batching has something to amortize: one input ``input`` FP32 [-1, in_dim], Relu hidden
layers, one output ``logits`` FP32 [-1, out_dim], a dynamic batch dimension throughout.

    python -m loadtests.models mlp --out /tmp/mlp.onnx --measure
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["MLP_HIDDEN", "measure", "mlp_model"]

# 20 → 2048 → 2048 → 2048 → 2: 34 MB of weights, more than this machine's 32 MiB L3, so a
# batch-1 run streams them from memory (≈ 680 µs measured, one thread) whatever else ran
# before it; 1024 × 1024 (4 MB) stays in cache and runs in ≈ 45 µs. A batch of 64 costs
# ≈ 85 µs a row.
MLP_HIDDEN = (2048, 2048, 2048)
OPSET = 17
IR_VERSION = 9


def mlp_model(in_dim: int = 20, hidden: Sequence[int] = MLP_HIDDEN, out_dim: int = 2,
              seed: int = 0) -> bytes:
    """The serialized MLP ``input`` [-1,in_dim] → (MatMul, Add, Relu) per hidden layer →
    MatMul, Add → ``logits`` [-1,out_dim]; He-initialised FP32 weights from ``seed``."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    current, width = "input", in_dim
    sizes = [*hidden, out_dim]
    for i, size in enumerate(sizes):
        w = (rng.standard_normal((width, size)) * np.sqrt(2.0 / width)).astype(np.float32)
        b = (rng.standard_normal(size) * 0.01).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 1
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [out if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        current, width = out, size
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_dim])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", out_dim])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="loadtests.models")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def measure(data: bytes, batches: Sequence[int] = (1, 8, 32, 64), runs: int = 300
            ) -> dict[int, tuple[float, float]]:
    """Median and p99 µs of one run per batch size, with the gateway's default session
    options (one intra-op and one inter-op thread, all graph optimisations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(data, sess_options=options,
                                   providers=["CPUExecutionProvider"])
    in_dim = session.get_inputs()[0].shape[1]
    results = {}
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, in_dim)).astype(np.float32)
        for _ in range(20):
            session.run(None, {"input": x})
        timings = []
        for _ in range(max(20, runs // max(1, batch // 8))):
            start = time.perf_counter_ns()
            session.run(None, {"input": x})
            timings.append((time.perf_counter_ns() - start) / 1000)
        timings.sort()
        results[batch] = (statistics.median(timings),
                          timings[min(len(timings) - 1, int(len(timings) * 0.99))])
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="model", required=True)
    mlp = sub.add_parser("mlp", help="the compute-heavy MLP of the batching benchmark")
    mlp.add_argument("--out", type=Path, required=True, help="where to write the .onnx file")
    mlp.add_argument("--in-dim", type=int, default=20)
    mlp.add_argument("--hidden", default=",".join(map(str, MLP_HIDDEN)),
                     help="hidden layer widths, comma-separated (default %(default)s)")
    mlp.add_argument("--out-dim", type=int, default=2)
    mlp.add_argument("--measure", action="store_true",
                     help="print the run time per batch size (onnxruntime, one thread)")
    args = parser.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    data = mlp_model(args.in_dim, hidden, args.out_dim)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes): input FP32 [-1,{args.in_dim}] -> "
          f"{'x'.join(map(str, hidden))} -> logits FP32 [-1,{args.out_dim}]")
    if args.measure:
        for batch, (p50, p99) in measure(data).items():
            print(f"batch {batch:>3}: p50 {p50:8.1f} µs  p99 {p99:8.1f} µs  "
                  f"per row {p50 / batch:7.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
