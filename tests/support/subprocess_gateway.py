"""A real gateway in a child process (``gateway serve --port-file``), for clients such as
tritonclient whose protobuf symbols clash with ours in one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class SubprocessGateway:
    def __init__(self, config: Path | None, data_dir: Path, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port_file = data_dir / "ports.json"
        self.log_path = data_dir / "gateway.log"
        self.args = [sys.executable, "-m", "gateway", "serve", "--grpc-port", "0",
                     "--http-port", "0", "--admin-port", "0", "--data-dir", str(data_dir),
                     "--port-file", str(self.port_file), *extra]
        if config is not None:
            self.args += ["--config", str(config)]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    def start(self, timeout: float = 90) -> SubprocessGateway:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port_file.exists():
                self.ports = json.loads(self.port_file.read_text())
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n"
                                   f"{self.log_path.read_text()[-4000:]}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"gateway did not start in {timeout}s:\n"
                           f"{self.log_path.read_text()[-4000:]}")

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.ports['admin']}"

    def stop(self, timeout: float = 30) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def __enter__(self) -> SubprocessGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
