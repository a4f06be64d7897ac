"""Targets: loopback only unless allowed."""

from __future__ import annotations

import pytest

from loadtests.errors import TargetError
from loadtests.target import check_target


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1:8001", "localhost:1", "127.1.2.3:50051", "[::1]:8001", "unix:/tmp/s.sock"],
)
def test_loopback_targets_are_accepted(address: str) -> None:
    assert check_target(address)


@pytest.mark.parametrize("address", ["10.0.0.5:8001", "example.com:443", "[2001:db8::1]:80"])
def test_remote_targets_are_refused_unless_allowed(address: str) -> None:
    with pytest.raises(TargetError, match="--allow-remote"):
        check_target(address)
    assert check_target(address, allow_remote=True)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:port", "127.0.0.1:70000", ":80"])
def test_malformed_targets_say_what_is_expected(address: str) -> None:
    with pytest.raises(TargetError):
        check_target(address)
