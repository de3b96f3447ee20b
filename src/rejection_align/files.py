"""Safe file writing: whole files appear at once (temp file + rename), and shared files are locked (``filelock``).

Temporary files are named ``.NAME.PID.RANDOM.tmp`` beside their target, so that a later run can tell its own
leftovers (a process that no longer exists, killed before it could clean up) from another process's work in progress.
SIGTERM is turned into an exception while a temporary file is open, so that ``kill`` cleans up like Ctrl-C does.
"""

import contextlib
import errno
import json
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


DEFAULT_MODE = 0o644
#: a temp file of an older release (no pid in its name) older than this is a leftover
STALE_SECONDS = 3600


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a file was being written: handled like Ctrl-C (the CLI reports an interruption)."""


_open_count = 0
_previous_handler: Any = None


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (main thread only, and only over the default)."""
    global _open_count, _previous_handler
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _open_count == 0:
        current = signal.getsignal(signal.SIGTERM)
        if current in (signal.SIG_DFL, None):

            def handler(signum: int, frame: Any) -> None:
                raise Terminated(f"terminated by signal {signum}")

            _previous_handler = current
            signal.signal(signal.SIGTERM, handler)
        else:
            _previous_handler = None  # someone else handles SIGTERM: leave it to them
    _open_count += 1
    try:
        yield
    finally:
        _open_count -= 1
        if _open_count == 0 and _previous_handler is not None:
            signal.signal(signal.SIGTERM, _previous_handler)
            _previous_handler = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete leftover temporary files of ``path`` (ours by their name): of dead processes, or old unnamed ones."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:(\d+)\.)?[A-Za-z0-9_]+\.tmp$")
    removed = []
    try:
        candidates = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in candidates:
        match = pattern.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = match.group(1)
        try:
            stale = (
                (not _pid_alive(int(pid))) if pid else now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS
            )
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _with_filename(err: OSError, path: str | os.PathLike) -> OSError:
    """The same error naming ``path`` (``[Errno 28] No space left on device`` says nothing of which file)."""
    if err.filename is not None:
        return err
    return type(err)(err.errno, err.strerror or os.strerror(err.errno or 0), os.fspath(path))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block finishes.

    An exception (bad input found half-way, Ctrl-C, SIGTERM) leaves ``path`` as it was and no temporary file behind.
    A ``path`` that is a symlink is written through (its target is replaced, the link stays); the mode of an existing
    file is kept (new files get 644).
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _with_filename(err, target.parent) from None
    remove_stale_temp_files(target)
    try:
        mode_bits = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        mode_bits = DEFAULT_MODE
    with _terminate_cleanly():
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
        except OSError as err:
            raise _with_filename(err, target) from None
        try:
            try:
                with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
                    yield handle
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, mode_bits)
                os.replace(tmp, target)
            except OSError as err:
                raise _with_filename(err, target) from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """Write JSON atomically, UTF-8, with a final newline; key order is kept, so output is deterministic."""
    with atomic_open(path, "w") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=indent)
        handle.write("\n")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive lock on ``<path>.lock`` (``filelock``: ``flock`` on POSIX), held across processes for the block; the
    lock file is removed when the block ends, so that nothing is left beside the user's files.

    Removing a lock file can break mutual exclusion: a process waiting on the old file would get it after its
    removal while a newcomer locks a new file at the same name. So the file is removed only by its holder, before it
    lets go, and every process that gets a lock checks that the name still leads to the file it locked (else it
    tries again on the new one); recent filelock releases check this too. Where the descriptor filelock holds cannot
    be found (a release that keeps it elsewhere), the file is kept, as filelock itself does. A lock file that is a
    symlink is refused (someone could point it at a file we would then create or truncate).
    """
    import filelock

    lock_path = Path(f"{os.fspath(path)}.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _with_filename(err, lock_path.parent) from None
    while True:
        if lock_path.is_symlink():
            raise OSError(errno.ELOOP, "lock file is a symlink, refusing to follow it", os.fspath(lock_path))
        lock = filelock.FileLock(os.fspath(lock_path), mode=DEFAULT_MODE)
        try:
            lock.acquire()
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise OSError(
                    err.errno, "lock file is a symlink, refusing to follow it", os.fspath(lock_path)
                ) from None
            raise _with_filename(err, lock_path) from None
        fd = _held_descriptor(lock)
        if fd is None or _names(lock_path, fd):
            break
        lock.release()  # the file was removed by its last holder while we waited for it: lock the one there now
    try:
        yield
    finally:
        try:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(lock_path)
        finally:
            lock.release()


def _held_descriptor(lock: Any) -> int | None:
    """The descriptor of the file a ``filelock`` lock holds (filelock keeps it in ``_context`` since 3.12, in
    ``_lock_file_fd`` before); None if it cannot be found."""
    context = getattr(lock, "_context", None)
    fd = getattr(context, "lock_file_fd", None) if context is not None else getattr(lock, "_lock_file_fd", None)
    return fd if isinstance(fd, int) else None


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` (not followed if a link) is the file open as ``fd``, and that file was not removed."""
    try:
        held = os.fstat(fd)
        return held.st_nlink > 0 and os.path.samestat(held, os.lstat(path))
    except OSError:
        return False
