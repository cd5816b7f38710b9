"""Durable files: whole or absent after a crash, and still there once written.

    write_atomically(path, data)                     # replaces path; durable when it returns
    write_atomically(path, data, mode=0o600)          # exact permissions (a key), whatever the umask
    write_atomically(path, data, tmp_dir=spool / "tmp", sync_directory=False)   # many files, one fsync:
    fsync_directory(spool)                            #   the caller syncs the directory once
    write_exclusively(path, data, mode=0o600)         # False when path already exists; never replaces

How: the bytes go to a temporary file in ``tmp_dir`` (default: the directory of ``path``; it must
be on the same file system), which is fsynced and renamed over ``path`` (``write_exclusively``:
hard-linked to ``path``, which fails when it exists); then the directory of ``path`` is fsynced, so
the new name survives a power failure too. Readers see the old file or the new one, never a part.
A crash leaves at most a temporary file named ``.<name>.<pid>.<n>.tmp`` (in ``tmp_dir``) that its
owner may clear away; an error removes it and is raised as the ``OSError`` it is.
"""
from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

__all__ = ["fsync_directory", "write_atomically", "write_exclusively"]

_counter = itertools.count()
_counter_lock = threading.Lock()


def fsync_directory(path: str | os.PathLike) -> None:
    """fsync a directory: the names created, renamed or removed in it so far are durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_temporary(path: Path, data: bytes, mode: int | None, tmp_dir: Path | None) -> Path:
    """A new, fsynced file holding ``data``, beside ``path`` or in ``tmp_dir``."""
    with _counter_lock:
        number = next(_counter)
    temporary = (tmp_dir if tmp_dir is not None else path.parent) / f".{path.name}.{os.getpid()}.{number}.tmp"
    # 0o666 lets the umask decide, as open() would; an explicit mode is set exactly (fchmod)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o666 if mode is None else 0o600)
    try:
        try:
            if mode is not None:
                os.fchmod(descriptor, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view):]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except BaseException:
        _remove(temporary)
        raise
    return temporary


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_atomically(path: str | os.PathLike, data: bytes, *, mode: int | None = None,
                     tmp_dir: str | os.PathLike | None = None, sync_directory: bool = True) -> None:
    """Replace ``path`` with ``data``: whole or absent after a crash (see the module docstring).

    ``mode``: the file's permissions exactly (default: 0o666 less the umask, like ``open``).
    ``sync_directory=False``: the caller fsyncs the directory of ``path`` (once for many files)
    before it relies on the name.
    """
    path = Path(path)
    temporary = _write_temporary(path, data, mode, None if tmp_dir is None else Path(tmp_dir))
    try:
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    if sync_directory:
        fsync_directory(path.parent)


def write_exclusively(path: str | os.PathLike, data: bytes, *, mode: int | None = None,
                      tmp_dir: str | os.PathLike | None = None) -> bool:
    """Create ``path`` holding ``data`` unless it exists (then False, and nothing changes).

    Of several processes creating one file at once exactly one wins, and the others (and any
    reader) find the winner's file whole: never empty, never a part of it.
    """
    path = Path(path)
    temporary = _write_temporary(path, data, mode, None if tmp_dir is None else Path(tmp_dir))
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        _remove(temporary)
    fsync_directory(path.parent)
    return True
