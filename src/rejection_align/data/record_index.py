"""A cached index of record offsets, so repeated mixes from an unchanged 1 GB file read only the sampled records.

The first read of a file walks it once (validating every record) and keeps, per record, its byte offset and length,
its id as a string and a flag byte; plus the file's sha256, computed in a second thread while the file is parsed. The
index is stored in the cache directory (``--cache-dir``, else ``$REJECTION_ALIGN_CACHE_DIR``, else
``$XDG_CACHE_HOME/rejection-align``, else ``~/.cache/rejection-align``), keyed by the resolved path, the size, the
modification time (ns) and a hash of the first and last MiB. A later run with the same key loads the index in a
fraction of a second, seeks to the sampled records, and validates each one it decodes (and checks its id against the
index: a mismatch means the file changed behind our back, and the index is rebuilt).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..files import atomic_open
from .llava_format import (
    FLAG_PLAIN,
    check_record,
    decode_record_bytes,
    describe,
    encode_record,
    plain_record_to_sharegpt,
    read_spans,
    record_images,
    scan_file,
    scan_file_parallel,
    to_sharegpt,
)


logger = logging.getLogger(__name__)

CACHE_ENV = "REJECTION_ALIGN_CACHE_DIR"
INDEX_FORMAT = 2
_MAGIC = b"rejection-align record index\n"
_QUICK_HASH_BYTES = 1 << 20


def default_cache_dir() -> Path:
    """``$REJECTION_ALIGN_CACHE_DIR``, else ``$XDG_CACHE_HOME/rejection-align``, else ``~/.cache/rejection-align``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rejection-align"


@dataclass(frozen=True)
class FileKey:
    """What identifies one version of a file: resolved path, size, mtime (ns) and a hash of its head and tail."""

    path: str
    size: int
    mtime_ns: int
    quick_hash: str

    @classmethod
    def of(cls, path: str | os.PathLike) -> FileKey:
        resolved = Path(path).resolve()
        stat = resolved.stat()
        digest = hashlib.sha256(str(stat.st_size).encode())
        with open(resolved, "rb") as handle:
            digest.update(handle.read(_QUICK_HASH_BYTES))
            if stat.st_size > _QUICK_HASH_BYTES:
                handle.seek(max(_QUICK_HASH_BYTES, stat.st_size - _QUICK_HASH_BYTES))
                digest.update(handle.read())
        return cls(str(resolved), stat.st_size, stat.st_mtime_ns, digest.hexdigest())


