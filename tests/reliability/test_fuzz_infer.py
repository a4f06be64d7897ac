"""Bad input fuzzing: property-based malformed V2 requests against one live gateway.

Every reply is OK or a proper status with a message (never UNKNOWN or INTERNAL: those
mean an exception escaped the converters or the data plane), the gateway answers a valid
request after every example, RESOURCE_EXHAUSTED comes only for an oversize message, and
this process's memory (the gateway runs in it) stays bounded while a few hundred of the
generated requests are replayed (measured apart from hypothesis's own bookkeeping, which
grows by tens of MiB over a thousand examples).

Requests come from two strategies: *near-valid* ones (built from a served model's real
signature, then zero to three mutations: datatype, dims, rank, byte lengths, broken BYTES
length prefixes, names, duplicated or missing inputs, raw/typed mixing, wrong content
fields, out-of-range values, parameters of every type, requested outputs, model names and
versions, oversize messages) reach every layer down to onnxruntime and the request log;
*wild* ones are random in every field (negative and huge dims, unknown datatypes, ranks
beyond numpy's limit, arbitrary bytes).
"""

from __future__ import annotations

import collections
import math
import struct
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.pb import admin_pb2 as apb
from gateway.pb import admin_pb2_grpc
from gateway.pb import grpc_service_pb2 as pb
from gateway.pb import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import DATATYPES
from tests.reliability.conftest import FUZZ_MODELS, MAX_MESSAGE_BYTES, OPERATOR
from tests.support.inprocess import InProcessGateway
from tests.support.waiting import wait_until

ALLOWED = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION,
})
ALLOWED_NAMES = tuple(code.name for code in ALLOWED if code != grpc.StatusCode.OK)
UNARY_EXAMPLES = 1000
STREAM_EXAMPLES = 100
REPLAY_CORPUS = 400
REPLAYS = 2
RSS_GROWTH_LIMIT = 100 << 20
FUZZ_SETTINGS = settings(
    deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example],
)

ELEMENT_SIZE = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1,
                "INT16": 2, "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8}
CONTENT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=12),
}
FIELD_OF = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
            "BYTES": "bytes_contents"}
OVERSIZE = b"\0" * (MAX_MESSAGE_BYTES + 1024)
HUGE_DIMS = (2**31, 2**32 + 1, 10**8, 2**62, 2**63 - 1, -(2**63))
HUGE_SHAPES = ([10**8], [2**31], [2**62], [2**31, 2**31], [2**63 - 1])
# Values the typed field holds but the datatype does not.
OUT_OF_RANGE = {"INT8": (128, -129, 300), "INT16": (32_768, -32_769, 2**31 - 1),
                "UINT8": (256, 2**32 - 1), "UINT16": (65_536, 2**32 - 1)}

# Valid-looking UTF-8 text (protobuf refuses to serialize lone surrogates client-side).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
long_text = st.builds(lambda n, c: c * n, st.integers(1_000, 40_000),
                      st.sampled_from(["a", "é", "€", "'", "%", "\n"]))
names = st.one_of(text, st.sampled_from(["features", "a", "x", "y", "data", "sum", ""]),
                  long_text)
datatypes = st.one_of(st.sampled_from(DATATYPES),
                      st.sampled_from(["", "fp32", "FP8", "BF16", "STRING", "FP32 ", "INT128"]),
                      text)
dims = st.one_of(st.integers(1, 4), st.integers(-3, 0), st.sampled_from(HUGE_DIMS),
                 st.integers(-(2**63), 2**63 - 1))
shapes = st.one_of(st.lists(dims, max_size=5),
                   st.lists(st.just(1), min_size=30, max_size=80))


