"""Atomic file writing, shared by image saving, checkpoints and JSON reports.

``atomic_write(path)`` yields a temporary path in the target's directory (same suffix, so
tools that pick a format from the name still work). When the block finishes, the temporary
file is flushed to disk and renamed onto the target in one step (``os.replace``); when the
block raises, the temporary file is deleted and the target is left exactly as it was.

Temporary names are ``.NAME.tmp-PID-RANDOM.EXT``: hidden, recognisable (``TEMP_MARKER``), created with O_EXCL and
holding the writer's process id, so concurrent writers (threads or processes) never share one. Only a process killed
outright (SIGKILL, power loss) leaves one behind; readers of this package ignore hidden files, and such a file may
be deleted whenever no run is writing to that folder.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFullError

__all__ = ["TEMP_MARKER", "atomic_write", "disk_full_error", "is_temp_file", "sha256_file", "space_problem"]

logger = logging.getLogger(__name__)

TEMP_MARKER = ".tmp-"

# errno -> (what ran out, the fix), for writes that failed for lack of room
_NO_ROOM = {
    errno.ENOSPC: ("no space left on the disk", "free disk space"),
    errno.EFBIG: ("the file-size limit was reached", "raise the file-size limit (ulimit -f)"),
}
if hasattr(errno, "EDQUOT"):  # not on Windows
    _NO_ROOM[errno.EDQUOT] = ("the disk quota is used up", "free space within your quota")


def _create_temp(target: Path) -> Path:
    """Create an empty, uniquely named file next to ``target`` (mode 0o666 minus umask)."""
    for _ in range(100):
        candidate = target.with_name(f".{target.stem}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}{target.suffix}")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"could not create a unique temporary file next to {target}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; not possible (nor needed) on every platform."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically.

    The caller writes the complete file to the yielded path (by name). An existing target
    keeps its permission bits. Raises ``OSError`` when the directory is missing or not
    writable; any exception from the block propagates after the temporary file is removed.
    """
    target = Path(path)
    tmp = _create_temp(target)
    try:
        # the existing target's mode, else what the OS gave the fresh temp file (0o666 minus the umask)
        mode = (target if target.exists() else tmp).stat().st_mode & 0o777
        yield tmp
        os.chmod(tmp, mode)  # writers that re-create the file (safetensors) would leave 0600
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            logger.warning("could not remove temporary file %s", tmp)
        raise
    _fsync_dir(target.parent)


def is_temp_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named like a temporary file of an atomic write (``.NAME.tmp-...``)."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARKER in name


def space_problem(exc: BaseException | None) -> tuple[str, str] | None:
    """(what ran out, the fix) when a write failed for lack of room (ENOSPC, EDQUOT, EFBIG), e.g.
    ("no space left on the disk", "free disk space"); None for any other error."""
    return _NO_ROOM.get(exc.errno) if isinstance(exc, OSError) else None


def disk_full_error(exc: BaseException | None, writing: str, kept: str, elsewhere: str) -> DiskFullError | None:
    """The error to raise when ``exc`` is a write that failed for lack of room, else None:
    "<what ran out> while writing <writing>; <kept>", hint "<the fix> or <elsewhere>"."""
    no_room = space_problem(exc)
    if no_room is None:
        return None
    return DiskFullError(f"{no_room[0]} while writing {writing}; {kept}", hint=f"{no_room[1]} or {elsewhere}")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
