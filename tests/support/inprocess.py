"""A real gateway in this process: the app runs on its own event loop in a thread.

Tests talk to it over loopback with our generated stubs, exactly as any client would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.app import GatewayApp
from gateway.settings import Settings, load_settings


class InProcessGateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = GatewayApp(settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway-loop",
                                        daemon=True)

    @classmethod
    def start_from(cls, config: Path, data_dir: Path,
                   env: Mapping[str, str] | None = None) -> InProcessGateway:
        """A gateway started from ``config`` on loopback ports the OS picks, keeping its
        state in ``data_dir``; ``env`` stands for the process environment (none by default)."""
        settings = load_settings(config, env=dict(env or {}), overrides={
            "grpc_port": 0, "http_port": 0, "admin_port": 0, "data_dir": data_dir})
        return cls(settings).start()

    def start(self, timeout: float = 60) -> InProcessGateway:
        self._thread.start()
        self.call(self.app.start(), timeout)
        return self

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def run(self, fn: Callable[[], Any], timeout: float = 60) -> Any:
        async def wrapper() -> Any:
            return fn()
        return self.call(wrapper(), timeout)

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.app.ports['grpc']}"

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.app.ports['admin']}"

    @property
    def http_port(self) -> int:
        return self.app.ports["http"]

    def stop(self) -> None:
        try:
            self.call(self.app.stop(), 60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
