"""The model registry: models, versions, aliases, the event log and explicit loads.

A repository over ``Database``: every public method is one transaction (one
``read()`` or ``write()`` scope; ``register_version`` may retry its transaction)
and returns frozen domain objects from ``lifecycle.domain``. Thread-safe.

Every successful mutating call records exactly one ``Event`` in the same
transaction (``model.create``, ``version.register``, ``version.status``,
``alias.set``, ``alias.delete``, ``alias.rollback``, ``load``, ``unload``), with
``detail["before"]``/``detail["after"]``. A ``register_version`` that finds the
same bytes already registered is a lookup and records nothing.

Aliases keep a history that works as a stack: ``set_alias`` pushes the new
version (unless it is already current), ``rollback`` pops the current one and
points the alias at the entry below, so successive rollbacks walk back in time.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from lifecycle.db import (
    AliasHistoryRow,
    AliasRow,
    Database,
    EventRow,
    LoadRow,
    ModelRow,
    VersionRow,
    dataset_link_table,
)
from lifecycle.domain import (
    PRODUCTION,
    VERSION_STATUSES,
    AliasChange,
    Event,
    LoadRecord,
    Model,
    ModelVersion,
    Signature,
)
from lifecycle.errors import (
    AliasNotFound,
    ConflictError,
    InvalidArgument,
    ModelNotFound,
    PreconditionError,
    VersionNotFound,
)

__all__ = ["ANY", "MAX_EVENTS", "Expected", "Registry"]

MAX_EVENTS = 10_000
"""The most events one ``list_events`` call returns."""


class _Unset(enum.Enum):
    ANY = "ANY"


ANY: Final = _Unset.ANY
"""``expected=ANY`` (the default) skips the compare-and-set check of an alias."""

Expected = int | None | Literal[_Unset.ANY]

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_ALIAS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Registry:
    """Repository of models, versions and aliases; see the module docstring.

    Raises ``ModelNotFound``/``VersionNotFound``/``AliasNotFound`` for unknown
    names, ``InvalidArgument`` for malformed input, ``PreconditionError`` when the
    state forbids the change, ``ConflictError`` when a compare-and-set fails or a
    concurrent write wins, ``StorageUnavailable`` when the database is unreachable.
    """

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = _utc_now,
        register_attempts: int = 5,
    ) -> None:
        self._db = db
        self._clock = clock
        self._register_attempts = register_attempts

    # ------------------------------------------------------------------ models

    def create_model(self, name: str, signature: Signature, *, task: str = "", actor: str) -> Model:
        """Create a model; ``ConflictError`` if the name is taken."""
        _check_name(name, _MODEL_NAME, "model name")
        _check_task(task)
        _check_actor(actor)
        with self._db.write() as s:
            if s.get(ModelRow, name) is not None:
                raise ConflictError(f"model '{name}' already exists")
            return self._insert_model(s, name, signature, task, actor)

    def ensure_model(
        self, name: str, signature: Signature, *, task: str = "", actor: str
    ) -> tuple[Model, bool]:
        """The model named ``name``, created if missing; True when created.

        An existing model is returned as stored (the database rules over the
        caller's ``signature``; compare with ``Signature.mismatch`` if it matters).
        """
        _check_name(name, _MODEL_NAME, "model name")
        _check_task(task)
        _check_actor(actor)
        try:
            with self._db.write() as s:
                row = s.get(ModelRow, name)
                if row is not None:
                    return row.to_domain(), False
                return self._insert_model(s, name, signature, task, actor), True
        except ConflictError:
            # Another process created it between our read and our commit.
            return self.get_model(name), False

    def get_model(self, name: str) -> Model:
        with self._db.read() as s:
            return _model_row(s, name).to_domain()

    def list_models(self) -> list[Model]:
        with self._db.read() as s:
            return [r.to_domain() for r in s.scalars(select(ModelRow).order_by(ModelRow.name))]

    def _insert_model(
        self, s: Session, name: str, signature: Signature, task: str, actor: str
    ) -> Model:
        row = ModelRow(
            name=name, task=task, signature=signature.to_json(), created_at=self._clock()
        )
        s.add(row)
        s.flush()
        after = {"task": task, "signature": row.signature}
        self._event(s, actor, "model.create", name, None, {"before": None, "after": after})
        return row.to_domain()

    # ---------------------------------------------------------------- versions

    def register_version(
        self,
        model: str,
        *,
        sha256: str,
        size: int,
        description: str = "",
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        status: str = "registered",
        actor: str,
        dataset_id: int | None = None,
    ) -> tuple[ModelVersion, bool]:
        """Register the artifact ``sha256`` as the model's next version; True when created.
        ``dataset_id``: the dataset it was trained on, linked in the same transaction (a
        version never exists without its lineage).

        Idempotent by content: if these bytes are already a version of ``model``,
        that version is returned unchanged with False. Numbers start at 1 and
        increase by one; a number taken by a concurrent writer is retried.
        """
        _check_actor(actor)
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise InvalidArgument(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
        if size < 0:
            raise InvalidArgument(f"size must be >= 0, got {size}")
        _check_status(status)
        tag_list = _check_tags(tags)
        meta = _json_object(metadata or {}, "metadata")
        for attempt in range(1, self._register_attempts + 1):
            try:
                with self._db.write() as s:
                    _model_row(s, model)
                    existing = s.scalar(
                        select(VersionRow).where(
                            VersionRow.model == model, VersionRow.sha256 == sha256
                        )
                    )
                    if existing is not None:
                        return existing.to_domain(), False
                    latest = s.scalar(
                        select(func.max(VersionRow.version)).where(VersionRow.model == model)
                    )
                    row = VersionRow(
                        model=model,
                        version=(latest or 0) + 1,
                        status=status,
                        sha256=sha256,
                        size=size,
                        created_at=self._clock(),
                        description=description,
                        tags=tag_list,
                        meta=meta,
                    )
                    s.add(row)
                    s.flush()
                    if dataset_id is not None:
                        s.execute(insert(dataset_link_table).values(
                            model=model, version=row.version, dataset_id=dataset_id,
                            created_at=row.created_at))
                    created = row.to_domain()
                    self._event(
                        s,
                        actor,
                        "version.register",
                        model,
                        row.version,
                        {"before": None, "after": _version_summary(created)},
                    )
                    return created, True
            except ConflictError:
                # The next attempt either sees the same bytes registered by the
                # winner or allocates the number after the one it took.
                if attempt == self._register_attempts:
                    raise
        raise AssertionError("unreachable")

    def get_version(self, model: str, version: int) -> ModelVersion:
        with self._db.read() as s:
            return _version_row(s, model, version).to_domain()

    def list_versions(
        self,
        model: str,
        *,
        status: str | None = None,
        tag: str | None = None,
        text: str | None = None,
    ) -> list[ModelVersion]:
        """Versions of ``model`` in ascending order, filtered by status, tag and by
        ``text`` found in the description (case-insensitive)."""
        if status is not None:
            _check_status(status)
        query = select(VersionRow).where(VersionRow.model == model)
        if status is not None:
            query = query.where(VersionRow.status == status)
        if text:
            query = query.where(VersionRow.description.icontains(text, autoescape=True))
        with self._db.read() as s:
            _model_row(s, model)
            rows = s.scalars(query.order_by(VersionRow.version)).all()
            versions = [r.to_domain() for r in rows]
        # Tags are a JSON list; filtering here keeps the query portable.
        return [v for v in versions if tag is None or tag in v.tags]

    def set_status(
        self, model: str, version: int, status: str, *, actor: str, reason: str = ""
    ) -> ModelVersion:
        """Change a version's status. A version an alias points at cannot leave
        ``registered`` (``PreconditionError``): move the alias first."""
        _check_actor(actor)
        _check_status(status)
        with self._db.write() as s:
            row = _version_row(s, model, version, for_update=True)
            before = row.status
            if status != "registered":
                aliases = s.scalars(
                    select(AliasRow.alias).where(
                        AliasRow.model == model, AliasRow.version == version
                    )
                ).all()
                if aliases:
                    raise PreconditionError(
                        f"version {version} of model '{model}' is aliased as "
                        f"{', '.join(sorted(aliases))}; move the alias before marking it {status}"
                    )
            row.status = status
            detail = {"before": before, "after": status, "reason": reason}
            self._event(s, actor, "version.status", model, version, detail)
            return row.to_domain()

    # ----------------------------------------------------------------- aliases

    def get_aliases(self, model: str) -> dict[str, int]:
        with self._db.read() as s:
            _model_row(s, model)
            rows = s.scalars(select(AliasRow).where(AliasRow.model == model))
            return {r.alias: r.version for r in rows}

    def alias_versions(self, alias: str) -> dict[str, int]:
        """Every model's version under ``alias`` (models without it are left out)."""
        with self._db.read() as s:
            rows = s.execute(select(AliasRow.model, AliasRow.version).where(
                AliasRow.alias == alias))
            return {model: version for model, version in rows}

    def get_alias(self, model: str, alias: str) -> int:
        with self._db.read() as s:
            return _alias_row(s, model, alias).version

    def set_alias(
        self, model: str, alias: str, version: int, *, actor: str, expected: Expected = ANY
    ) -> AliasChange:
        """Point ``alias`` at ``version`` (creating the alias if needed).

        With ``expected`` (an int, or None for "the alias must not exist"), the
        move happens only if the alias still holds that value, else
        ``ConflictError``. Only ``registered`` versions can be aliased.
        """
        _check_name(alias, _ALIAS_NAME, "alias")
        _check_actor(actor)
        with self._db.write() as s:
            target = _version_row(s, model, version, for_update=True)
            if target.status != "registered":
                raise PreconditionError(
                    f"version {version} of model '{model}' is {target.status}; "
                    "only registered versions can be aliased"
                )
            row = s.get(AliasRow, (model, alias), with_for_update=True)
            current = None if row is None else row.version
            _check_expected(model, alias, current, expected)
            now = self._clock()
            if row is None:
                s.add(AliasRow(model=model, alias=alias, version=version, updated_at=now))
            else:
                row.version, row.updated_at = version, now
            if current != version:
                s.add(
                    AliasHistoryRow(
                        model=model,
                        alias=alias,
                        version=version,
                        previous=current,
                        at=now,
                        actor=actor,
                    )
                )
            detail = {"alias": alias, "before": current, "after": version}
            self._event(s, actor, "alias.set", model, version, detail)
            return AliasChange(model, alias, current, version)

    def delete_alias(self, model: str, alias: str, *, actor: str, expected: Expected = ANY) -> int:
        """Remove ``alias`` and its rollback history; returns the version it held."""
        _check_actor(actor)
        with self._db.write() as s:
            row = _alias_row(s, model, alias, for_update=True)
            current = row.version
            _check_expected(model, alias, current, expected)
            now = self._clock()
            for entry in _stack(s, model, alias):
                entry.popped_at, entry.popped_by = now, actor
            s.delete(row)
            detail = {"alias": alias, "before": current, "after": None}
            self._event(s, actor, "alias.delete", model, current, detail)
            return current

    def rollback(
        self,
        model: str,
        alias: str = PRODUCTION,
        *,
        actor: str,
        expected: Expected = ANY,
    ) -> AliasChange:
        """Point ``alias`` back at the version that held it before the current one.

        Pops the current entry off the alias's history, so a second rollback goes
        one step further back. ``PreconditionError`` when there is nothing to go
        back to or that version is no longer ``registered``; ``expected`` works as
        in ``set_alias``.
        """
        _check_actor(actor)
        with self._db.write() as s:
            change, stack = _rollback_plan(s, model, alias, for_update=True)
            _check_expected(model, alias, change.previous, expected)
            now = self._clock()
            stack[0].popped_at, stack[0].popped_by = now, actor
            row = _alias_row(s, model, alias)
            row.version, row.updated_at = change.current, now
            detail = {"alias": alias, "before": change.previous, "after": change.current}
            self._event(s, actor, "alias.rollback", model, change.current, detail)
            return change

    def rollback_target(self, model: str, alias: str = PRODUCTION) -> AliasChange:
        """What ``rollback`` would do now (``previous`` is the current version);
        raises as ``rollback`` would. Changes nothing."""
        with self._db.read() as s:
            return _rollback_plan(s, model, alias)[0]

    # ------------------------------------------------------------------ events

    def record_event(
        self,
        actor: str,
        action: str,
        *,
        model: str | None = None,
        version: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Event:
        """Append an event on the caller's behalf (e.g. why a promotion failed)."""
        _check_actor(actor)
        if not action:
            raise InvalidArgument("action must not be empty")
        payload = _json_object(detail or {}, "detail")
        with self._db.write() as s:
            return self._event(s, actor, action, model, version, payload).to_domain()

    def list_events(
        self, *, model: str | None = None, action: str | None = None, limit: int = 100
    ) -> list[Event]:
        """The newest ``limit`` events (0..``MAX_EVENTS``), newest first, optionally
        of one model and/or action."""
        if not 0 <= limit <= MAX_EVENTS:
            raise InvalidArgument(f"limit must be within 0..{MAX_EVENTS}, got {limit}")
        query = select(EventRow).order_by(EventRow.id.desc()).limit(limit)
        if model is not None:
            query = query.where(EventRow.model == model)
        if action is not None:
            query = query.where(EventRow.action == action)
        with self._db.read() as s:
            return [r.to_domain() for r in s.scalars(query)]

    def _event(
        self,
        s: Session,
        actor: str,
        action: str,
        model: str | None,
        version: int | None,
        detail: dict[str, Any],
    ) -> EventRow:
        row = EventRow(
            time=self._clock(),
            actor=actor,
            action=action,
            model=model,
            version=version,
            detail=detail,
        )
        s.add(row)
        s.flush()
        return row

    # ------------------------------------------------------------------- serving

    def is_serving(self, model: str) -> bool:
        """False after a repository unload of the whole model (until a load)."""
        with self._db.read() as s:
            return _model_row(s, model).serving

    def set_serving(self, model: str, serving: bool, *, actor: str) -> None:
        _check_actor(actor)
        with self._db.write() as s:
            row = _model_row(s, model)
            before = row.serving
            row.serving = serving
            action = "model.load" if serving else "model.unload"
            self._event(s, actor, action, model, None, {"before": before, "after": serving})

    # ------------------------------------------------------------------- loads

    def record_load(self, model: str, version: int, *, actor: str) -> LoadRecord:
        """Remember that an operator loaded this version (restored at start); idempotent."""
        _check_actor(actor)
        with self._db.write() as s:
            _version_row(s, model, version)
            existed = s.get(LoadRow, (model, version)) is not None
            if not existed:
                s.add(LoadRow(model=model, version=version, actor=actor, at=self._clock()))
            detail = {"before": "loaded" if existed else None, "after": "loaded"}
            self._event(s, actor, "load", model, version, detail)
            return LoadRecord(model, version)

    def record_unload(self, model: str, version: int, *, actor: str) -> bool:
        """Forget an explicit load; True if one was recorded."""
        _check_actor(actor)
        with self._db.write() as s:
            row = s.get(LoadRow, (model, version))
            if row is not None:
                s.delete(row)
            detail = {"before": None if row is None else "loaded", "after": None}
            self._event(s, actor, "unload", model, version, detail)
            return row is not None

    def list_loads(self) -> list[LoadRecord]:
        with self._db.read() as s:
            rows = s.scalars(select(LoadRow).order_by(LoadRow.model, LoadRow.version))
            return [LoadRecord(r.model, r.version) for r in rows]


# ---------------------------------------------------------------- row lookups


def _model_row(s: Session, name: str) -> ModelRow:
    row = s.get(ModelRow, name)
    if row is None:
        raise ModelNotFound(name)
    return row


def _version_row(s: Session, model: str, version: int, *, for_update: bool = False) -> VersionRow:
    query = select(VersionRow).where(VersionRow.model == model, VersionRow.version == version)
    # Row locks matter on PostgreSQL (SQLite's writer lock already serializes us,
    # and SQLAlchemy renders no FOR UPDATE there).
    row = s.scalar(query.with_for_update() if for_update else query)
    if row is None:
        _model_row(s, model)
        raise VersionNotFound(model, version)
    return row


def _alias_row(s: Session, model: str, alias: str, *, for_update: bool = False) -> AliasRow:
    row = s.get(AliasRow, (model, alias), with_for_update=for_update)
    if row is None:
        _model_row(s, model)
        raise AliasNotFound(model, alias)
    return row


def _stack(s: Session, model: str, alias: str, depth: int | None = None) -> list[AliasHistoryRow]:
    """The alias's unpopped history, top (current) first."""
    query = (
        select(AliasHistoryRow)
        .where(
            AliasHistoryRow.model == model,
            AliasHistoryRow.alias == alias,
            AliasHistoryRow.popped_at.is_(None),
        )
        .order_by(AliasHistoryRow.id.desc())
        .limit(depth)
    )
    return list(s.scalars(query))


def _rollback_plan(
    s: Session, model: str, alias: str, *, for_update: bool = False
) -> tuple[AliasChange, list[AliasHistoryRow]]:
    current = _alias_row(s, model, alias, for_update=for_update).version
    stack = _stack(s, model, alias, depth=2)
    if len(stack) < 2:
        raise PreconditionError(
            f"alias '{alias}' of model '{model}' has no earlier version to roll back to"
        )
    target = _version_row(s, model, stack[1].version, for_update=for_update)
    if target.status != "registered":
        raise PreconditionError(
            f"cannot roll back alias '{alias}' of model '{model}' to version "
            f"{target.version}: it is {target.status}"
        )
    return AliasChange(model, alias, current, target.version), stack


# ----------------------------------------------------------------- conversion


def _version_summary(v: ModelVersion) -> dict[str, Any]:
    return {"status": v.status, "sha256": v.sha256, "size": v.size, "tags": list(v.tags)}


# ----------------------------------------------------------------- validation


def _check_name(value: str, pattern: re.Pattern[str], what: str) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidArgument(f"{what} must match {pattern.pattern}, got {value!r}")


def _check_task(task: str) -> None:
    # The column's width: PostgreSQL enforces it (SQLite would store anything).
    if not isinstance(task, str) or len(task) > 64:
        raise InvalidArgument(f"task must be a string of at most 64 chars, got {task!r}")


def _check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor or len(actor) > 128:
        raise InvalidArgument(
            f"actor must be a non-empty string of at most 128 chars, got {actor!r}"
        )


def _check_status(status: str) -> None:
    if status not in VERSION_STATUSES:
        raise InvalidArgument(
            f"status must be one of {', '.join(VERSION_STATUSES)}, got {status!r}"
        )


def _check_tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        raise InvalidArgument(f"tags must be a collection of strings, got the string {tags!r}")
    result = list(dict.fromkeys(tags))
    if not all(isinstance(t, str) and t for t in result):
        raise InvalidArgument(f"tags must be non-empty strings, got {result!r}")
    return result


def _check_expected(model: str, alias: str, current: int | None, expected: Expected) -> None:
    if expected is not ANY and expected != current:
        raise ConflictError(f"alias '{alias}' of model '{model}' is {current}, expected {expected}")


def _json_object(value: dict[str, Any], what: str) -> dict[str, Any]:
    """A JSON-safe copy of ``value`` (tuples become lists), or ``InvalidArgument``."""
    try:
        result = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise InvalidArgument(f"{what} must be JSON-serializable: {err}") from err
    if not isinstance(result, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return result