@st.composite
def parameters(draw: st.DrawFn) -> dict[str, pb.InferParameter]:
    """Parameters of every type, under real keys and random ones."""
    keys = st.one_of(st.sampled_from(["routing_key", "sequence_id", "priority", "timeout",
                                      "binary_data_output", "version"]), text)
    values = st.one_of(
        st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
        st.builds(lambda v: pb.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda v: pb.InferParameter(string_param=v), st.one_of(text, long_text)),
        st.builds(lambda v: pb.InferParameter(double_param=v), st.floats()),
        st.builds(lambda v: pb.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
        st.just(pb.InferParameter()),
    )
    return draw(st.dictionaries(keys, values, max_size=3))


def bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


@st.composite
def raw_for(draw: st.DrawFn, datatype: str, count: int) -> bytes:
    """Raw bytes of the right length for ``count`` elements (arbitrary bit patterns: NaN
    payloads, bools that are neither 0 nor 1)."""
    if datatype == "BYTES":
        return bytes_elements(draw(st.lists(st.binary(max_size=8), min_size=count,
                                            max_size=count)))
    size = count * ELEMENT_SIZE.get(datatype, 4)
    return draw(st.binary(min_size=size, max_size=size))


@st.composite
def contents(draw: st.DrawFn, field: str, count: int | None = None) -> pb.InferTensorContents:
    values = CONTENT_VALUES[field]
    n = count if count is not None else draw(st.integers(0, 6))
    return pb.InferTensorContents(**{field: draw(st.lists(values, min_size=n, max_size=n))})


@st.composite
def wild_tensor(draw: st.DrawFn) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=draw(names), datatype=draw(datatypes), shape=draw(shapes),
        parameters=draw(parameters()))
    if draw(st.booleans()):
        tensor.contents.CopyFrom(draw(contents(draw(st.sampled_from(sorted(CONTENT_VALUES))))))
    raw = draw(st.one_of(st.none(), st.binary(max_size=64), st.builds(
        bytes_elements, st.lists(st.binary(max_size=6), max_size=4))))
    return tensor, raw


def assemble(model: str, version: str, request_id: str,
             tensors: list[tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]],
             outputs: list[str], params: dict[str, pb.InferParameter],
             raw_mode: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id,
                                   parameters=params)
    for tensor, _ in tensors:
        request.inputs.append(tensor)
    raws = [raw for _, raw in tensors]
    if raw_mode == "each" and any(raw is not None for raw in raws):
        request.raw_input_contents.extend(raw if raw is not None else b"" for raw in raws)
    elif raw_mode == "extra":
        request.raw_input_contents.extend([*(r or b"" for r in raws), b"\0" * 4])
    elif raw_mode == "missing" and raws:
        request.raw_input_contents.extend(r or b"" for r in raws[:-1])
    for name in outputs:
        request.outputs.add(name=name)
    return request


@st.composite
def wild_request(draw: st.DrawFn) -> pb.ModelInferRequest:
    return assemble(
        draw(st.one_of(st.sampled_from(FUZZ_MODELS), names)),
        draw(st.one_of(st.sampled_from(["", "1", "2", "0", "-1", "01", "1.0", " 1",
                                        "99999999999999999999"]), text)),
        draw(st.one_of(st.just(""), text, long_text)),
        draw(st.lists(wild_tensor(), max_size=4)),
        draw(st.lists(names, max_size=3)),
        draw(parameters()),
        draw(st.sampled_from(["each", "each", "extra", "missing", "none"])),
    )


MUTATIONS = ("datatype", "dim", "rank", "byte_length", "bytes_prefix", "name", "extra_input",
             "duplicate", "drop_input", "mix", "wrong_field", "out_of_range", "version",
             "model", "outputs", "params", "oversize", "huge_bytes_shape")


@st.composite
def near_valid_request(draw: st.DrawFn, signatures: dict[str, Any]) -> pb.ModelInferRequest:
    """A correct request for a served model, then up to three mutations of it."""
    model = draw(st.sampled_from(sorted(signatures)))
    inputs, output_names = signatures[model]
    batch = draw(st.integers(1, 3))
    typed = draw(st.booleans())
    tensors: list[tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]] = []
    for name, datatype, spec_shape in inputs:
        shape = [batch if d < 0 else d for d in spec_shape]
        count = math.prod(shape)
        tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype,
                                                       shape=shape)
        if typed and datatype in FIELD_OF:
            field = FIELD_OF[datatype]
            values = CONTENT_VALUES[field]
            if datatype in ("INT8", "INT16", "UINT8", "UINT16"):  # in range, until mutated
                bits = ELEMENT_SIZE[datatype] * 8
                values = (st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
                          if datatype.startswith("INT") else st.integers(0, 2**bits - 1))
            tensor.contents.CopyFrom(pb.InferTensorContents(**{field: draw(
                st.lists(values, min_size=count, max_size=count))}))
            tensors.append((tensor, None))
        else:
            tensors.append((tensor, draw(raw_for(datatype, count))))
    request = assemble(model, "", draw(st.one_of(st.just(""), text)), tensors,
                       draw(st.lists(st.sampled_from(output_names), max_size=3)), {},
                       "each")
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=3)):
        mutate(draw, request, mutation)
    return request


