"""A tiny in-process Open Inference Protocol server: the test double of "any V2 server".

It runs a real grpc.aio server on 127.0.0.1:0 in a background thread (its own event
loop), so the harness under test talks real gRPC to it exactly as to any other
server. Behaviour is configured per test: the model version it reports, a delay per
request, shedding with RESOURCE_EXHAUSTED, and a stall (requests wait until it ends).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from loadtests.pb import grpc_service_pb2 as pb
from loadtests.pb import grpc_service_pb2_grpc as pb_grpc


@dataclass
class Behaviour:
    """How the double answers ModelInfer.

    ``version(n)`` names the version serving the n-th request (0-based);
    ``delay_s`` is added to every request; ``shed_above`` rejects a request with
    RESOURCE_EXHAUSTED when that many are already in progress; ``stall_at``/``stall_s``:
    the ``stall_at``-th request closes a gate for ``stall_s`` seconds and every request
    arriving meanwhile (itself included) waits for the gate to reopen.
    """

    version: Callable[[int], str] = lambda n: "1"
    delay_s: float = 0.0
    shed_above: int | None = None
    stall_at: int | None = None
    stall_s: float = 0.0


@dataclass
class Received:
    count: int = 0
    last_parameters: dict[str, object] = field(default_factory=dict)
    last_metadata: dict[str, str] = field(default_factory=dict)
    last_shape: list[int] = field(default_factory=list)
    last_version_asked: str = ""


class _Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, behaviour: Behaviour, received: Received) -> None:
        self.behaviour = behaviour
        self.received = received
        self.in_progress = 0
        self.gate_open_at = 0.0  # monotonic instant when the current stall ends

    async def ModelReady(self, request, context):  # noqa: N802
        return pb.ModelReadyResponse(ready=request.name == "m")

    async def ModelMetadata(self, request, context):  # noqa: N802
        if request.name != "m":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name}")
        return pb.ModelMetadataResponse(
            name="m",
            versions=["1"],
            platform="test",
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(name="x", datatype="FP32", shape=[-1, 4])
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(name="y", datatype="FP32", shape=[-1])
            ],
        )

    async def ModelInfer(self, request, context):  # noqa: N802
        b, rec = self.behaviour, self.received
        n = rec.count
        rec.count += 1
        rec.last_parameters = {
            k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in request.parameters.items()
        }
        rec.last_metadata = {k: v for k, v in context.invocation_metadata()}
        rec.last_shape = list(request.inputs[0].shape) if request.inputs else []
        rec.last_version_asked = request.model_version
        if b.shed_above is not None and self.in_progress >= b.shed_above:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
        self.in_progress += 1
        try:
            now = time.monotonic()
            if b.stall_at is not None and n == b.stall_at:
                self.gate_open_at = now + b.stall_s
            if self.gate_open_at > now:
                await asyncio.sleep(self.gate_open_at - now)
            if b.delay_s:
                await asyncio.sleep(b.delay_s)
        finally:
            self.in_progress -= 1
        resp = pb.ModelInferResponse(model_name="m", model_version=b.version(n), id=request.id)
        resp.outputs.add(name="y", datatype="FP32", shape=[1])
        resp.raw_output_contents.append(b"\x00\x00\x00\x00")
        return resp


class FakeV2Server:
    """Start with ``start()``; ``address`` is ``127.0.0.1:PORT``; ``stop()`` shuts it down."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.received = Received()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _start(self) -> int:
        self._server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            _Servicer(self.behaviour, self.received), self._server
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return port

    def start(self) -> FakeV2Server:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
