"""Content-addressed artifact storage on the local file system.

Layout: ``<root>/sha256/<hex><suffix>``: ``.onnx`` for models, ``.npz`` for datasets
(the suffix names the kind for people; the digest alone identifies the bytes). A file
appears under its final name only once it is complete and on disk (written to a
temporary file in the same directory, fsynced, renamed, directory fsynced), so readers
never see a partial artifact and a crash leaves at most a stray ``.tmp-*`` file. Writes
are idempotent: the same bytes always land at the same path. Reads verify the digest.
The store handles bytes only; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from lifecycle.errors import ArtifactCorrupt, ArtifactMissing, InvalidArgument, InvalidArtifact

__all__ = ["ArtifactStore"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20


class ArtifactStore:
    """Artifacts under ``root``, addressed by the SHA-256 of their bytes; thread-safe.

    Raises ``InvalidArgument`` for a malformed digest, ``InvalidArtifact`` for
    empty or oversized uploads, ``ArtifactMissing`` when no file holds a digest
    and ``ArtifactCorrupt`` when the file's bytes no longer hash to its name.
    """

    def __init__(self, root: Path, *, suffix: str = ".onnx") -> None:
        if not re.fullmatch(r"\.[a-z0-9]+", suffix):
            raise InvalidArgument(f"artifact suffix must look like '.onnx', got {suffix!r}")
        self.root = Path(root)
        self.suffix = suffix
        self._dir = self.root / "sha256"

    def path(self, sha256: str) -> Path:
        """Where the artifact ``sha256`` lives (whether or not it exists)."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise InvalidArgument(
                f"artifact digest must be 64 lowercase hex digits, got {sha256!r}"
            )
        return self._dir / f"{sha256}{self.suffix}"

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; returns (sha256 hex, size in bytes)."""
        return self.put_stream((data,), max_bytes=len(data))

    def put_stream(self, chunks: Iterable[bytes], max_bytes: int) -> tuple[str, int]:
        """Store the concatenated ``chunks``; returns (sha256 hex, size in bytes).

        Raises ``InvalidArtifact`` (and stores nothing) when the artifact is empty
        or grows beyond ``max_bytes``. If the iterable raises, nothing is stored.
        """
        self._dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=self._dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise InvalidArtifact(
                            f"artifact is larger than the limit of {max_bytes} bytes"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                if size == 0:
                    raise InvalidArtifact("artifact is empty")
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self.path(sha)
            if self._intact(final, sha, size):
                tmp.unlink()
            else:
                # Also repairs a corrupt copy: rename replaces it atomically.
                os.replace(tmp, final)
                _fsync_dir(self._dir)
            return sha, size
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read(self, sha256: str) -> bytes:
        """The artifact's bytes, verified against ``sha256``."""
        path = self.path(sha256)
        with _open(path, sha256) as handle:
            data = handle.read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise _corrupt(sha256, actual, len(data), path)
        return data

    def iter_chunks(self, sha256: str, chunk_size: int = _HASH_CHUNK) -> Iterator[bytes]:
        """The artifact in chunks of at most ``chunk_size`` bytes.

        The file is verified before this returns (so ``ArtifactMissing`` and
        ``ArtifactCorrupt`` are raised here, not mid-stream), and the streamed
        bytes are hashed again: a file altered in place meanwhile raises
        ``ArtifactCorrupt`` after the last chunk instead of passing silently.
        """
        if chunk_size <= 0:
            raise InvalidArgument(f"chunk_size must be positive, got {chunk_size}")
        path = self.path(sha256)
        with _open(path, sha256) as handle:
            actual, size = _hash_file(handle)
        if actual != sha256:
            raise _corrupt(sha256, actual, size, path)
        return _stream(path, sha256, chunk_size)

    def _intact(self, path: Path, sha256: str, size: int) -> bool:
        try:
            with path.open("rb") as handle:
                if os.fstat(handle.fileno()).st_size != size:
                    return False
                return _hash_file(handle)[0] == sha256
        except FileNotFoundError:
            return False


def _open(path: Path, sha256: str) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError as err:
        raise ArtifactMissing(f"artifact {sha256} is missing: no file at {path}") from err


def _stream(path: Path, sha256: str, chunk_size: int) -> Iterator[bytes]:
    with _open(path, sha256) as handle:
        digest = hashlib.sha256()
        size = 0
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
            size += len(chunk)
            yield chunk
    if digest.hexdigest() != sha256:
        raise _corrupt(sha256, digest.hexdigest(), size, path)


def _hash_file(handle: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := handle.read(_HASH_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _corrupt(expected: str, actual: str, size: int, path: Path) -> ArtifactCorrupt:
    return ArtifactCorrupt(
        f"artifact {expected} is corrupt: its {size} bytes at {path} hash to {actual}"
    )


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
