"""The gateway configurations ``make bench`` measures, each a system of its own.

``gateway``: the serving core alone (no request log), like the references.
``gateway-uvloop``: the same on uvloop (``[server] uvloop = true``).
``gateway-full``: what users run: two versions of each model in a 50/50 A/B split,
the request log at 100 % with payloads.
``gateway-shadow``: the request log as in ``gateway-full``, every request to version 1,
and 20 % of them mirrored to version 2 (its cost: ``gateway-shadow`` / ``gateway-full``;
routing by a split or to one version costs the same).

The second version of a model is its ONNX file with another ``doc_string`` (other bytes,
the same graph), registered and routed through the ``gateway`` CLI like an operator would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TOKEN = "bench-operator"


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    server: str = ""
    request_log: bool = False
    split: tuple[str, ...] = ()
    shadow: str | None = None

    @property
    def needs_second_version(self) -> bool:
        return bool(self.split) or self.shadow is not None


PROFILES = {
    p.name: p
    for p in (
        Profile("gateway", "serving core, request log off"),
        Profile("gateway-uvloop", "serving core on uvloop, request log off", "uvloop = true\n"),
        Profile("gateway-full", "A/B 50/50 over two versions, request log 100 % with payloads",
                request_log=True, split=("1=50", "2=50")),
        Profile("gateway-shadow", "request log on, version 1 serves, 20 % mirrored to 2",
                request_log=True, split=("1=100",), shadow="2:0.2"),
    )
}


def gateway_config(models_dir: Path, models: Sequence[str], profile: Profile) -> str:
    text = f"[server]\n{profile.server}\n"
    if not profile.request_log:
        text += "[request_log]\nenabled = false\n\n"
    if profile.needs_second_version:
        text += f'[auth.tokens.bench]\ntoken = "{TOKEN}"\nrole = "operator"\n\n'
    return text + "".join(
        f'[models.{m}]\nartifact = "{(models_dir / f"{m}.onnx").resolve()}"\n\n' for m in models
    )


def second_version(source: Path, target: Path) -> Path:
    """``source`` with another ``doc_string``: the same graph, a different sha256."""
    import onnx

    model = onnx.load(str(source))
    model.doc_string = (model.doc_string + " (bench: version 2)").strip()
    onnx.save(model, str(target))
    return target


def setup_commands(profile: Profile, model: str, version_file: Path) -> list[list[str]]:
    """``gateway`` CLI argument lists (without the executable and connection options)."""
    if not profile.needs_second_version:
        return []
    policy = ["traffic", "set", model, *profile.split]
    if profile.shadow:
        policy += ["--shadow", profile.shadow]
    return [["register", model, str(version_file)], policy]
