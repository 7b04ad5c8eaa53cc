"""Event files record by record, reading past damaged records.

An event file is a sequence of TFRecords: ``uint64 length``, ``uint32`` masked
CRC-32C of the length, ``length`` bytes of data, ``uint32`` masked CRC-32C of
the data. TensorBoard's readers stop at the first record whose checksum fails
(the Python loader), or take its bytes as they are (the Rust data server reads
without checksums). :func:`read_records` checks both checksums, leaves a
damaged record out and goes on: after a record whose data checksum fails, at
the next record (its length was sound); after a damaged length, at the next
offset where a record with sound checksums starts. Each damaged stretch is
reported as a :class:`Damage`. A last record cut off by a writer that is still
writing (or was killed) is not damage: reading stops there.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

__all__ = ["Damage", "read_records", "record_spans"]

_HEADER = 12  # uint64 length + uint32 masked CRC of it
_FOOTER = 4  # uint32 masked CRC of the data
_SCAN_CHUNK = 1 << 16  # bytes searched at a time for the next sound record


class Damage(NamedTuple):
    """A stretch of an event file left out.

    Attributes:
        offset: where it starts, in bytes from the start of the file.
        size: its length in bytes.
        data: the record's data when only its data checksum failed (it may
            still parse, naming its step), else None.
        reason: what was wrong, in words.
    """

    offset: int
    size: int
    data: bytes | None
    reason: str


def read_records(path: str | os.PathLike, damage: list[Damage]) -> Iterator[bytes]:
    """The data of every sound record of the file at ``path``, in order;
    damaged stretches are appended to ``damage`` as they are passed."""
    with open(path, "rb") as f:
        for offset, length, end in _sound_lengths(f, os.path.getsize(path), damage):
            f.seek(offset + _HEADER)
            data = f.read(length)
            (data_crc,) = struct.unpack("<I", f.read(_FOOTER))
            if masked_crc32c(data) != data_crc:
                reason = "record checksum does not match its data"
                damage.append(Damage(offset, end - offset, data, reason))
            else:
                yield data


def record_spans(path: str | os.PathLike) -> list[tuple[int, int]]:
    """``(offset, length)`` of the data of every record whose length is sound,
    without reading or checking the data (~12 bytes read per record): where a
    file's records are, quickly. A damaged length is passed over to the next
    sound record, as :func:`read_records` does."""
    with open(path, "rb") as f:
        return [
            (offset + _HEADER, length)
            for offset, length, _ in _sound_lengths(f, os.path.getsize(path), [])
        ]


def _sound_lengths(
    f: BinaryIO, size: int, damage: list[Damage]
) -> Iterator[tuple[int, int, int]]:
    """``(offset, data length, end)`` of every record of ``f`` whose length
    checksum holds, in order, up to a last record cut off by a writer still
    writing; a damaged length is appended to ``damage`` and passed over to the
    next offset where a record with sound checksums starts."""
    offset = 0
    while offset + _HEADER <= size:
        f.seek(offset)
        header = f.read(_HEADER)
        length, crc = struct.unpack("<QI", header)
        if masked_crc32c(header[:8]) != crc:
            found = _next_sound_record(f, offset + 1, size)
            end = size if found is None else found
            reason = "corrupt record length (its checksum does not match)"
            damage.append(Damage(offset, end - offset, None, reason))
            if found is None:
                return
            offset = found
            continue
        end = offset + _HEADER + length + _FOOTER
        if end > size:
            return  # an incomplete last record: a writer still writing
        yield offset, length, end
        offset = end


def _next_sound_record(f: BinaryIO, start: int, size: int) -> int | None:
    """The first offset from ``start`` at which a whole record with sound
    checksums begins, or None. Offsets whose length field would run past the
    end of the file are passed over without a checksum."""
    chunk_start = start
    while chunk_start + _HEADER <= size:
        f.seek(chunk_start)
        chunk = f.read(_SCAN_CHUNK + _HEADER)
        for i in range(min(_SCAN_CHUNK, len(chunk) - _HEADER + 1)):
            offset = chunk_start + i
            (length,) = struct.unpack_from("<Q", chunk, i)
            if offset + _HEADER + length + _FOOTER > size:
                continue
            (crc,) = struct.unpack_from("<I", chunk, i + 8)
            if masked_crc32c(chunk[i : i + 8]) != crc:
                continue
            f.seek(offset + _HEADER)
            data = f.read(length)
            (data_crc,) = struct.unpack("<I", f.read(_FOOTER))
            if masked_crc32c(data) == data_crc:
                return offset
        chunk_start += _SCAN_CHUNK
    return None
