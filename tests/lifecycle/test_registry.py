"""The registry's contract, one behaviour per test, on a real SQLite database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lifecycle.domain import AliasChange, LoadRecord, Signature, TensorSpec
from lifecycle.errors import (
    AliasNotFound,
    ConflictError,
    InvalidArgument,
    ModelNotFound,
    NotFoundError,
    PreconditionError,
    VersionNotFound,
)
from lifecycle.registry import MAX_EVENTS, Registry
from tests.lifecycle.helpers import register, sha

# ------------------------------------------------------------------- models


def test_create_get_and_list_models(registry: Registry, signature: Signature) -> None:
    created = registry.create_model("b-model", signature, task="regression", actor="alice")
    registry.create_model("a-model", signature, actor="alice")
    assert created.name == "b-model"
    assert created.task == "regression"
    assert created.signature == signature
    assert created.created_at == datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert registry.get_model("b-model") == created
    assert [m.name for m in registry.list_models()] == ["a-model", "b-model"]


def test_create_model_twice_conflicts(registry: Registry, model: str, signature: Signature) -> None:
    with pytest.raises(ConflictError, match="already exists"):
        registry.create_model(model, signature, actor="test")


def test_ensure_model_creates_once_and_keeps_the_stored_signature(
    registry: Registry, signature: Signature
) -> None:
    first, created = registry.ensure_model("m", signature, actor="seed")
    other = Signature(inputs=(TensorSpec("x", "INT64", (-1,)),), outputs=signature.outputs)
    second, created_again = registry.ensure_model("m", other, actor="seed")
    assert (created, created_again) == (True, False)
    assert second == first
    assert second.signature == signature
    assert [e.action for e in registry.list_events(model="m")] == ["model.create"]


def test_unknown_model_is_model_not_found(registry: Registry) -> None:
    with pytest.raises(ModelNotFound, match="'ghost'") as info:
        registry.get_model("ghost")
    assert isinstance(info.value, LookupError)
    for call in (
        lambda: registry.list_versions("ghost"),
        lambda: registry.get_version("ghost", 1),
        lambda: registry.get_aliases("ghost"),
        lambda: registry.get_alias("ghost", "production"),
    ):
        with pytest.raises(ModelNotFound):
            call()


@pytest.mark.parametrize("name", ["", "has space", "../escape", "-lead", "x" * 129])
def test_malformed_model_names_are_invalid(
    registry: Registry, signature: Signature, name: str
) -> None:
    with pytest.raises(InvalidArgument, match="model name"):
        registry.create_model(name, signature, actor="test")


# ----------------------------------------------------------------- versions


def test_versions_are_numbered_from_one_and_carry_their_metadata(
    registry: Registry, model: str
) -> None:
    v1, created = registry.register_version(
        model,
        sha256=sha(b"one"),
        size=3,
        description="Baseline logistic regression",
        tags=("baseline", "lr"),
        metadata={"metrics": {"auc": 0.91}, "parent_version": None, "source": "seed"},
        actor="trainer",
    )
    v2, _ = registry.register_version(model, sha256=sha(b"two"), size=3, actor="trainer")
    assert created
    assert (v1.version, v2.version) == (1, 2)
    assert v1.status == "registered"
    assert v1.tags == ("baseline", "lr")
    assert v1.metadata == {"metrics": {"auc": 0.91}, "parent_version": None, "source": "seed"}
    assert registry.get_version(model, 1) == v1
    assert [v.version for v in registry.list_versions(model)] == [1, 2]


def test_register_is_idempotent_by_content(registry: Registry, model: str) -> None:
    first, created = registry.register_version(
        model, sha256=sha(b"same"), size=4, description="first", actor="test"
    )
    again, created_again = registry.register_version(
        model, sha256=sha(b"same"), size=4, description="second", actor="test"
    )
    assert (created, created_again) == (True, False)
    assert again == first
    assert [v.version for v in registry.list_versions(model)] == [1]
    assert len(registry.list_events(model=model, action="version.register")) == 1


def test_same_bytes_in_two_models_are_two_versions(
    registry: Registry, model: str, signature: Signature
) -> None:
    registry.create_model("other", signature, actor="test")
    assert register(registry, model, b"shared") == 1
    assert register(registry, "other", b"shared") == 1


def test_list_versions_filters_by_status_tag_and_text(registry: Registry, model: str) -> None:
    register(registry, model, b"1", description="Gradient BOOSTED trees", tags=["gbt"])
    register(registry, model, b"2", description="logistic regression", tags=["lr", "gbt"])
    register(registry, model, b"3", description="100% recall_at_k", status="rejected")

    def numbers(**filters: str) -> list[int]:
        return [v.version for v in registry.list_versions(model, **filters)]

    assert numbers(status="rejected") == [3]
    assert numbers(status="registered") == [1, 2]
    assert numbers(tag="gbt") == [1, 2]
    assert numbers(tag="lr") == [2]
    assert numbers(text="boosted") == [1]
    assert numbers(text="REGRESSION") == [2]
    assert numbers(text="100%") == [3]  # LIKE wildcards in the text are literal
    assert numbers(text="_at_") == [3]
    assert numbers(text="0%") == [3]
    assert numbers(text="%") == [3]
    assert numbers(status="registered", tag="gbt", text="trees") == [1]


def test_unknown_version_is_version_not_found(registry: Registry, model: str) -> None:
    with pytest.raises(VersionNotFound, match="version 7 of model 'fraud'"):
        registry.get_version(model, 7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sha256": "ABC"}, "sha256"),
        ({"sha256": sha(b"x").upper()}, "sha256"),
        ({"size": -1}, "size"),
        ({"status": "deployed"}, "status"),
        ({"tags": "single"}, "tags"),
        ({"metadata": {"when": datetime.now(UTC)}}, "metadata"),
        ({"metadata": {"auc": float("nan")}}, "metadata"),
        ({"actor": ""}, "actor"),
    ],
)
def test_register_rejects_malformed_input(
    registry: Registry, model: str, kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {"sha256": sha(b"x"), "size": 1, "actor": "test"} | kwargs
    with pytest.raises(InvalidArgument, match=match):
        registry.register_version(model, **args)  # type: ignore[arg-type]


def test_set_status_records_before_after_and_reason(registry: Registry, model: str) -> None:
    register(registry, model, b"v1")
    archived = registry.set_status(model, 1, "archived", actor="ops", reason="superseded")
    assert archived.status == "archived"
    assert registry.get_version(model, 1).status == "archived"
    event = registry.list_events(model=model, limit=1)[0]
    assert (event.action, event.actor, event.version) == ("version.status", "ops", 1)
    assert event.detail == {"before": "registered", "after": "archived", "reason": "superseded"}


def test_aliased_version_cannot_be_archived(registry: Registry, model: str) -> None:
    register(registry, model, b"v1")
    registry.set_alias(model, "production", 1, actor="ops")
    with pytest.raises(PreconditionError, match="production"):
        registry.set_status(model, 1, "archived", actor="ops")
    assert registry.get_version(model, 1).status == "registered"


# ------------------------------------------------------------------ aliases


def test_set_and_read_aliases(registry: Registry, model: str) -> None:
    register(registry, model, b"v1")
    register(registry, model, b"v2")
    assert registry.set_alias(model, "production", 1, actor="ops") == AliasChange(
        model, "production", None, 1
    )
    assert registry.set_alias(model, "challenger", 2, actor="ops").previous is None
    assert registry.set_alias(model, "production", 2, actor="ops") == AliasChange(
        model, "production", 1, 2
    )
    assert registry.get_aliases(model) == {"production": 2, "challenger": 2}
    assert registry.get_alias(model, "production") == 2


def test_unknown_alias_and_unknown_target(registry: Registry, model: str) -> None:
    register(registry, model, b"v1")
    with pytest.raises(AliasNotFound, match="no alias 'production'") as info:
        registry.get_alias(model, "production")
    assert isinstance(info.value, NotFoundError)
    with pytest.raises(VersionNotFound):
        registry.set_alias(model, "production", 9, actor="ops")
    with pytest.raises(AliasNotFound):
        registry.rollback(model, actor="ops")
    assert registry.get_aliases(model) == {}


def test_alias_names_are_validated(registry: Registry, model: str) -> None:
    register(registry, model, b"v1")
    for bad in ("", "1", "with space", "x" * 65):
        with pytest.raises(InvalidArgument, match="alias"):
            registry.set_alias(model, bad, 1, actor="ops")


def test_compare_and_set(registry: Registry, model: str) -> None:
    for payload in (b"v1", b"v2", b"v3"):
        register(registry, model, payload)
    registry.set_alias(model, "production", 1, actor="ops", expected=None)
    with pytest.raises(ConflictError, match="is 1, expected None"):
        registry.set_alias(model, "production", 2, actor="ops", expected=None)
    with pytest.raises(ConflictError, match="is 1, expected 3"):
        registry.set_alias(model, "production", 2, actor="ops", expected=3)
    assert registry.set_alias(model, "production", 2, actor="ops", expected=1).current == 2
    with pytest.raises(ConflictError):
        registry.rollback(model, actor="ops", expected=1)
    assert registry.get_alias(model, "production") == 2
    with pytest.raises(ConflictError):
        registry.delete_alias(model, "production", actor="ops", expected=1)
    assert registry.get_alias(model, "production") == 2


def test_archived_and_rejected_versions_cannot_be_aliased(registry: Registry, model: str) -> None:
    register(registry, model, b"v1")
    register(registry, model, b"v2", status="rejected")
    registry.set_status(model, 1, "archived", actor="ops")
    for version, status in ((1, "archived"), (2, "rejected")):
        with pytest.raises(PreconditionError, match=status):
            registry.set_alias(model, "production", version, actor="ops")
    assert registry.get_aliases(model) == {}


def test_rollback_walks_back_one_step_per_call(registry: Registry, model: str) -> None:
    for payload in (b"v1", b"v2", b"v3"):
        register(registry, model, payload)
    for version in (1, 2, 3):
        registry.set_alias(model, "production", version, actor="ops")
    assert registry.rollback_target(model) == AliasChange(model, "production", 3, 2)
    assert registry.rollback(model, actor="ops") == AliasChange(model, "production", 3, 2)
    assert registry.rollback(model, actor="ops") == AliasChange(model, "production", 2, 1)
    assert registry.get_alias(model, "production") == 1
    with pytest.raises(PreconditionError, match="no earlier version"):
        registry.rollback_target(model)
    with pytest.raises(PreconditionError, match="no earlier version"):
        registry.rollback(model, actor="ops")
    assert registry.get_alias(model, "production") == 1


def test_a_new_promotion_after_rollbacks_stacks_on_what_remains(
    registry: Registry, model: str
) -> None:
    for payload in (b"v1", b"v2", b"v3", b"v4"):
        register(registry, model, payload)
    for version in (1, 2, 3):
        registry.set_alias(model, "production", version, actor="ops")
    registry.rollback(model, actor="ops")  # 3 -> 2
    registry.set_alias(model, "production", 4, actor="ops")
    registry.set_alias(model, "production", 4, actor="ops")  # no-op: not pushed twice
    assert registry.rollback(model, actor="ops").current == 2
    assert registry.rollback(model, actor="ops").current == 1


def test_rollback_is_per_alias(registry: Registry, model: str) -> None:
    for payload in (b"v1", b"v2", b"v3"):
        register(registry, model, payload)
    registry.set_alias(model, "production", 1, actor="ops")
    registry.set_alias(model, "staging", 2, actor="ops")
    registry.set_alias(model, "staging", 3, actor="ops")
    registry.set_alias(model, "production", 3, actor="ops")
    assert registry.rollback(model, "staging", actor="ops").current == 2
    assert registry.get_aliases(model) == {"production": 3, "staging": 2}
    assert registry.rollback(model, actor="ops").current == 1


def test_rollback_refuses_a_target_that_was_archived(registry: Registry, model: str) -> None:
    register(registry, model, b"v1")
    register(registry, model, b"v2")
    registry.set_alias(model, "production", 1, actor="ops")
    registry.set_alias(model, "production", 2, actor="ops")
    registry.set_status(model, 1, "archived", actor="ops")
    with pytest.raises(PreconditionError, match="archived"):
        registry.rollback(model, actor="ops")
    assert registry.get_alias(model, "production") == 2


def test_delete_alias_clears_its_history(registry: Registry, model: str) -> None:
    register(registry, model, b"v1")
    register(registry, model, b"v2")
    registry.set_alias(model, "production", 1, actor="ops")
    registry.set_alias(model, "production", 2, actor="ops")
    assert registry.delete_alias(model, "production", actor="ops") == 2
    assert registry.get_aliases(model) == {}
    with pytest.raises(AliasNotFound):
        registry.delete_alias(model, "production", actor="ops")
    registry.set_alias(model, "production", 2, actor="ops")
    with pytest.raises(PreconditionError):
        registry.rollback(model, actor="ops")
    # Once unaliased, the version may be archived.
    registry.delete_alias(model, "production", actor="ops")
    assert registry.set_status(model, 2, "archived", actor="ops").status == "archived"


# ------------------------------------------------------------------- events


def test_every_mutation_records_one_event_with_actor_and_before_after(
    registry: Registry, signature: Signature
) -> None:
    registry.create_model("m", signature, task="clf", actor="alice")
    register(registry, "m", b"v1")
    register(registry, "m", b"v2")
    registry.set_alias("m", "production", 1, actor="bob")
    registry.set_alias("m", "production", 2, actor="bob")
    registry.rollback("m", actor="carol")
    registry.set_status("m", 2, "archived", actor="dave", reason="bad canary")
    registry.record_load("m", 1, actor="erin")
    registry.record_unload("m", 1, actor="erin")
    registry.delete_alias("m", "production", actor="frank")

    events = registry.list_events(model="m")
    assert [(e.action, e.actor, e.version) for e in reversed(events)] == [
        ("model.create", "alice", None),
        ("version.register", "test", 1),
        ("version.register", "test", 2),
        ("alias.set", "bob", 1),
        ("alias.set", "bob", 2),
        ("alias.rollback", "carol", 1),
        ("version.status", "dave", 2),
        ("load", "erin", 1),
        ("unload", "erin", 1),
        ("alias.delete", "frank", 1),
    ]
    by_action = {e.action: e.detail for e in events}
    assert by_action["alias.rollback"] == {"alias": "production", "before": 2, "after": 1}
    assert by_action["alias.delete"] == {"alias": "production", "before": 1, "after": None}
    assert by_action["model.create"]["after"]["task"] == "clf"
    assert by_action["version.register"]["after"]["sha256"] == sha(b"v1")
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    assert all(e.time.tzinfo is UTC for e in events)
    assert events[0].time > events[-1].time


def test_failed_mutations_record_nothing(registry: Registry, model: str) -> None:
    register(registry, model, b"v1")
    registry.set_alias(model, "production", 1, actor="ops")
    before = registry.list_events()
    with pytest.raises(PreconditionError):
        registry.rollback(model, actor="ops")
    with pytest.raises(VersionNotFound):
        registry.set_alias(model, "production", 2, actor="ops")
    with pytest.raises(ConflictError):
        registry.set_alias(model, "production", 1, actor="ops", expected=None)
    with pytest.raises(PreconditionError):
        registry.set_status(model, 1, "rejected", actor="ops")
    assert registry.list_events() == before


def test_record_event_and_list_events_filters(
    registry: Registry, model: str, signature: Signature
) -> None:
    registry.create_model("other", signature, actor="test")
    event = registry.record_event(
        "scheduler",
        "promotion.failed",
        model=model,
        version=3,
        detail={"reason": "p99 latency guard", "values": (1, 2)},
    )
    assert event.detail == {"reason": "p99 latency guard", "values": [1, 2]}
    assert registry.list_events(model=model, limit=1) == [event]
    assert registry.list_events(action="promotion.failed") == [event]
    assert [e.model for e in registry.list_events(limit=2)] == [model, "other"]
    assert registry.list_events(limit=0) == []
    with pytest.raises(InvalidArgument, match="limit"):
        registry.list_events(limit=MAX_EVENTS + 1)
    with pytest.raises(InvalidArgument):
        registry.record_event("scheduler", "x", detail={"bad": {1, 2}})


# -------------------------------------------------------------------- loads


def test_loads_are_recorded_idempotently_and_forgotten(
    registry: Registry, model: str, signature: Signature
) -> None:
    register(registry, model, b"v1")
    register(registry, model, b"v2")
    registry.create_model("aaa", signature, actor="test")
    register(registry, "aaa", b"a1")
    assert registry.record_load(model, 2, actor="ops") == LoadRecord(model, 2)
    registry.record_load(model, 2, actor="ops")
    registry.record_load(model, 1, actor="ops")
    registry.record_load("aaa", 1, actor="ops")
    assert registry.list_loads() == [
        LoadRecord("aaa", 1),
        LoadRecord(model, 1),
        LoadRecord(model, 2),
    ]
    assert registry.record_unload(model, 2, actor="ops") is True
    assert registry.record_unload(model, 2, actor="ops") is False
    assert registry.list_loads() == [LoadRecord("aaa", 1), LoadRecord(model, 1)]
    with pytest.raises(VersionNotFound):
        registry.record_load(model, 5, actor="ops")