@dataclass
class RecordIndex:
    """Byte spans, ids (as strings) and flags of every record of one file version, with the file's sha256."""

    key: FileKey
    sha256: str
    offsets: array
    lengths: array
    ids: list[str]
    flags: bytes

    def __len__(self) -> int:
        return len(self.ids)

    def spans(self, indices: Sequence[int]) -> list[tuple[int, int]]:
        offsets, lengths = self.offsets, self.lengths
        return [(offsets[i], lengths[i]) for i in indices]

    # -- serialisation: a magic line, a JSON header line, then the arrays as raw bytes and the ids as a JSON array

    def to_bytes(self) -> bytes:
        ids = json.dumps(self.ids, ensure_ascii=False).encode("utf-8", "surrogatepass")
        header = {
            "format": INDEX_FORMAT,
            "byteorder": sys.byteorder,
            "key": vars(self.key),
            "sha256": self.sha256,
            "records": len(self.ids),
            "ids_bytes": len(ids),
        }
        return b"".join(
            (
                _MAGIC,
                json.dumps(header).encode() + b"\n",
                self.offsets.tobytes(),
                self.lengths.tobytes(),
                self.flags,
                ids,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RecordIndex:
        """Parse a stored index; ``ValueError`` when it is not one of ours or not of this format."""
        if not data.startswith(_MAGIC):
            raise ValueError("not a rejection-align index")
        header_end = data.index(b"\n", len(_MAGIC))
        header = json.loads(data[len(_MAGIC) : header_end])
        if header.get("format") != INDEX_FORMAT or header.get("byteorder") != sys.byteorder:
            raise ValueError(f"index format {header.get('format')} ({header.get('byteorder')})")
        n = header["records"]
        pos = header_end + 1
        offsets, lengths = array("q"), array("q")
        offsets.frombytes(data[pos : pos + 8 * n])
        lengths.frombytes(data[pos + 8 * n : pos + 16 * n])
        pos += 16 * n
        flags = data[pos : pos + n]
        ids = json.loads(data[pos + n : pos + n + header["ids_bytes"]].decode("utf-8", "surrogatepass"))
        if not (len(offsets) == len(lengths) == len(flags) == len(ids) == n):
            raise ValueError("truncated index")
        return cls(FileKey(**header["key"]), header["sha256"], offsets, lengths, ids, flags)


class IndexCache:
    """Stored indices, one file per input path; a stale or unreadable entry is ignored and replaced."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory else default_cache_dir()

    def path_for(self, key: FileKey) -> Path:
        return self.directory / f"{hashlib.sha256(key.path.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}.index"

    def load(self, key: FileKey) -> RecordIndex | None:
        path = self.path_for(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            logger.warning("cannot read the index cache %s: %s", path, err)
            return None
        try:
            index = RecordIndex.from_bytes(data)
        except (ValueError, KeyError, TypeError) as err:
            logger.warning("ignoring the unusable index cache %s: %s", path, err)
            return None
        if index.key != key:
            logger.debug("index cache %s is for another version of %s", path, key.path)
            return None
        return index

    def save(self, index: RecordIndex) -> None:
        """Store an index; a cache that cannot be written costs speed only, so it is a warning, not an error."""
        path = self.path_for(index.key)
        try:
            with atomic_open(path, "wb") as handle:
                handle.write(index.to_bytes())
        except OSError as err:
            logger.warning("cannot write the index cache %s: %s", path, err)

    def remove(self, key: FileKey) -> None:
        try:
            self.path_for(key).unlink()
        except OSError:
            pass


class _Sha256Thread(threading.Thread):
    """Hashes a file beside the parser: hashlib releases the GIL, so on two cores the hash costs no wall time."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(daemon=True, name="sha256")
        self.path = path
        self.digest: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                self.digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except BaseException as err:  # reported by result()
            self.error = err

    def result(self) -> str:
        self.join()
        if self.error is not None:
            raise self.error
        assert self.digest is not None
        return self.digest


def build_index(
    path: str | os.PathLike,
    visit=None,
    label: str | None = None,
    progress: bool | None = None,
) -> RecordIndex:
    """Read a file once: validate every record, record its span, id and flags, and hash the file meanwhile."""
    label = label or describe(path)
    key = FileKey.of(path)
    hasher = _Sha256Thread(key.path)
    hasher.start()
    try:
        if visit is None:
            scan = scan_file_parallel(key.path, label=label, progress=progress)
        else:
            scan = scan_file(key.path, visit=visit, label=label, progress=progress)
    finally:
        sha256 = hasher.result()
    if FileKey.of(path) != key:
        raise DataError(f"{label}: the file changed while it was being read; run again")
    return RecordIndex(key, sha256, array("q", scan.offsets), array("q", scan.lengths), scan.ids, bytes(scan.flags))


class StaleIndexError(Exception):
    """A record read through the index is not the one the index describes: the file changed."""


class RecordSource:
    """One input file: its index (from the cache or a fresh read) and validated access to records by number."""

    def __init__(
        self,
        path: str | os.PathLike,
        cache: IndexCache | None = None,
        label: str | None = None,
        progress: bool | None = None,
    ) -> None:
        self.path = Path(path)
        self.label = label or describe(path)
        self.cache = cache
        self.progress = progress
        self.index: RecordIndex | None = None
        self.from_cache = False

    def open(self) -> RecordIndex:
        """Load the index from the cache, or read (and validate) the whole file to build it."""
        if not self.path.is_file():
            raise DataError(f"{self.label}: no such file")
        key = FileKey.of(self.path)
        if self.cache is not None:
            cached = self.cache.load(key)
            if cached is not None:
                logger.info("%s: %d records, index from the cache", self.label, len(cached))
                self.index, self.from_cache = cached, True
                return cached
        self._build()
        assert self.index is not None
        return self.index

    def _build(self) -> None:
        logger.info("%s: reading and validating every record", self.label)
        self.index = build_index(self.path, label=self.label, progress=self.progress)
        self.from_cache = False
        if self.cache is not None:
            self.cache.save(self.index)

    def fetch(self, indices: Sequence[int]) -> list[dict]:
        """The records at these positions, in the order asked, decoded and validated (ids checked)."""

        def read() -> list[dict]:
            records: list[dict] = [None] * len(indices)  # type: ignore[list-item]
            for position, record, _data in self._iter_read(indices, decode=True):
                records[position] = record
            return records

        return self._with_rebuild(read)

    def fetch_sharegpt(self, indices: Sequence[int]) -> list[tuple[bytes, list[str]]]:
        """The records at these positions as sharegpt JSON bytes (with their images), in the order asked.

        Plain-layout records are copied from the file (:func:`plain_record_to_sharegpt`), others decoded and
        re-encoded. Records of an index read from the cache are decoded and validated first; those of an index
        built by this process were validated moments ago and are only checked to be the same records. Records are
        converted as they are read, so at most one decoded record is alive at a time.
        """

        def read() -> list[tuple[bytes, list[str]]]:
            out: list[tuple[bytes, list[str]]] = [None] * len(indices)  # type: ignore[list-item]
            flags = self.index.flags
            for position, record, data in self._iter_read(indices, decode=self.from_cache):
                number = indices[position]
                converted = plain_record_to_sharegpt(data) if flags[number] & FLAG_PLAIN else None
                if converted is None:
                    record = record if record is not None else self._decode(data, number)
                    converted = (encode_record(to_sharegpt(record)), record_images(record))
                out[position] = converted
            return out

        return self._with_rebuild(read)

    def _with_rebuild(self, read):
        """Run ``read``; if a cached index turns out stale, rebuild it from the file once and run ``read`` again."""
        if self.index is None:
            raise RuntimeError("RecordSource.open() first")
        try:
            return read()
        except StaleIndexError as err:
            if not self.from_cache:
                raise DataError(f"{self.label}: the file changed while it was being read ({err}); run again") from None
            logger.warning("%s: the cached index does not match the file (%s); reading it again", self.label, err)
            if self.cache is not None:
                self.cache.remove(self.index.key)
            self._build()
            return read()

    def _decode(self, data: bytes, number: int) -> dict:
        """Decode and validate the bytes of record ``number``, checking them against the index."""
        index = self.index
        try:
            record, plain = decode_record_bytes(data)
        except ValueError as err:  # UnicodeDecodeError and JSONDecodeError included
            raise StaleIndexError(f"record {number} does not decode: {err}") from None
        try:
            rid, _flags = check_record(record, self.label, number)
        except DataError as err:
            if self.from_cache:  # validated when the index was built: the file has changed since
                raise StaleIndexError(str(err)) from None
            raise
        if rid != index.ids[number] or plain != bool(index.flags[number] & FLAG_PLAIN):
            raise StaleIndexError(f"record {number} has id {rid!r}, the index says {index.ids[number]!r}")
        return record

    def _iter_read(self, indices: Sequence[int], decode: bool) -> Iterator[tuple[int, dict | None, bytes]]:
        """``(position in indices, record or None, bytes)`` in file order; without ``decode`` only sanity checks."""
        index = self.index
        assert index is not None
        try:
            for position, data in read_spans(index.key.path, index.spans(indices)):
                if decode:
                    yield position, self._decode(data, indices[position]), data
                elif data[:1] == b"{" and data[-1:] == b"}":
                    yield position, None, data
                else:
                    raise StaleIndexError(f"record {indices[position]} is not where the index says")
        except (EOFError, FileNotFoundError) as err:
            raise StaleIndexError(str(err)) from None
        if not decode and FileKey.of(self.path) != index.key:
            raise StaleIndexError("the file changed")
