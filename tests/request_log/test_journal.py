"""The journal on its own: frames, segments, the checkpoint, torn tails, the budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.request_log import Journal, JournalFull


def payloads(start: int, count: int, size: int = 100) -> list[bytes]:
    return [str(i).encode().ljust(size, b".") for i in range(start, start + count)]


def opened(directory: Path, *, segment_bytes: int = 4096, budget_bytes: int = 1 << 20
           ) -> Journal:
    journal = Journal(directory, segment_bytes=segment_bytes, budget_bytes=budget_bytes)
    journal.open()
    return journal


def read_all(journal: Journal, start: int | None = None) -> list[bytes]:
    position = journal.committed if start is None else start
    found, _ = journal.read(position, journal.end, 1_000_000)
    return found


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_batches_read_back_in_order_across_segments(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    positions = [journal.append(payloads(i * 10, 10)) for i in range(10)]
    assert positions[0][0] == 0
    assert all(a[1] == b[0] for a, b in zip(positions, positions[1:], strict=False))
    assert len(segments(tmp_path)) >= 3
    assert read_all(journal) == payloads(0, 100)
    # Bounded reads resume exactly where they stopped.
    first, position = journal.read(0, journal.end, 7)
    rest, end = journal.read(position, journal.end, 1000)
    assert first + rest == payloads(0, 100) and end == journal.end
    journal.close(trim=False)


def test_commit_deletes_segments_behind_it_and_reopen_resumes_at_the_checkpoint(
    tmp_path: Path,
) -> None:
    journal = opened(tmp_path)
    positions = [journal.append(payloads(i * 10, 10)) for i in range(10)]
    before = journal.size_bytes
    journal.commit(positions[6][1])
    assert journal.size_bytes < before
    assert read_all(journal) == payloads(70, 30)
    journal.close(trim=False)

    reopened = Journal(tmp_path, segment_bytes=4096, budget_bytes=1 << 20)
    recovery = reopened.open()
    assert recovery.pending_frames == 30 and recovery.truncated_bytes == 0
    assert reopened.committed == positions[6][1]
    assert read_all(reopened) == payloads(70, 30)
    reopened.commit(reopened.end)
    reopened.close(trim=True)
    assert segments(tmp_path) == []

    # Offsets keep growing after a trim, so the checkpoint stays meaningful.
    again = opened(tmp_path)
    start, _ = again.append(payloads(0, 1))
    assert start == positions[-1][1]
    assert read_all(again) == payloads(0, 1)
    again.close(trim=False)


@pytest.mark.parametrize("tail", [b"\x10\x00", b"\xff\x00\x00\x00\x00\x00\x00\x00abc", "crc"])
def test_a_torn_or_corrupt_tail_is_cut_at_open(tmp_path: Path, tail: object) -> None:
    journal = opened(tmp_path, segment_bytes=1 << 20)
    journal.append(payloads(0, 5))
    journal.close(trim=False)
    (segment,) = segments(tmp_path)
    good_size = segment.stat().st_size
    if tail == "crc":
        # A whole frame whose checksum does not match its payload.
        tail = (4).to_bytes(4, "little") + (0).to_bytes(4, "little") + b"oops"
    assert isinstance(tail, bytes)
    with open(segment, "ab") as f:
        f.write(tail)
    reopened = Journal(tmp_path, segment_bytes=1 << 20, budget_bytes=1 << 20)
    recovery = reopened.open()
    assert recovery.truncated_bytes == len(tail)
    assert segment.stat().st_size == good_size
    assert recovery.pending_frames == 5
    assert read_all(reopened) == payloads(0, 5)
    reopened.append(payloads(5, 1))
    assert read_all(reopened) == payloads(0, 6)
    reopened.close(trim=False)


def test_the_budget_refuses_batches_until_a_commit_frees_space(tmp_path: Path) -> None:
    journal = opened(tmp_path, segment_bytes=1024, budget_bytes=4096)
    appended: list[tuple[int, int]] = []
    with pytest.raises(JournalFull):
        while True:
            appended.append(journal.append(payloads(len(appended) * 5, 5)))
    assert journal.size_bytes <= 4096
    journal.commit(appended[1][1])
    journal.append(payloads(100, 5))
    assert journal.size_bytes <= 4096
    # Everything committed: even a batch bigger than the budget goes into the emptied journal.
    journal.commit(journal.end)
    journal.append(payloads(0, 50))
    assert read_all(journal) == payloads(0, 50)
    journal.close(trim=False)


def test_frames_larger_than_a_read_chunk_are_read_whole(tmp_path: Path) -> None:
    journal = opened(tmp_path, segment_bytes=64 << 20, budget_bytes=64 << 20)
    big = [b"a" * (9 << 20), b"b" * 10]
    journal.append(big)
    assert read_all(journal) == big
    journal.close(trim=False)