def mutate(draw: st.DrawFn, request: pb.ModelInferRequest, mutation: str) -> None:
    inputs, raws = request.inputs, request.raw_input_contents
    index = draw(st.integers(0, max(len(inputs) - 1, 0)))
    tensor = inputs[index] if inputs else None
    if mutation == "datatype" and tensor is not None:
        tensor.datatype = draw(datatypes)
    elif mutation == "dim" and tensor is not None and tensor.shape:
        tensor.shape[draw(st.integers(0, len(tensor.shape) - 1))] = draw(dims)
    elif mutation == "rank" and tensor is not None:
        if tensor.shape and draw(st.booleans()):
            del tensor.shape[-1]
        else:  # ones keep the element count, so the byte length still matches
            tensor.shape.extend([1] * draw(st.sampled_from([1, 2, 31, 33, 63, 65, 80])))
    elif mutation == "byte_length" and index < len(raws):
        cut = draw(st.integers(-8, 8))
        raws[index] = raws[index][:cut] if cut < 0 else raws[index] + b"\x01" * cut
    elif mutation == "bytes_prefix" and index < len(raws) and len(raws[index]) >= 4:
        data = bytearray(raws[index])
        at = draw(st.integers(0, len(data) - 4))
        data[at:at + 4] = struct.pack("<I", draw(st.sampled_from([0, 1, 7, 2**31, 2**32 - 1])))
        raws[index] = bytes(data[:draw(st.integers(0, len(data)))]
                            if draw(st.booleans()) else data)
    elif mutation == "name" and tensor is not None:
        tensor.name = draw(names)
    elif mutation == "extra_input":
        extra, raw = draw(wild_tensor())
        inputs.append(extra)
        if raws:
            raws.append(raw or b"")
    elif mutation == "duplicate" and tensor is not None:
        inputs.append(tensor)
        if index < len(raws):
            raws.append(raws[index])
    elif mutation == "drop_input" and tensor is not None:
        del inputs[index]
        if index < len(raws):
            del raws[index]
    elif mutation == "mix" and tensor is not None:
        field = draw(st.sampled_from(sorted(CONTENT_VALUES)))
        tensor.contents.CopyFrom(draw(contents(field)))
        if not raws:
            raws.extend(b"\0" * 4 for _ in inputs)
    elif mutation == "wrong_field" and tensor is not None and not raws:
        # The element count of the shape (when small and not negative) or any count.
        field = draw(st.sampled_from(sorted(CONTENT_VALUES)))
        size = math.prod(tensor.shape) if len(tensor.shape) < 8 else -1
        exact = draw(st.booleans()) and 0 <= size < 64
        tensor.ClearField("contents")
        tensor.contents.CopyFrom(draw(contents(field, size if exact else None)))
    elif mutation == "out_of_range" and tensor is not None and not raws:
        values = OUT_OF_RANGE.get(tensor.datatype)
        field = "int_contents" if tensor.datatype.startswith("INT") else "uint_contents"
        if values and getattr(tensor.contents, field):
            getattr(tensor.contents, field)[0] = draw(st.sampled_from(values))
    elif mutation == "version":
        request.model_version = draw(st.one_of(
            st.sampled_from(["1", "2", "0", "-1", "01", "abc", "1 ", "18446744073709551617"]),
            text))
    elif mutation == "model":
        request.model_name = draw(st.one_of(names, st.sampled_from(
            [request.model_name.upper(), request.model_name + " ", f"{request.model_name}/1"])))
    elif mutation == "outputs":
        request.outputs.add(name=draw(names), parameters=draw(parameters()))
    elif mutation == "params":
        for key, value in draw(parameters()).items():
            request.parameters[key].CopyFrom(value)
        if draw(st.booleans()):
            request.parameters["routing_key"].CopyFrom(draw(st.sampled_from([
                pb.InferParameter(int64_param=7), pb.InferParameter(string_param="k" * 5000),
                pb.InferParameter(string_param="user-1"), pb.InferParameter(bool_param=True),
            ])))
    elif mutation == "oversize":
        if raws:
            raws[-1] = raws[-1] + OVERSIZE
        else:
            request.id = "x" * len(OVERSIZE)
    elif mutation == "huge_bytes_shape":
        # A few bytes claiming an enormous BYTES tensor: must be refused before anything
        # of that size is allocated.
        inputs.add(name="huge", datatype="BYTES", shape=draw(st.sampled_from(HUGE_SHAPES)))
        raws.extend([b""] * (len(inputs) - 1 - len(raws)) + [bytes_elements([b"a"])])
        del raws[len(inputs):]


