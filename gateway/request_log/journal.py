"""The request log's write-ahead journal: append-only, segmented, checksummed frames.

Layout of the directory:

    <base>.seg     segments, named by the logical offset of their first byte (20 digits)
    checkpoint     the logical offset up to which the database holds every record

A frame is ``u32 length · u32 crc32(payload) · payload`` (little-endian). Logical
offsets run across segments, so a position is one integer: a new segment starts where
the previous one ended. ``append`` writes a whole batch and fsyncs it before returning;
``commit`` (after the database insert committed) advances the checkpoint and deletes
the segments wholly behind it; the checkpoint file is rewritten at most every
``checkpoint_interval_s`` (and whenever a segment is deleted, and at close): a stale one
only makes a replay after a crash longer. Only frames below ``end`` (fsynced) are ever read.

``open`` recovers after a crash: each segment is scanned and cut at its first frame that
is incomplete or fails its checksum (a write torn by kill -9); the records past the
checkpoint are what the caller must replay. A stale checkpoint only makes the replay
longer: inserts are idempotent.

Thread-safety: one thread appends; one other thread reads and commits.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Journal", "JournalFull", "Recovery"]

log = logging.getLogger("gateway.request_log")

_FRAME = struct.Struct("<II")
MAX_FRAME = 256 << 20
_READ_CHUNK = 8 << 20
_SUFFIX = ".seg"
_CHECKPOINT = "checkpoint"


class JournalFull(Exception):
    """The batch does not fit in the journal's disk budget (nothing was written)."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """What ``open`` found: frames past the checkpoint (to replay), bytes cut off as torn."""

    segments: int
    pending_frames: int
    truncated_bytes: int


@dataclass(slots=True)
class _Segment:
    base: int
    size: int
    path: Path

    @property
    def end(self) -> int:
        return self.base + self.size


