"""Request ids for requests that arrive without one."""

from __future__ import annotations

import itertools
import secrets


class RequestIds:
    """UUID-formatted (version 4, RFC 4122 variant) ids: 74 random bits fixed per process,
    then a 48-bit counter. Unique without a syscall per request (``uuid.uuid4()`` reads
    the OS random source every call, which costs more than the model does here).
    """

    def __init__(self) -> None:
        raw = secrets.token_hex(10)
        variant = "89ab"[int(raw[15], 16) % 4]
        self._prefix = f"{raw[:8]}-{raw[8:12]}-4{raw[12:15]}-{variant}{raw[16:19]}-"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"
