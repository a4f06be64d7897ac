"""Run the ``gateway`` CLI as a subprocess, as an operator would.

Imports no generated protobuf code, so the tritonclient suite can use it too."""

from __future__ import annotations

import os
import subprocess
import sys

OPERATOR_TOKEN = "ops-secret"


def gateway_cli(target: str, *args: str, token: str | None = OPERATOR_TOKEN,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``gateway ARGS`` with ``$GATEWAY_ADMIN_TARGET`` and ``$GATEWAY_ADMIN_TOKEN`` set
    (the token left unset when None); nothing else of the caller's GATEWAY_* leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_ADMIN_TARGET"] = target
    if token is not None:
        env["GATEWAY_ADMIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert result.stderr == ""
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, f"exit {result.returncode}: {result.stdout}"
    assert result.stdout == ""
    return result.stderr.strip()