def regression(model: str, datatype: str, shape: list[int], *, raw: bytes | None = None,
               typed: pb.InferTensorContents | None = None) -> pb.ModelInferRequest:
    """One input ``x``: the shapes of the bugs the fuzz found (each was INTERNAL: a rank
    numpy cannot build, values out of the datatype's range, a BYTES shape of 2**62
    elements from a few bytes — or of 10**8, which allocated 800 MB of pointers first).
    A fifth, a long model name, came back RESOURCE_EXHAUSTED: the NOT_FOUND message
    echoing it overflowed the client's limit on trailers."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype=datatype, shape=shape, contents=typed)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def valid_request(request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="logreg", id=request_id)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 20])
    request.raw_input_contents.append(np.ones((1, 20), dtype=np.float32).tobytes())
    return request


def summary(request: pb.ModelInferRequest) -> str:
    """What a failure message needs of a request (the full example can be megabytes)."""
    inputs = [(t.name[:40], t.datatype[:20], list(t.shape)[:8], t.HasField("contents"))
              for t in request.inputs]
    params = {k[:20]: v.WhichOneof("parameter_choice") for k, v in request.parameters.items()}
    return (f"model={request.model_name[:40]!r} version={request.model_version[:20]!r} "
            f"inputs={inputs} raw={[len(r) for r in request.raw_input_contents]} "
            f"outputs={[o.name[:40] for o in request.outputs]} params={params}")


def check_reply(call: Any, request: pb.ModelInferRequest, seen: collections.Counter[str]
                ) -> grpc.StatusCode:
    try:
        response = call(request)
    except grpc.RpcError as exc:
        code = exc.code()
        seen[code.name] += 1
        assert code in ALLOWED, f"{code.name}: {exc.details()} for {summary(request)}"
        assert exc.details(), f"{code.name} without a message for {summary(request)}"
        # Only an oversize message may be refused for its size: not a status whose message
        # (echoing a long name) overflowed the client's trailer limit.
        assert code != grpc.StatusCode.RESOURCE_EXHAUSTED or \
            request.ByteSize() > MAX_MESSAGE_BYTES, f"{exc.details()} for {summary(request)}"
        return code
    seen["OK"] += 1
    assert response.model_name == request.model_name
    if request.id:
        assert response.id == request.id
    assert len(response.outputs) == len(response.raw_output_contents)
    return grpc.StatusCode.OK


def served_signatures(channel: grpc.Channel) -> dict[str, Any]:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    signatures = {}
    for model in FUZZ_MODELS:
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=30)
        signatures[model] = ([(t.name, t.datatype, list(t.shape)) for t in meta.inputs],
                             [t.name for t in meta.outputs])
    return signatures


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


@pytest.mark.slow
def test_malformed_unary_requests_get_proper_statuses_and_memory_stays_bounded(
        fuzz_gateway: InProcessGateway, fuzz_channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(fuzz_channel)
    signatures = served_signatures(fuzz_channel)
    seen: collections.Counter[str] = collections.Counter()

    def call(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        metadata = (("x-routing-key", request.id[:64].encode("ascii", "ignore").decode()),) \
            if request.id.isascii() and request.id.isprintable() and request.id else ()
        return stub.ModelInfer(request, metadata=metadata, timeout=30)

    corpus: list[pb.ModelInferRequest] = []
    before = rss()

    @settings(FUZZ_SETTINGS, max_examples=UNARY_EXAMPLES)
    @given(request=st.one_of(near_valid_request(signatures), wild_request()))
    @example(request=regression("id_fp32", "FP32", [1] * 65 + [4], raw=b"\0" * 16))
    @example(request=regression("id_int8", "INT8", [1, 4],
                                typed=pb.InferTensorContents(int_contents=[300, 0, 0, 0])))
    @example(request=regression("id_uint16", "UINT16", [1, 4],
                                typed=pb.InferTensorContents(uint_contents=[70_000, 0, 0, 0])))
    @example(request=regression("id_bytes", "BYTES", [2**62], raw=bytes_elements([b"a"])))
    @example(request=regression("id_bytes", "BYTES", [10**8, 4], raw=bytes_elements([b"a"])))
    @example(request=pb.ModelInferRequest(model_name="€" * 40_000))
    def replies_are_proper(request: pb.ModelInferRequest) -> None:
        check_reply(call, request, seen)
        assert call(valid_request()).model_version == "1", "the gateway stopped serving"
        if request.ByteSize() < MAX_MESSAGE_BYTES and len(corpus) < REPLAY_CORPUS:
            corpus.append(request)

    replies_are_proper()
    print(f"fuzz: {dict(seen)}; RSS growth with hypothesis's own bookkeeping "
          f"{(rss() - before) / 2**20:.1f} MiB")
    # The strategies reached every layer: decoding, routing, validation, the model.
    for code in ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"):
        assert seen[code] > 0, f"no example ended in {code}: {dict(seen)}"

    # Memory: a few hundred of those requests replayed, without hypothesis (whose example
    # bookkeeping grows by tens of MiB on its own): the gateway's share must stay bounded.
    replayed: collections.Counter[str] = collections.Counter()
    for request in corpus:  # first pass: caches and pools reach their steady size
        check_reply(call, request, replayed)
    before = rss()
    for _ in range(REPLAYS):
        for request in corpus:
            check_reply(call, request, replayed)
    growth = rss() - before
    print(f"replay: {len(corpus)} requests x {REPLAYS + 1}: {dict(replayed)}; RSS growth "
          f"{growth / 2**20:.1f} MiB")
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.0f} MiB"

    # What survived: the request log still records (a known request reaches the database)
    # and metrics still render.
    marker = "after-the-fuzz"
    call(valid_request(marker))
    with grpc.insecure_channel(fuzz_gateway.admin_address) as admin_channel:
        admin = admin_pb2_grpc.AdminServiceStub(admin_channel)
        wait_until(lambda: any(r.request_id == marker for r in admin.QueryRequests(
            apb.QueryRequestsRequest(model="logreg", omit_payload=True),
            metadata=OPERATOR, timeout=30)), what="the marker request in the request log")


def test_malformed_stream_messages_get_per_message_errors(
        fuzz_channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(fuzz_channel)
    signatures = served_signatures(fuzz_channel)
    seen: collections.Counter[str] = collections.Counter()

    @settings(FUZZ_SETTINGS, max_examples=STREAM_EXAMPLES)
    @given(requests=st.lists(st.one_of(near_valid_request(signatures), wild_request()),
                             min_size=1, max_size=6))
    def stream_survives(requests: list[pb.ModelInferRequest]) -> None:
        messages = [*requests, valid_request("stream-tail")]
        try:
            responses = list(stub.ModelStreamInfer(iter(messages), timeout=30))
        except grpc.RpcError as exc:
            # Only the transport may end a stream early (an oversize message).
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
            seen["stream " + exc.code().name] += 1
        else:
            assert len(responses) == len(messages)
            for request, response in zip(messages, responses, strict=True):
                error = response.error_message
                if not error:
                    seen["OK"] += 1
                    assert response.infer_response.model_name == request.model_name
                    continue
                code, _, message = error.partition(": ")
                seen[code] += 1
                assert code in ALLOWED_NAMES and message, f"{error[:300]!r} for {summary(request)}"
            assert not responses[-1].error_message
        assert stub.ModelInfer(valid_request(), timeout=30).model_version == "1"

    stream_survives()
    print(f"stream fuzz: {dict(seen)}")
    assert seen["OK"] > 0 and seen["INVALID_ARGUMENT"] > 0


def test_undecodable_protobuf_does_not_take_the_server_down(fuzz_channel: grpc.Channel) -> None:
    """Bytes that are not a ModelInferRequest at all (a truncated field, invalid UTF-8 in a
    string, garbage). grpc parses them before any of our code runs and answers UNKNOWN
    ("Unexpected DecodeError"); INVALID_ARGUMENT would need a wrapper around every
    handler, a cost on every call, so UNKNOWN is accepted here, named in its message."""
    raw_call = fuzz_channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b, response_deserializer=lambda b: b)
    valid = valid_request().SerializeToString()
    for garbage in (b"\x0a\xff", b"\x0a\x02\xc3\x28", valid[:-3], b"\xff" * 64):
        with pytest.raises(grpc.RpcError) as info:
            raw_call(garbage, timeout=30)
        assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN)
        assert "Error parsing message" in (info.value.details() or "")
    stub = pb_grpc.GRPCInferenceServiceStub(fuzz_channel)
    assert stub.ModelInfer(valid_request(), timeout=30).model_version == "1"
