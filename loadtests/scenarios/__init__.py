"""Scenarios: one ``python -m loadtests NAME`` subcommand each, kept in a registry.

A new scenario (``swap``, ``ab``, ``logging``, ``retrain``, ...) is a class with
``name``, ``help``, ``add_arguments`` and ``run`` (see ``base.Scenario``), registered
in ``builtin_registry``. Scenarios that change the server mid-run use
``loadtests.events.CommandSchedule`` with ``gateway_argv(...)``.
"""

from __future__ import annotations

from collections.abc import Iterator

from loadtests.scenarios.base import Context, Outcome, Scenario

__all__ = ["Context", "Outcome", "Scenario", "ScenarioRegistry", "builtin_registry"]


class ScenarioRegistry:
    """Scenarios by name, in registration order (the order ``--help`` lists them)."""

    def __init__(self) -> None:
        self._scenarios: dict[str, Scenario] = {}

    def register(self, scenario: Scenario) -> Scenario:
        if scenario.name in self._scenarios:
            raise ValueError(f"scenario {scenario.name!r} is already registered")
        self._scenarios[scenario.name] = scenario
        return scenario

    def get(self, name: str) -> Scenario:
        return self._scenarios[name]

    def names(self) -> list[str]:
        return list(self._scenarios)

    def __iter__(self) -> Iterator[Scenario]:
        return iter(self._scenarios.values())


def builtin_registry() -> ScenarioRegistry:
    """A registry holding the built-in scenarios."""
    from loadtests.scenarios.ab import AB
    from loadtests.scenarios.compare import Compare
    from loadtests.scenarios.logging import Logging
    from loadtests.scenarios.overload import Overload
    from loadtests.scenarios.retrain import Retrain
    from loadtests.scenarios.steady import Steady
    from loadtests.scenarios.swap import Swap
    from loadtests.scenarios.sweep import Sweep

    registry = ScenarioRegistry()
    for scenario in (Steady(), Sweep(), Overload(), Compare(), Logging(), Retrain(), AB(),
                     Swap()):
        registry.register(scenario)
    return registry
