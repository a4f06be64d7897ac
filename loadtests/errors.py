"""Errors raised by the load-testing harness.

Tree::

    LoadtestError                 base of everything the harness raises on purpose
    ├── ConfigError (ValueError)  run options are inconsistent (bounds, rates, concurrency)
    ├── TargetError (ValueError)  a target address is malformed or not allowed
    ├── WorkloadError (ValueError) input specs, payload files, pool options are unusable
    ├── DiscoveryError            the server could not tell us the model's inputs
    ├── RunError                  a run could not be carried out (unreachable, worker failed)
    └── CommandError              a scheduled or helper command failed

The CLI prints these as one line and exits with status 2; anything else is a bug.
"""

from __future__ import annotations


class LoadtestError(Exception):
    """Base class of the harness's own errors."""


class ConfigError(LoadtestError, ValueError):
    """Run options are out of range or contradict each other."""


class TargetError(LoadtestError, ValueError):
    """A target address is malformed or points somewhere the harness must not send traffic."""


class WorkloadError(LoadtestError, ValueError):
    """The workload (input specs, payload source, request pool) cannot be built."""


class DiscoveryError(LoadtestError):
    """ModelMetadata did not give a usable input signature."""


class RunError(LoadtestError):
    """A load run could not be carried out."""


class CommandError(LoadtestError):
    """A command run by a scenario (e.g. the gateway CLI) failed."""
