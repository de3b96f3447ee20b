"""Work on the second core, in a forked child process: msgspec holds the GIL while it decodes, so a thread cannot help.

A forked child shares the parent's memory copy-on-write (the mapped input file, its split records) at no cost. It runs
one function that sends byte frames back through a pipe, then leaves with ``os._exit``, so none of the parent's
clean-up (temporary files, ``atexit``, buffered output) runs twice. A child is only forked from a process with no
other Python thread: forking beside one can deadlock the child on a lock it held (native threads of C libraries such
as BLAS run no Python code, and glibc's malloc is fork-safe). A child that fails (a bad record, a crash, a kill)
just stops sending; the caller then does the rest itself, which also names any bad record exactly as it would have
without a child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any


_HEADER = 8  # bytes of a frame's length
PIPE_BYTES = 1 << 20
AHEAD_FRAMES = 64


class Forked:
    """A forked child running ``work(send)``; :meth:`receive` gives its frames in order."""

    def __init__(self, pid: int, pipe: Any) -> None:
        self._pid: int | None = pid  # None once reaped (its number may then belong to another process)
        self._pipe = pipe

    @classmethod
    def start(cls, work: Callable[[Callable[[bytes], None]], None]) -> Forked | None:
        """Fork a child that runs ``work``; None where forking is unsafe or impossible (then do the work here)."""
        if not hasattr(os, "fork") or threading.active_count() > 1:
            return None
        read_fd, write_fd = os.pipe()
        _widen(write_fd)
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child: coverage is not collected there)
            status = 1
            try:
                os.close(read_fd)
                _run_child(work, write_fd)
                status = 0
            finally:
                os._exit(status)
        os.close(write_fd)
        return cls(pid, open(read_fd, "rb"))

    def receive(self) -> bytes | None:
        """The next frame, or None if the child stopped before sending it whole."""
        if self._pid is None:
            return None
        try:
            header = self._pipe.read(_HEADER)
            if len(header) < _HEADER:
                return None
            size = int.from_bytes(header, "little")
            payload = self._pipe.read(size)
        except BaseException:  # Ctrl-C while waiting
            self.close()
            raise
        return payload if len(payload) == size else None

    def close(self) -> None:
        """Stop the child if it still runs, and reap it (idempotent)."""
        if self._pid is None:
            return
        with contextlib.suppress(OSError):
            os.kill(self._pid, signal.SIGKILL)
        self._pipe.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self._pid, 0)
        self._pid = None


def _run_child(work: Callable[[Callable[[bytes], None]], None], fd: int) -> None:  # pragma: no cover (child)
    """Run ``work`` with a ``send`` that queues its frames for a writer thread: the child goes on working while the
    parent is busy (the pipe holds 1 MiB; the queue up to :data:`AHEAD_FRAMES` frames more)."""
    import queue

    frames: queue.Queue[bytes | None] = queue.Queue(maxsize=AHEAD_FRAMES)

    def write_frames() -> None:
        try:
            with open(fd, "wb") as pipe:
                while (payload := frames.get()) is not None:
                    pipe.write(len(payload).to_bytes(_HEADER, "little"))
                    pipe.write(payload)
        except BaseException:  # the parent went away: end the child, which would otherwise wait on a full queue
            os._exit(1)

    writer = threading.Thread(target=write_frames, daemon=True)
    writer.start()
    try:
        work(frames.put)
    finally:  # what was sent before a failure still reaches the parent
        frames.put(None)
        writer.join()


def _widen(fd: int) -> None:
    """Let the child run ahead of the parent by up to 1 MiB (Linux's default limit) instead of 64 KiB: with the
    default, a child making 180 KB chunks waits for every read."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or a lower limit
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
