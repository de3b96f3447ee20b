"""Writing a JSON array of records, one per line, while the next records are made: a second thread writes and hashes."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

from .sharegpt import encode_record


#: the writer of an output array syncs it to disk every this many bytes
SYNC_BYTES = 64 << 20


class JsonArrayWriter:
    """Writes records into an open binary file as a JSON array, one record per line; hashes what it writes.

    Batches of about 4 MiB are written and hashed by a second thread (file writes and sha256 release the GIL), so a
    full mix encodes records on one core while the other writes. Use it as a context manager: on an error the thread
    is stopped, and an error of the thread (disk full) is raised by :meth:`close`.
    """

    def __init__(self, handle: Any, hasher: Any | None = None) -> None:
        self._handle = handle
        self._hasher = hasher
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self.count = 0
        self.bytes_written = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True, name="json-array-writer")
        self._thread.start()

    def __enter__(self) -> JsonArrayWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _drain(self) -> None:
        unsynced = 0
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._error is not None:
                continue
            try:
                self._handle.write(data)
                if self._hasher is not None:
                    self._hasher.update(data)
                unsynced += len(data)
                if unsynced >= SYNC_BYTES:  # to disk now, while the main thread works: the final fsync waits little
                    unsynced = 0
                    self._sync()
            except BaseException as err:  # raised in the main thread by close()
                self._error = err

    def _sync(self) -> None:
        try:
            fd = self._handle.fileno()
        except (OSError, ValueError):  # not a file (an in-memory buffer)
            return
        self._handle.flush()
        os.fdatasync(fd)

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def write(self, record: dict) -> None:
        self.write_bytes(encode_record(record))

    def write_bytes(self, data: bytes) -> None:
        """Write one record already encoded as JSON (one line, no trailing comma)."""
        self._batch.append(data)
        self._batch_bytes += len(data)
        self.count += 1
        if self._batch_bytes >= 4 << 20:
            self._flush()

    def write_lines(self, lines: list[bytes]) -> None:
        """Write records already encoded as JSON (each one line, no trailing comma)."""
        self._batch += lines
        self._batch_bytes += sum(map(len, lines))
        self.count += len(lines)
        if self._batch_bytes >= 4 << 20:
            self._flush()

    def write_joined(self, joined: bytes, count: int) -> None:
        """Write ``count`` records already encoded and joined with ``b",\\n"``."""
        self._batch.append(joined)
        self._batch_bytes += len(joined)
        self.count += count
        if self._batch_bytes >= 4 << 20:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        self._emit(b",\n" if self.bytes_written else b"[\n")  # (not joined to the batch: one copy less)
        self._emit(b",\n".join(self._batch))
        self._batch = []
        self._batch_bytes = 0

    def _emit(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)
        self.bytes_written += len(data)

    def close(self) -> None:
        """Finish the array (``[]`` when no record was written); wait until everything is written and hashed."""
        self._flush()
        self._emit(b"\n]\n" if self.bytes_written else b"[]\n")
        self._stop()
        if self._error is not None:
            raise self._error
