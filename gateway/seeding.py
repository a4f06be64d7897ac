"""Config seeds the registry: a model the database has never seen is created from its
``[models.NAME]`` table; a model without versions gets version 1 from ``artifact`` (or the
built-in ``bootstrap`` trainer) with ``production`` pointing at it. After that the database
is authoritative and the file is not consulted for that model again.
"""

from __future__ import annotations

import logging

from gateway.runtime import OnnxModel
from gateway.settings import ConfigError, ModelSettings, Settings
from lifecycle.artifacts import ArtifactStore
from lifecycle.domain import PRODUCTION, Signature, TensorSpec
from lifecycle.errors import ModelNotFound
from lifecycle.registry import Registry

log = logging.getLogger("gateway.seeding")
ACTOR = "config"


def seed_models(settings: Settings, registry: Registry, artifacts: ArtifactStore) -> None:
    for model in settings.models:
        _seed(settings.source, model, registry, artifacts)


def _declared(model: ModelSettings) -> Signature | None:
    if not model.inputs and not model.outputs:
        return None
    return Signature(
        inputs=tuple(TensorSpec(t.name, t.datatype, t.shape) for t in model.inputs),
        outputs=tuple(TensorSpec(t.name, t.datatype, t.shape) for t in model.outputs),
    )


def _seed(source: str, model: ModelSettings, registry: Registry, artifacts: ArtifactStore) -> None:
    try:
        existing = registry.get_model(model.name)
    except ModelNotFound:
        existing = None
    if existing is not None and registry.list_versions(model.name):
        return
    data, metadata = _initial_artifact(model)
    declared = _declared(model)
    signature = declared
    if data is not None:
        onnx = OnnxModel(data, model.runtime)
        signature = onnx.signature
        if declared is not None:
            mismatch = declared.mismatch(onnx.signature)
            if mismatch:
                raise ConfigError(source, f"models.{model.name}.inputs",
                                  f"does not match the artifact: {mismatch}")
    if signature is None:
        raise ConfigError(source, f"models.{model.name}",
                          "needs an artifact, a bootstrap or declared inputs and outputs")
    if existing is None:
        registry.ensure_model(model.name, signature, task=model.task, actor=ACTOR)
    if data is None:
        return
    sha256, size = artifacts.put(data)
    version, _ = registry.register_version(
        model.name, sha256=sha256, size=size, description=str(metadata.pop("description", "")),
        metadata=metadata, actor=ACTOR,
    )
    registry.set_alias(model.name, PRODUCTION, version.version, actor=ACTOR)
    log.info("seeded model", extra={"event": "seeded", "model": model.name,
                                    "version": version.version, "sha256": sha256})


def _initial_artifact(model: ModelSettings) -> tuple[bytes | None, dict[str, object]]:
    if model.artifact is not None:
        return model.artifact.read_bytes(), {
            "source": str(model.artifact), "description": f"seeded from {model.artifact.name}"}
    if model.bootstrap == "synthetic_fraud":
        from lifecycle.bootstrap import train_fraud_demo

        demo = train_fraud_demo()
        message = f"bootstrap: trained '{model.name}' on synthetic transactions, " \
                  f"holdout ROC AUC {demo.holdout_auc:.3f}"
        print(message, flush=True)
        log.info(message, extra={"event": "bootstrap", "model": model.name,
                                 "holdout_auc": demo.holdout_auc})
        return demo.onnx_bytes, {
            "source": "bootstrap:synthetic_fraud",
            "description": "demo model trained on the synthetic transactions generator",
            "params": {"estimator": demo.estimator, **demo.params},
            "metrics": {"holdout_auc": demo.holdout_auc},
        }
    return None, {}
