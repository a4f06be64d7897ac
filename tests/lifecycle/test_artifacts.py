"""The content-addressed artifact store on a real file system."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lifecycle.artifacts import ArtifactStore
from lifecycle.errors import (
    ArtifactCorrupt,
    ArtifactMissing,
    InvalidArgument,
    InvalidArtifact,
)
from tests.lifecycle.helpers import sha

PAYLOAD = b"\x08\x07" + bytes(range(256)) * 40


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def files_under(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_put_stores_by_digest_and_reads_back(store: ArtifactStore, tmp_path: Path) -> None:
    digest, size = store.put(PAYLOAD)
    assert (digest, size) == (sha(PAYLOAD), len(PAYLOAD))
    assert store.path(digest) == tmp_path / "artifacts" / "sha256" / f"{digest}.onnx"
    assert store.exists(digest)
    assert store.read(digest) == PAYLOAD
    assert b"".join(store.iter_chunks(digest, 1000)) == PAYLOAD
    assert max(len(c) for c in store.iter_chunks(digest, 1000)) == 1000


def test_put_is_idempotent(store: ArtifactStore) -> None:
    first = store.put(PAYLOAD)
    second = store.put(PAYLOAD)
    assert first == second
    assert files_under(store.root) == [f"{first[0]}.onnx"]


def test_concurrent_puts_of_the_same_bytes_leave_one_intact_file(store: ArtifactStore) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: store.put(PAYLOAD), range(16)))
    assert set(results) == {(sha(PAYLOAD), len(PAYLOAD))}
    assert files_under(store.root) == [f"{sha(PAYLOAD)}.onnx"]
    assert store.read(sha(PAYLOAD)) == PAYLOAD


def test_put_stream_hashes_chunks(store: ArtifactStore) -> None:
    chunks = [PAYLOAD[i : i + 777] for i in range(0, len(PAYLOAD), 777)]
    assert store.put_stream(iter(chunks), max_bytes=len(PAYLOAD)) == (
        sha(PAYLOAD),
        len(PAYLOAD),
    )
    assert store.read(sha(PAYLOAD)) == PAYLOAD


def test_oversized_upload_is_refused_and_leaves_nothing(store: ArtifactStore) -> None:
    with pytest.raises(InvalidArtifact, match="limit of 100 bytes"):
        store.put_stream([b"x" * 60, b"y" * 60], max_bytes=100)
    assert files_under(store.root) == []


def test_empty_artifact_is_invalid(store: ArtifactStore) -> None:
    with pytest.raises(InvalidArtifact, match="empty"):
        store.put(b"")
    with pytest.raises(InvalidArtifact, match="empty"):
        store.put_stream([b"", b""], max_bytes=10)
    assert files_under(store.root) == []


def test_an_upload_that_fails_midway_leaves_nothing(store: ArtifactStore) -> None:
    def broken() -> Iterator[bytes]:
        yield b"first half"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put_stream(broken(), max_bytes=1000)
    assert files_under(store.root) == []


def test_missing_artifact(store: ArtifactStore) -> None:
    digest = sha(b"never stored")
    assert not store.exists(digest)
    with pytest.raises(ArtifactMissing, match=digest) as info:
        store.read(digest)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ArtifactMissing):
        store.iter_chunks(digest)


def test_a_flipped_byte_is_detected(store: ArtifactStore) -> None:
    digest, _ = store.put(PAYLOAD)
    path = store.path(digest)
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(ArtifactCorrupt, match=f"artifact {digest} is corrupt"):
        store.read(digest)
    with pytest.raises(ArtifactCorrupt):
        store.iter_chunks(digest)
    # Putting the right bytes again repairs the copy.
    store.put(PAYLOAD)
    assert store.read(digest) == PAYLOAD


def test_a_file_changed_while_streaming_fails_at_the_end(store: ArtifactStore) -> None:
    digest, _ = store.put(PAYLOAD)
    chunks = store.iter_chunks(digest, 1024)
    first = next(chunks)
    with store.path(digest).open("r+b") as handle:
        handle.seek(5000)
        handle.write(b"\xff\xff")
    with pytest.raises(ArtifactCorrupt):
        b"".join([first, *chunks])


@pytest.mark.parametrize("bad", ["", "abc", "../../etc/passwd", sha(b"x").upper(), "g" * 64])
def test_malformed_digests_are_refused(store: ArtifactStore, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        store.path(bad)
    with pytest.raises(InvalidArgument):
        store.read(bad)
