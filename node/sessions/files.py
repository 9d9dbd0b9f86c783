"""Private files for customer data: data directories 0700, session databases 0600.

Conversations are personal data, so nothing a node writes for them may be readable by other
local users. A directory the node creates is 0700; an existing one loses its "other" bits and
group write (an install made for a service user keeps its 0750, an old 0755 one becomes
0750). A database file is created 0600 before SQLite opens it; SQLite gives its ``-wal`` and
``-shm`` files the database's mode, and existing ones are tightened too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["private_db_file", "private_dir"]

_LOOSE = stat.S_IRWXO | stat.S_IWGRP


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents 0700; tighten ``path`` itself if it exists."""
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # mkdir's mode is narrowed by the umask, never widened: be exact
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & _LOOSE:
        os.chmod(path, mode & ~_LOOSE)
    return path


def private_db_file(path: Path) -> Path:
    """Create the database file 0600 (if missing) and make it and its WAL files 0600."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if stat.S_IMODE(f.stat().st_mode) != 0o600:
                os.chmod(f, 0o600)
        except FileNotFoundError:
            continue
    return path
