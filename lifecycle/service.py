"""The control plane's facade: what the admin API can do, in domain terms.

It combines the registry, the artifact store and a ``Deployer`` (serving). Every
method is a coroutine for the event loop that owns the deployer; registry calls run in
the database executor, ONNX validation and artifact I/O in the work executor, so
nothing blocking runs on the loop. Errors are the registry's and artifact store's
(``lifecycle.errors``) and the deployer's own, unchanged.

The request log's reads go through here too: ``query_requests`` streams a model's logged
inferences page by page (each page one short read in the database executor), and
``purge_requests`` deletes in bounded batches in the work executor, so a long purge never
holds the database executor that serving's registry calls use.

Version metadata layout (the registry stores one JSON object per version): the keys
``params``, ``metrics``, ``source``, ``lineage`` and ``registered_by`` are ours; every
other key is free-form metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from lifecycle.artifacts import ArtifactStore
from lifecycle.deployer import Deployer, ServingState, VersionLoad
from lifecycle.domain import PRODUCTION, AliasChange, Event, Model, ModelVersion
from lifecycle.errors import (
    InvalidArgument,
    InvalidArtifact,
    ModelNotFound,
    PreconditionError,
)
from lifecycle.registry import ANY, MAX_EVENTS, Expected, Registry
from lifecycle.replicas import ReplicaServing, ReplicaStore
from lifecycle.request_records import FeedbackEntry, LoggedRequest
from lifecycle.request_store import RequestStore
from lifecycle.uploads import validate_onnx

__all__ = [
    "RESERVED_METADATA",
    "Download",
    "LifecycleService",
    "ModelInfo",
    "Registration",
    "RequestPurge",
    "RequestQuery",
    "Upload",
    "VersionInfo",
]

T = TypeVar("T")
RESERVED_METADATA = ("params", "metrics", "source", "lineage", "registered_by")
DEFAULT_EVENTS = 100
DEFAULT_CHUNK_BYTES = 256 * 1024
# The registry checks names too; checking here as well keeps an invalid name from
# storing an artifact before the registry refuses it.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
QUERY_PAGE = 500
DEFAULT_UNMATCHED = 1000
MAX_UNMATCHED = 10_000


@dataclass(frozen=True)
class Upload:
    """Everything about a new version except its bytes."""

    model: str
    description: str = ""
    tags: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    sha256: str = ""
    """The digest the client computed (optional); the bytes must hash to it."""


@dataclass(frozen=True)
class VersionInfo:
    """A version as the admin API shows it: the record, its aliases and its load state."""

    version: ModelVersion
    aliases: tuple[str, ...]
    load: VersionLoad

    def _meta(self, key: str, default: Any) -> Any:
        value = self.version.metadata.get(key, default)
        return value if isinstance(value, type(default)) else default

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._meta("params", {}))

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self._meta("metrics", {}))

    @property
    def source(self) -> str:
        return str(self._meta("source", ""))

    @property
    def registered_by(self) -> str:
        return str(self._meta("registered_by", ""))

    @property
    def lineage(self) -> dict[str, Any]:
        return dict(self._meta("lineage", {}))

    @property
    def extra_metadata(self) -> dict[str, Any]:
        return {k: v for k, v in self.version.metadata.items() if k not in RESERVED_METADATA}


@dataclass(frozen=True)
class ModelInfo:
    model: Model
    aliases: dict[str, int]
    version_count: int
    latest_version: int | None
    serving: bool
    state: ServingState
    # Every replica's last published state of the model, by replica id (``get_model``
    # only; empty without a replica store).
    replicas: tuple[ReplicaServing, ...] = ()


@dataclass(frozen=True)
class Registration:
    version: VersionInfo
    created: bool
    model_created: bool


@dataclass(frozen=True)
class RequestQuery:
    """Filters of ``query_requests``: times are epoch microseconds, ``since`` inclusive,
    ``until`` exclusive; None means no bound."""

    model: str
    version: int | None = None
    since_us: int | None = None
    until_us: int | None = None
    has_feedback: bool | None = None
    include_shadow: bool = True
    limit: int | None = None


@dataclass(frozen=True)
class RequestPurge:
    """What ``purge_requests`` deleted, and the cutoff it applied (epoch µs)."""

    model: str
    before_us: int
    requests: int
    feedback: int
    unmatched_feedback: int


@dataclass(frozen=True)
class Download:
    """The artifact's record and its bytes; ``chunks`` verifies the digest as it goes
    and raises ``ArtifactCorrupt`` after the last chunk if the bytes changed."""

    version: ModelVersion
    chunks: AsyncIterator[bytes]


class LifecycleService:
    """The admin API's operations; see the module docstring. ``actor`` is the token name
    recorded in every event a call causes."""

    def __init__(
        self,
        *,
        registry: Registry,
        artifacts: ArtifactStore,
        deployer: Deployer,
        db_executor: Executor,
        work_executor: Executor,
        max_upload_bytes: int,
        max_chunk_bytes: int = 4 * 1024 * 1024,
        requests: RequestStore | None = None,
        request_retention_s: Callable[[str], float] | None = None,
        clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
        replicas: ReplicaStore | None = None,
    ) -> None:
        """``requests`` is the request log's store (its methods raise
        ``PreconditionError`` without one); ``request_retention_s(model)`` is how long a
        model's records are kept when a purge names no cutoff; ``replicas`` is where every
        gateway process publishes what it serves (``get_model`` reports none without)."""
        self._requests = requests
        self._replicas = replicas
        self._retention_s = request_retention_s
        self._clock_us = clock_us
        self._registry = registry
        self._artifacts = artifacts
        self._deployer = deployer
        self._db_executor = db_executor
        self._work_executor = work_executor
        self.max_upload_bytes = max_upload_bytes
        self.max_chunk_bytes = max_chunk_bytes

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_executor, lambda: fn(*args, **kwargs))

    async def _work(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._work_executor, lambda: fn(*args))

    # -------------------------------------------------------------------- reads

    async def list_models(self) -> list[ModelInfo]:
        rows = await self._db(self._model_rows, None)
        return [self._model_info(*row) for row in rows]

    async def get_model(self, name: str) -> ModelInfo:
        (row,) = await self._db(self._model_rows, name)
        info = self._model_info(*row)
        if self._replicas is None:
            return info
        states = await self._db(self._replicas.list)
        now = datetime.fromtimestamp(self._clock_us() / 1e6, UTC)
        return replace(info, replicas=tuple(r.of_model(name, now) for r in states))

    def _model_rows(
        self, name: str | None
    ) -> list[tuple[Model, dict[str, int], list[ModelVersion], bool]]:
        # ``is not None``: an empty name is a name (NOT_FOUND), not a request for them all.
        models = ([self._registry.get_model(name)] if name is not None
                  else self._registry.list_models())
        return [
            (m, self._registry.get_aliases(m.name), self._registry.list_versions(m.name),
             self._registry.is_serving(m.name))
            for m in models
        ]

    def _model_info(self, model: Model, aliases: dict[str, int],
                    versions: list[ModelVersion], serving: bool) -> ModelInfo:
        return ModelInfo(
            model=model, aliases=aliases, version_count=len(versions),
            latest_version=versions[-1].version if versions else None, serving=serving,
            state=self._deployer.serving_state(model.name),
        )

    async def list_versions(
        self, model: str, *, status: str | None = None, tag: str | None = None,
        text: str | None = None,
    ) -> list[VersionInfo]:
        def read() -> tuple[list[ModelVersion], dict[str, int]]:
            versions = self._registry.list_versions(model, status=status, tag=tag, text=text)
            return versions, self._registry.get_aliases(model)

        versions, aliases = await self._db(read)
        state = self._deployer.serving_state(model)
        return [self._version_info(v, aliases, state) for v in versions]

    async def get_version(self, model: str, version: int) -> VersionInfo:
        def read() -> tuple[ModelVersion, dict[str, int]]:
            return self._registry.get_version(model, version), self._registry.get_aliases(model)

        record, aliases = await self._db(read)
        return self._version_info(record, aliases, self._deployer.serving_state(model))

    @staticmethod
    def _version_info(version: ModelVersion, aliases: dict[str, int],
                      state: ServingState) -> VersionInfo:
        names = tuple(sorted(a for a, v in aliases.items() if v == version.version))
        return VersionInfo(version, names, state.version(version.version))

    async def list_events(self, *, model: str | None = None, action: str | None = None,
                          limit: int = 0) -> list[Event]:
        """Newest first; ``limit`` 0 means ``DEFAULT_EVENTS``."""
        if not 0 <= limit <= MAX_EVENTS:
            raise InvalidArgument(f"limit must be within 0..{MAX_EVENTS}, got {limit}")
        return await self._db(self._registry.list_events, model=model or None,
                              action=action or None, limit=limit or DEFAULT_EVENTS)

    async def download(self, model: str, version: int, chunk_bytes: int = 0) -> Download:
        """The artifact of ``version`` in chunks of ``chunk_bytes`` (0: 256 KiB, or
        ``max_chunk_bytes`` if smaller)."""
        if not 0 <= chunk_bytes <= self.max_chunk_bytes:
            raise InvalidArgument(
                f"chunk_bytes must be within 0..{self.max_chunk_bytes}, got {chunk_bytes}")
        record = await self._db(self._registry.get_version, model, version)
        chunks = await self._work(self._artifacts.iter_chunks, record.sha256,
                                  chunk_bytes or min(DEFAULT_CHUNK_BYTES, self.max_chunk_bytes))
        return Download(record, self._stream(chunks))

    async def _stream(self, chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
        try:
            while (chunk := await self._work(next, chunks, None)) is not None:
                yield chunk
        finally:
            # A chunk still being read in the executor makes close() refuse; the file
            # is then closed when the generator is collected.
            with contextlib.suppress(ValueError):
                chunks.close()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------- writes

    async def register_version(
        self, upload: Upload, chunks: AsyncIterable[bytes], *, actor: str
    ) -> Registration:
        """Validate, then store the artifact and register it (see the admin proto).

        ``InvalidArtifact`` or ``InvalidArgument`` when the upload is unusable; nothing
        is stored then. Idempotent by content: the same bytes return the existing
        version with ``created=False``.
        """
        metadata = _version_metadata(upload, actor)
        data = await self._receive(chunks)
        if upload.sha256:
            actual = hashlib.sha256(data).hexdigest()
            if actual != upload.sha256.lower():
                raise InvalidArtifact(
                    f"the upload hashes to sha256 {actual}, the client said {upload.sha256}")
        try:
            existing: Model | None = await self._db(self._registry.get_model, upload.model)
        except ModelNotFound:
            existing = None
        signature = await self._work(
            validate_onnx, data, None if existing is None else existing.signature)
        sha256, size = await self._work(self._artifacts.put, data)
        model, model_created = await self._db(
            self._registry.ensure_model, upload.model, signature, task=upload.task, actor=actor)
        if not model_created and existing is None:
            mismatch = model.signature.mismatch(signature)
            if mismatch:  # created concurrently with another signature
                raise InvalidArtifact(f"signature does not match the model's: {mismatch}")
        record, created = await self._db(
            self._registry.register_version, upload.model, sha256=sha256, size=size,
            description=upload.description, tags=upload.tags, metadata=metadata, actor=actor)
        if model_created:
            await self._deployer.add_model(upload.model, signature)
        info = await self.get_version(upload.model, record.version)
        return Registration(info, created, model_created)

    async def _receive(self, chunks: AsyncIterable[bytes]) -> bytes:
        buffer = bytearray()
        async for chunk in chunks:
            if len(buffer) + len(chunk) > self.max_upload_bytes:
                raise InvalidArtifact(
                    f"the upload is larger than the limit of {self.max_upload_bytes} bytes "
                    "(server.max_upload_bytes)")
            buffer += chunk
        if not buffer:
            raise InvalidArtifact("the upload is empty: no ONNX bytes were sent")
        return bytes(buffer)

    async def set_alias(self, model: str, alias: str, version: int, *, actor: str,
                        expected: Expected = ANY) -> AliasChange:
        """Move an alias other than ``production`` (which only Promote and Rollback move,
        because serving must follow it)."""
        if alias == PRODUCTION:
            raise InvalidArgument(
                f"alias '{PRODUCTION}' is moved by Promote and Rollback, which load the "
                "version before pointing at it")
        return await self._db(self._registry.set_alias, model, alias, version, actor=actor,
                              expected=expected)

    async def promote(self, model: str, version: int, *, actor: str) -> AliasChange:
        await self._registered(model, version, "promoted")
        previous = await self._deployer.promote(model, version, actor=actor)
        return AliasChange(model, PRODUCTION, previous, version)

    async def rollback(self, model: str, *, actor: str) -> AliasChange:
        await self._db(self._registry.get_model, model)
        return await self._deployer.rollback(model, actor=actor)

    async def archive(self, model: str, version: int, *, actor: str,
                      reason: str = "") -> VersionInfo:
        """Mark ``version`` archived and stop serving it (``PreconditionError`` while an
        alias points at it)."""
        await self._db(self._registry.set_status, model, version, "archived", actor=actor,
                       reason=reason)
        load = self._deployer.serving_state(model).version(version)
        if load.explicit or load.state == "loaded":
            await self._deployer.unload_version(model, version, actor=actor)
        return await self.get_version(model, version)

    async def load(self, model: str, version: int, *, actor: str) -> VersionLoad:
        await self._registered(model, version, "loaded")
        await self._deployer.load_version(model, version, actor=actor)
        return self._deployer.serving_state(model).version(version)

    async def unload(self, model: str, version: int, *, actor: str) -> VersionLoad:
        def production() -> int | None:
            self._registry.get_version(model, version)
            return self._registry.get_aliases(model).get(PRODUCTION)

        if await self._db(production) == version:
            raise PreconditionError(
                f"version {version} of model '{model}' is production; promote or roll back "
                "to another version before unloading it")
        await self._deployer.unload_version(model, version, actor=actor)
        return self._deployer.serving_state(model).version(version)

    # -------------------------------------------------------------- request log

    def _request_store(self) -> RequestStore:
        if self._requests is None:
            raise PreconditionError("this gateway has no request log")
        return self._requests

    async def query_requests(self, query: RequestQuery) -> AsyncIterator[LoggedRequest]:
        """Stream the records matching ``query`` in time order, with their joined labels.
        ``ModelNotFound`` for an unknown model, ``InvalidArgument`` for a negative limit."""
        store = self._request_store()
        if query.limit is not None and query.limit < 0:
            raise InvalidArgument(f"limit must not be negative, got {query.limit}")
        await self._db(self._registry.get_model, query.model)
        records = store.query_requests(
            query.model, version=query.version, since=query.since_us, until=query.until_us,
            has_feedback=query.has_feedback, include_shadow=query.include_shadow,
            limit=query.limit,
        )
        try:
            while True:
                page = await self._db(lambda: list(itertools.islice(records, QUERY_PAGE)))
                for record in page:
                    yield record
                if len(page) < QUERY_PAGE:
                    return
        finally:
            # A page still being read in the executor makes close() refuse; the generator
            # then ends when it is collected.
            close = getattr(records, "close", None)  # a generator: ends its page reads
            if close is not None:
                with contextlib.suppress(ValueError):
                    close()

    async def unmatched_feedback(self, model: str, *, limit: int = 0) -> list[FeedbackEntry]:
        """Feedback of ``model`` that matched no primary record within the join window,
        oldest first; ``limit`` 0 means ``DEFAULT_UNMATCHED``."""
        store = self._request_store()
        if not 0 <= limit <= MAX_UNMATCHED:
            raise InvalidArgument(f"limit must be within 0..{MAX_UNMATCHED}, got {limit}")
        await self._db(self._registry.get_model, model)
        return await self._db(store.unmatched_feedback, model=model,
                              limit=limit or DEFAULT_UNMATCHED)

    async def purge_requests(self, model: str, *, actor: str, before_us: int | None = None,
                             older_than_s: float | None = None) -> RequestPurge:
        """Delete ``model``'s records logged before the cutoff (``before_us``, else now minus
        ``older_than_s``, else now minus the model's retention) and its feedback received
        before it, then its unmatched feedback past the join window. Recorded as a
        ``requests.purge`` event."""
        store = self._request_store()
        await self._db(self._registry.get_model, model)
        if before_us is None:
            if older_than_s is None:
                if self._retention_s is None:
                    raise InvalidArgument("give a cutoff: this gateway has no retention "
                                          "configured")
                older_than_s = self._retention_s(model)
            if not math.isfinite(older_than_s) or older_than_s < 0:
                raise InvalidArgument(
                    f"older_than must be a non-negative number of days, got {older_than_s}")
            before_us = self._clock_us() - int(older_than_s * 1_000_000)
        cutoff = before_us
        # Bounded batches, each its own transaction, in the work executor: the database
        # executor stays free for serving's registry calls meanwhile.
        result = await self._work(lambda: store.purge_before(cutoff, model=model))
        unmatched = await self._work(lambda: store.purge_unmatched_feedback(model=model))
        purge = RequestPurge(model=model, before_us=cutoff, requests=result.requests,
                             feedback=result.feedback, unmatched_feedback=unmatched)
        await self._db(self._registry.record_event, actor, "requests.purge", model=model,
                       detail={"before_us": cutoff, "requests": purge.requests,
                               "feedback": purge.feedback,
                               "unmatched_feedback": purge.unmatched_feedback})
        return purge

    async def _registered(self, model: str, version: int, verb: str) -> None:
        record = await self._db(self._registry.get_version, model, version)
        if record.status != "registered":
            raise PreconditionError(
                f"version {version} of model '{model}' is {record.status}; only registered "
                f"versions can be {verb}")


def _version_metadata(upload: Upload, actor: str) -> dict[str, Any]:
    """The stored metadata object; ``InvalidArgument`` for anything malformed."""
    if not isinstance(upload.model, str) or not _MODEL_NAME.fullmatch(upload.model):
        raise InvalidArgument(
            f"model name must match {_MODEL_NAME.pattern}, got {upload.model!r}")
    for tag in upload.tags:
        if not isinstance(tag, str) or not tag.strip():
            raise InvalidArgument(f"tags must be non-empty strings, got {list(upload.tags)!r}")
    for key, value in upload.metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise InvalidArgument(f"metric '{key}' must be a finite number, got {value!r}")
    reserved = sorted(set(upload.metadata) & set(RESERVED_METADATA))
    if reserved:
        raise InvalidArgument(
            f"metadata key '{reserved[0]}' is reserved; use the upload's own field")
    metadata: dict[str, Any] = dict(upload.metadata)
    if upload.params:
        metadata["params"] = dict(upload.params)
    if upload.metrics:
        metadata["metrics"] = dict(upload.metrics)
    if upload.source:
        metadata["source"] = upload.source
    metadata["registered_by"] = actor
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"params and metadata must be plain JSON: {exc}") from exc
    return metadata
