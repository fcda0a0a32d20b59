"""The data directory (`var/` of `make run`) is private: directories 0700, everything else 0600.

It holds the SQLite database and its WAL (sessions, host secrets and TOTP seeds, encrypted), the
keys that decrypt them, the local agent's secret and state, and the embedded Redis's socket.
The launcher makes what its processes create private (umask 077) and, before starting anything,
checks what is there already: a mode that lets others in is fixed and said (an upgrade from a
version that left files 0644 in a 0755 directory); a file that belongs to another user is
refused, since that user could have read it or put it there. Symbolic links are left alone.

No Django import here: the launcher checks the directory before Django is set up.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

PRIVATE_UMASK = 0o077


class DataDirUnsafe(RuntimeError):
    pass


def _tree(root: Path) -> Iterator[Path]:
    yield root
    for parent, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            yield Path(parent) / name


def private_dir_ensure(root: Path, *, log: Callable[[str], None]) -> list[Path]:
    """Create `root` (0700) if missing, then make everything under it private: group and other
    permissions are removed, each change said through `log`. Returns what was changed. Raises
    DataDirUnsafe for anything owned by another user."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    uid = os.geteuid()
    fixed = []
    for path in _tree(root):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue  # removed meanwhile (a WAL checkpointed away, a temporary file)
        if stat.S_ISLNK(info.st_mode):
            continue
        if info.st_uid != uid:
            raise DataDirUnsafe(
                f"{path} belongs to uid {info.st_uid}, not to this user (uid {uid}), who must own "
                f"everything in the data directory: `chown -R {uid} {root}`, or use another DOMUS_DATA_DIR"
            )
        mode = stat.S_IMODE(info.st_mode)
        if not mode & 0o077:
            continue
        wanted = 0o700 if stat.S_ISDIR(info.st_mode) else mode & 0o700
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, wanted)
            fixed.append(path)
            log(f"{path} was readable by others (mode {mode:04o}); it is now {wanted:04o}")
    return fixed


def private_file_create(path: Path, text: str) -> str:
    """Write `text` to a new file `path` (mode 0600) unless it exists; returns what the file
    holds. Atomic and exclusive: two processes that race to make the same secret end up with
    the same one, and no reader sees it half written."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_text(encoding="utf-8")
