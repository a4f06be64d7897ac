"""``[models.NAME.dynamic_batching]``: parsed values, and errors naming file, key, reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import BatchingSettings, ConfigError, load_settings


def batching_of(tmp_path: Path, body: str, extra: str = "") -> BatchingSettings | None:
    path = tmp_path / "gateway.toml"
    path.write_text(f"[models.m]\n{extra}\n[models.m.dynamic_batching]\n{body}\n")
    model = load_settings(path, env={}).model("m")
    assert model is not None
    return model.dynamic_batching


def test_keys_and_defaults(tmp_path: Path) -> None:
    assert batching_of(tmp_path, "max_batch_size = 32\nmax_queue_delay_us = 500\n"
                                 "preferred_batch_sizes = [16, 8]\nmax_queue_size = 100\n"
                       ) == BatchingSettings(
        max_batch_size=32, max_queue_delay_us=500, preferred_batch_sizes=(8, 16),
        max_queue_size=100)
    assert batching_of(tmp_path, "max_batch_size = 4") == (
        BatchingSettings(max_batch_size=4, max_queue_delay_us=0, preferred_batch_sizes=(),
                         max_queue_size=0))
    path = tmp_path / "plain.toml"
    path.write_text("[models.m]\n")
    model = load_settings(path, env={}).model("m")
    assert model is not None and model.dynamic_batching is None


@pytest.mark.parametrize(("body", "key", "reason"), [
    ("max_queue_delay_us = 10", "models.m.dynamic_batching.max_batch_size",
     "required: a positive integer"),
    ("max_batch_size = 0", "models.m.dynamic_batching.max_batch_size",
     "expected a positive number, got 0"),
    ("max_batch_size = 8.5", "models.m.dynamic_batching.max_batch_size",
     "expected an integer, got float"),
    ("max_batch_size = 8\nmax_queue_delay_us = -1",
     "models.m.dynamic_batching.max_queue_delay_us", "expected a non-negative number, got -1"),
    ("max_batch_size = 8\npreferred_batch_sizes = [4, 16]",
     "models.m.dynamic_batching.preferred_batch_sizes",
     "expected integers between 1 and max_batch_size (8), got 16"),
    ("max_batch_size = 8\npreferred_batch_sizes = [4, 4]",
     "models.m.dynamic_batching.preferred_batch_sizes", "expected distinct sizes, got [4, 4]"),
    ("max_batch_size = 8\npreferred_batch_sizes = 4",
     "models.m.dynamic_batching.preferred_batch_sizes", "expected an array, got int"),
    ("max_batch_size = 8\nmax_queue_size = -2", "models.m.dynamic_batching.max_queue_size",
     "expected a non-negative number, got -2"),
    ("max_batch_size = 8\nmax_delay = 3", "models.m.dynamic_batching.max_delay", "unknown key"),
])
def test_bad_values_name_the_key(tmp_path: Path, body: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as error:
        batching_of(tmp_path, body)
    assert (error.value.key, error.value.reason) == (key, reason)
    assert str(error.value).startswith(str(tmp_path / "gateway.toml"))


def test_a_declared_input_without_a_batch_dim_is_refused(tmp_path: Path) -> None:
    declared = ('[[models.m.inputs]]\nname = "features"\ndatatype = "FP32"\n'
                "shape = [1, 20]\n")
    with pytest.raises(ConfigError) as error:
        batching_of(tmp_path, "max_batch_size = 8", extra=declared)
    assert error.value.key == "models.m.dynamic_batching"
    assert "input 'features' has shape [1, 20]" in error.value.reason


def test_dynamic_batching_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[models.m]\ndynamic_batching = 8\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path, env={})
    assert (error.value.key, error.value.reason) == (
        "models.m.dynamic_batching", "expected a table, got int")
