"""The router: every model's current routing table, replaced whole on each change."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Generic, TypeVar

from gateway.errors import ModelNotFound
from gateway.routing.table import RandomSource, Route, RoutingTable, resolve

__all__ = ["Router"]

H = TypeVar("H")


class Router(Generic[H]):
    """Holds one ``RoutingTable`` per model.

    Readers take no lock: ``route`` reads the current mapping once, and ``install`` and
    ``remove`` publish a new mapping in one assignment (copy on write; writers serialize
    on a lock), so a request sees a model's old table or its new one, never a mix, and no
    route of a replaced table is handed out after ``install`` returns.
    """

    def __init__(self) -> None:
        self._tables: Mapping[str, RoutingTable[H]] = {}
        self._write = threading.Lock()

    def table(self, model: str) -> RoutingTable[H] | None:
        return self._tables.get(model)

    def tables(self) -> Mapping[str, RoutingTable[H]]:
        """A consistent snapshot of every installed table (do not mutate)."""
        return self._tables

    def install(self, table: RoutingTable[H]) -> RoutingTable[H] | None:
        """Make ``table`` its model's table; returns the one it replaced."""
        with self._write:
            previous = self._tables.get(table.model)
            self._tables = {**self._tables, table.model: table}
            return previous

    def remove(self, model: str) -> RoutingTable[H] | None:
        with self._write:
            tables = dict(self._tables)
            previous = tables.pop(model, None)
            self._tables = tables
            return previous

    def route(
        self,
        model: str,
        *,
        pinned_version: str = "",
        routing_key: str | None = None,
        rng: RandomSource,
    ) -> Route[H]:
        """Resolve one request (see ``table.resolve``); ``ModelNotFound`` without a table."""
        table = self._tables.get(model)
        if table is None:
            raise ModelNotFound(model)
        return resolve(table, pinned_version=pinned_version, routing_key=routing_key, rng=rng)
