"""Files written whole, on the controller: a fresh temp file beside the target (O_EXCL and
O_NOFOLLOW, mode 0600, so a planted file or link at a guessed name is never written through),
synced, then renamed into place, or linked there where an existing file must win; and the
lock that makes a read-modify-write of such a file one step across processes."""
from __future__ import annotations

import fcntl
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, _FLAGS, mode)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, mode)  # not narrowed by the umask, not widened either
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path}: no free temp name beside it")


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


def replace(path: str | Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write `path` whole: readers see the old content or the new, never a part."""
    path = Path(path)
    tmp = _write_temp(path, data.encode() if isinstance(data, str) else data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def create(path: str | Path, data: bytes, mode: int = 0o600) -> bool:
    """Put `path` in place, whole, unless it exists: True when this call created it. Of several
    racing callers exactly one wins; the others find the winner's complete file."""
    path = Path(path)
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)  # fails on an existing name, unlike rename
        created = True
    except FileExistsError:
        created = False
    finally:
        tmp.unlink(missing_ok=True)
    if created:
        _sync_folder(path.parent)
    return created


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a lock file of its own, mode 0600; released when the
    holder exits, even by a crash): one process at a time between enter and exit."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
