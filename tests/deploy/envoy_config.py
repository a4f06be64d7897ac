"""Validate an Envoy bootstrap file against Envoy's own API, offline.

The schema is Envoy's: the protobuf messages generated from envoyproxy/data-plane-api
(the `xds-protos` package, which gRPC's xDS client uses) and the protoc-gen-validate rules
Envoy annotates them with (checked by `protoc-gen-validate`'s Python runtime). Nothing
here restates what a field may hold. Envoy itself, given the file, parses the YAML as JSON
into `envoy.config.bootstrap.v3.Bootstrap` rejecting unknown fields (typed `Any` configs
included) and runs the PGV checks; so does `load_bootstrap`. It is stricter on one point:
a deprecated field, which Envoy only warns about until a release removes it, is an error.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from envoy.annotations import deprecation_pb2
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import any_pb2, json_format, symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from protoc_gen_validate import validator

TYPE_URL_PREFIX = "type.googleapis.com/"


class EnvoyConfigError(ValueError):
    """The file is not a bootstrap Envoy would accept; the message says where and why."""


def load_bootstrap(path: Path) -> bootstrap_pb2.Bootstrap:
    """Parse ``path`` into a Bootstrap message, strictly; raises ``EnvoyConfigError``."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise EnvoyConfigError(f"{path}: expected a mapping at the top level")
    for type_url in set(_type_urls(raw)):
        _import_type(type_url)
    bootstrap = bootstrap_pb2.Bootstrap()
    try:
        # ignore_unknown_fields=False is the default: an unknown key anywhere, inside
        # typed_config Any messages too, is a ParseError naming the field.
        json_format.ParseDict(raw, bootstrap, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise EnvoyConfigError(f"{path}: {exc}") from exc
    # Leaves first, so a failure is reported at the innermost message that breaks a rule
    # (PGV's runtime recurses into sub-messages itself and would report it at the root).
    for where, message in reversed(list(walk(bootstrap))):
        try:
            validator.validate(message)
        except validator.ValidationFailed as exc:
            raise EnvoyConfigError(f"{path}: {where}: {exc}") from exc
        for field, value in message.ListFields():
            if _deprecated(field, value):
                raise EnvoyConfigError(f"{path}: {where}.{field.name}: deprecated in Envoy's API")
    return bootstrap


def walk(message: Message, where: str = "bootstrap") -> Iterator[tuple[str, Message]]:
    """Every message in the tree with its path, ``Any`` contents unpacked: PGV's runtime
    does not look inside an ``Any``, so each unpacked one is validated on its own."""
    if isinstance(message, any_pb2.Any):
        message = unpack(message)
        where = f"{where}<{message.DESCRIPTOR.full_name}>"
    yield where, message
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            entry_value = field.message_type.fields_by_name["value"]
            if entry_value.type == FieldDescriptor.TYPE_MESSAGE:
                for key, item in value.items():
                    yield from walk(item, f"{where}.{field.name}[{key!r}]")
        elif field.is_repeated:
            for index, item in enumerate(value):
                yield from walk(item, f"{where}.{field.name}[{index}]")
        else:
            yield from walk(value, f"{where}.{field.name}")


def unpack(packed: any_pb2.Any) -> Message:
    name = packed.type_url.removeprefix(TYPE_URL_PREFIX)
    _import_type(packed.type_url)
    cls = symbol_database.Default().GetSymbol(name)
    message: Message = cls()
    if not packed.Unpack(message):
        raise EnvoyConfigError(f"cannot unpack {packed.type_url}")
    return message


def _deprecated(field: FieldDescriptor, value: Any) -> bool:
    options = field.GetOptions()
    if options.deprecated or options.HasExtension(deprecation_pb2.deprecated_at_minor_version):
        return True
    if field.type == FieldDescriptor.TYPE_ENUM:
        values = value if field.is_repeated else [value]
        for number in values:
            enum_value = field.enum_type.values_by_number.get(number)
            if enum_value is not None and enum_value.GetOptions().deprecated:
                return True
    return False


def _type_urls(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("@type"), str):
            yield node["@type"]
        for value in node.values():
            yield from _type_urls(value)
    elif isinstance(node, list):
        for value in node:
            yield from _type_urls(value)


def _import_type(type_url: str) -> None:
    """Register the message a type URL names: import every generated module of its
    proto package (the file name inside the package is not part of the URL)."""
    if not type_url.startswith(TYPE_URL_PREFIX):
        raise EnvoyConfigError(f"type URL {type_url!r} does not start with {TYPE_URL_PREFIX}")
    name = type_url.removeprefix(TYPE_URL_PREFIX)
    package = name.rpartition(".")[0]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise EnvoyConfigError(f"{type_url}: no such proto package in Envoy's API") from exc
    for info in pkgutil.iter_modules(module.__path__):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")
    try:
        symbol_database.Default().pool.FindMessageTypeByName(name)
    except KeyError as exc:
        raise EnvoyConfigError(f"{type_url}: no such message in Envoy's API") from exc