class Journal:
    """See the module docstring. ``budget_bytes`` caps the bytes on disk: ``append`` raises
    ``JournalFull`` rather than exceed it (a batch larger than the whole budget is still
    accepted into an empty journal, so no batch can wedge it)."""

    def __init__(self, directory: Path, *, segment_bytes: int, budget_bytes: int,
                 checkpoint_interval_s: float = 1.0) -> None:
        if segment_bytes < 1 or budget_bytes < segment_bytes:
            raise ValueError(
                f"need 0 < segment_bytes <= budget_bytes, got {segment_bytes} and {budget_bytes}"
            )
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._budget = budget_bytes
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._size = 0
        self._end = 0
        self._committed = 0
        self._closed = False
        self._checkpoint_interval_s = checkpoint_interval_s
        self._checkpoint_due = 0.0

    # ------------------------------------------------------------------ state

    @property
    def end(self) -> int:
        """Logical offset after the last fsynced frame."""
        return self._end

    @property
    def committed(self) -> int:
        """Logical offset up to which every record is in the database."""
        return self._committed

    @property
    def size_bytes(self) -> int:
        """Bytes of all segments on disk."""
        return self._size

    # ------------------------------------------------------------------ recovery

    def open(self) -> Recovery:
        """Scan the directory, cut torn frames, and open the active segment."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._committed = self._read_checkpoint()
        truncated = pending = 0
        for path in sorted(self.directory.glob("*" + _SUFFIX)):
            try:
                base = int(path.stem)
            except ValueError:
                continue
            valid, frames_after = _scan(path, base, self._committed)
            size = path.stat().st_size
            if valid < size:
                log.warning("request log journal: cutting a torn or corrupt tail", extra={
                    "event": "journal_truncated", "segment": path.name, "bytes": size - valid})
                with open(path, "r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())
                truncated += size - valid
            pending += frames_after
            self._segments.append(_Segment(base, valid, path))
        self._size = sum(s.size for s in self._segments)
        last_end = self._segments[-1].end if self._segments else 0
        self._end = max(last_end, self._committed)
        self._committed = min(self._committed, self._end)
        self._release()
        if not self._segments or self._segments[-1].size >= self._segment_bytes:
            self._new_segment(self._end)
        else:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        return Recovery(len(self._segments), pending, truncated)

    def _read_checkpoint(self) -> int:
        try:
            return int((self.directory / _CHECKPOINT).read_text().strip())
        except (OSError, ValueError):
            return 0

    # ------------------------------------------------------------------ appending

    def append(self, payloads: list[bytes]) -> tuple[int, int]:
        """Write ``payloads`` as frames, fsync; return their ``(start, end)`` positions.

        Raises ``JournalFull`` (nothing written) or ``OSError`` from the disk (the partial
        write is cut off again when possible)."""
        parts: list[bytes] = []
        pack = _FRAME.pack
        crc32 = zlib.crc32
        for payload in payloads:
            parts.append(pack(len(payload), crc32(payload)))
            parts.append(payload)
        data = b"".join(parts)
        with self._lock:
            if self._size + len(data) > self._budget:
                if self._committed >= self._end and self._segments:
                    # Only already-inserted records hold the space: start afresh.
                    self._rotate_locked(drop_active=True)
                if self._size + len(data) > self._budget and self._size > 0:
                    raise JournalFull(
                        f"journal holds {self._size} bytes, a {len(data)}-byte batch would "
                        f"pass its budget of {self._budget} bytes"
                    )
            segment = self._segments[-1]
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, segment.size)
            except OSError:
                log.exception("request log journal: cannot cut a failed write")
            raise
        start = segment.end
        with self._lock:
            segment.size += len(data)
            self._size += len(data)
            self._end = segment.end
            if segment.size >= self._segment_bytes:
                self._rotate_locked(drop_active=False)
        return start, start + len(data)

    def _rotate_locked(self, *, drop_active: bool) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if drop_active:
            active = self._segments.pop()
            active.path.unlink(missing_ok=True)
            self._size -= active.size
        self._new_segment(self._end)

    def _new_segment(self, base: int) -> None:
        path = self.directory / f"{base:020d}{_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fsync_dir(self.directory)
        self._segments.append(_Segment(base, 0, path))

    def wait_for_space(self, timeout: float) -> None:
        """Block until a commit frees space, or ``timeout`` seconds."""
        with self._space:
            self._space.wait(timeout)

    # ------------------------------------------------------------------ reading

    def read(self, start: int, limit: int, max_frames: int) -> tuple[list[bytes], int]:
        """Payloads of the frames in ``[start, limit)`` (``limit <= end``), at most
        ``max_frames``; returns them and the position after the last one (``limit`` when
        the range is exhausted). A corrupt frame ends its segment's range (logged)."""
        with self._lock:
            segments = [(s.base, s.end, s.path) for s in self._segments
                        if s.end > start and s.base < limit]
        payloads: list[bytes] = []
        for base, seg_end, path in segments:
            pos = max(start, base)
            stop = min(seg_end, limit)
            with open(path, "rb") as f:
                while pos < stop and len(payloads) < max_frames:
                    f.seek(pos - base)
                    chunk = f.read(min(stop - pos, _READ_CHUNK))
                    used, frames, bad = _parse(chunk, 0, max_frames - len(payloads))
                    payloads.extend(frames)
                    if bad:
                        log.error("request log journal: corrupt frame, skipping the rest of "
                                  "its segment", extra={"event": "journal_corrupt",
                                                        "segment": path.name, "offset": pos})
                        pos = stop
                        break
                    if used == 0:
                        # One frame longer than a chunk: read exactly that frame.
                        length, _ = _FRAME.unpack_from(chunk)
                        f.seek(pos - base)
                        used, frames, bad = _parse(f.read(_FRAME.size + length), 0, 1)
                        if used == 0 or bad:
                            pos = stop
                            break
                        payloads.extend(frames)
                    pos += used
            if len(payloads) >= max_frames:
                return payloads, pos
        return payloads, limit

    # ------------------------------------------------------------------ trimming

    def commit(self, position: int) -> None:
        """Record that every frame below ``position`` is in the database: advance the
        checkpoint and delete the segments wholly behind it."""
        with self._lock:
            if position <= self._committed:
                return
            self._committed = position
            released = self._release()
            self._space.notify_all()
        now = time.monotonic()
        # Rewriting the file costs more than a batch's insert; a stale one is harmless.
        if released or now >= self._checkpoint_due:
            self._checkpoint_due = now + self._checkpoint_interval_s
            self._write_checkpoint(position)

    def _release(self) -> bool:
        # Closed segments only: the last one is where appends go.
        released = False
        while len(self._segments) > 1 and self._segments[0].end <= self._committed:
            segment = self._segments.pop(0)
            segment.path.unlink(missing_ok=True)
            self._size -= segment.size
            released = True
        return released

    def _write_checkpoint(self, position: int) -> None:
        if self._closed:
            return
        tmp = self.directory / (_CHECKPOINT + ".tmp")
        try:
            tmp.write_text(str(position))
            os.replace(tmp, self.directory / _CHECKPOINT)
        except OSError:
            # Only costs a longer (idempotent) replay after a crash.
            log.exception("request log journal: cannot write the checkpoint")

    def close(self, *, trim: bool) -> None:
        """Close the journal; with ``trim`` (every record committed) delete its segments."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if trim and self._committed >= self._end:
                for segment in self._segments:
                    segment.path.unlink(missing_ok=True)
                self._segments.clear()
                self._size = 0
            position = self._committed
        self._write_checkpoint(position)
        self._closed = True


def _parse(buf: bytes, offset: int, max_frames: int) -> tuple[int, list[bytes], bool]:
    """Complete frames of ``buf`` from ``offset``: (offset after them, payloads, whether a
    corrupt frame stopped the parse)."""
    frames: list[bytes] = []
    size = len(buf)
    header = _FRAME.size
    crc32 = zlib.crc32
    while len(frames) < max_frames and offset + header <= size:
        length, crc = _FRAME.unpack_from(buf, offset)
        if length > MAX_FRAME:
            return offset, frames, True
        end = offset + header + length
        if end > size:
            break
        payload = buf[offset + header:end]
        if crc32(payload) != crc:
            return offset, frames, True
        frames.append(payload)
        offset = end
    return offset, frames, False


def _scan(path: Path, base: int, checkpoint: int) -> tuple[int, int]:
    """Bytes of valid frames at the start of a segment, and how many lie past the
    checkpoint."""
    with open(path, "rb") as f:
        data = f.read()
    valid = after = 0
    while True:
        end, frames, _ = _parse(data, valid, 1)
        if not frames:
            return valid, after
        if base + valid >= checkpoint:
            after += 1
        valid = end


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
