"""Where a study lives, checked before anything is written: storage URLs (a file, a journal, a
server), the study folder, and whether this process can write them."""

from __future__ import annotations

import tempfile
from pathlib import Path



def creation_problem(folder: str | Path, key: str, writable: bool, got: str | None = None) -> str | None:
    """Why `folder` cannot be made (a file stands where a folder must be; with `writable`, also a
    folder this user may not write in), or None. Nothing is created. `got`: the value to show."""
    got = str(folder) if got is None else got
    for existing in [Path(folder), *Path(folder).parents]:
        if existing.exists():
            if not existing.is_dir():
                return f"{key}: cannot be created, {existing} is a file, not a folder (got {got!r})"
            if writable and not can_write(existing):
                return f"{key}: cannot be created, {existing} is not writable (got {got!r})"
            return None
    return None


def can_write(path: Path) -> bool:
    """Can this process write `path` (a file), or create a file in it (a folder)? Tried, not read off
    the mode bits: root ignores those, a read-only mount or /proc does not."""
    try:
        if path.is_dir():
            with tempfile.TemporaryFile(dir=path):
                return True
        with path.open("ab"):
            return True
    except OSError:
        return False


PLAIN_STORAGE_SUFFIXES = (".log", ".db", ".sqlite", ".sqlite3")  # a bare path: a journal file, else SQLite


def storage_problem(url: str, writable: bool = False) -> str | None:
    """What is wrong with a storage URL that no sweep could open, or None; `writable`: also a file
    storage whose file or folder this user cannot write (a sweep, not a reader)."""
    file = storage_file(url)
    if file is None:
        # a server URL: sqlalchemy must know its dialect (the driver is checked when connecting)
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            make_url(url).get_dialect()
        except (ArgumentError, NoSuchModuleError):
            scheme = url.partition("://")[0]  # the rest may hold a password: not shown
            return (f"study.storage: not a storage optuna can open (got {scheme}://...): give a file (name.db, "
                    "name.log), sqlite:///file.db, journal:///file.log or a database URL such as "
                    "postgresql://user@host/db")
        return None
    path = Path(file[1])
    if path.is_dir():
        return f"study.storage: a folder, not a database file (got {url!r}): give a file in it, e.g. {path / 'study.db'}"
    if file[0] == "" and path.suffix not in PLAIN_STORAGE_SUFFIXES:
        return (f"study.storage: a plain path must end in .log (a journal file) or .db (SQLite) (got {url!r}): "
                f"or write journal:///{path} for a journal file, sqlite:///{path} for SQLite")
    if writable and path.exists() and not can_write(path):
        return f"study.storage: {path} cannot be written (got {url!r})"
    return creation_problem(path.parent, "study.storage", writable=writable, got=url)




def sqlite_if_bare(url: str) -> str:
    """The URL optuna opens for `url`: a bare path that is not a journal file (name.log) is a SQLite
    file (`sqlite:///name.db`); anything else as it is."""
    file = storage_file(url)
    return f"sqlite:///{url}" if file is not None and file[0] == "" and not url.endswith(".log") else url


def storage_file(url: str) -> tuple[str, str] | None:
    """(scheme prefix, file path) of a file-backed storage URL (`sqlite:///`, `journal://` or a
    bare path); None for a server URL such as postgresql://."""
    for prefix in ("sqlite:///", "journal://"):
        if url.startswith(prefix):
            return prefix, url[len(prefix):]
    return ("", url) if url and "://" not in url else None

