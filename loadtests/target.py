"""Target addresses: parsing and the loopback-only rule.

The harness may only send traffic to the machine it runs on unless the user says
otherwise (``allow_remote``); names are never resolved here, because a DNS lookup is
already traffic to somewhere else.
"""

from __future__ import annotations

import ipaddress

from loadtests.errors import TargetError

DEFAULT_TARGET = "127.0.0.1:8001"
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port`` into (host, port); raises TargetError."""
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise TargetError(f"target {address!r}: expected [ipv6]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise TargetError(f"target {address!r}: expected host:port, e.g. {DEFAULT_TARGET}")
    try:
        port = int(port_text)
    except ValueError:
        raise TargetError(
            f"target {address!r}: port must be an integer, got {port_text!r}"
        ) from None
    if not 0 < port < 65536:
        raise TargetError(f"target {address!r}: port must be in 1..65535, got {port}")
    return host, port


def is_loopback(host: str) -> bool:
    """True for loopback literals (127.0.0.0/8, ::1) and the usual localhost names."""
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_target(address: str, *, allow_remote: bool = False) -> str:
    """Validate ``address`` and return it in the form gRPC expects.

    ``unix:`` socket addresses are local by construction. Anything that is not a
    loopback address is refused with TargetError unless ``allow_remote`` is true.
    """
    if address.startswith(("unix:", "unix-abstract:")):
        return address
    host, port = split_address(address)
    if not allow_remote and not is_loopback(host):
        raise TargetError(
            f"target {address!r} is not a loopback address; the harness only loads the local "
            "machine unless --allow-remote is given"
        )
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
