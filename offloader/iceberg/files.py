"""The files under a table's location, through its own FileIO (PyArrow's or fsspec's).

Listing (with sizes and modification times), deleting, and reading the small facts of a
table's FileIO that the rest of the adapter needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from offloader.errors import (
    CatalogError,
)


def io_properties(table: Any) -> Mapping[str, Any]:
    """The properties of a table's FileIO: the catalog's, with what the catalog vended for the table."""
    return getattr(table.io, "properties", None) or {}


def as_int(value: Any) -> int | None:
    """A time bound as stored (microseconds); None for a column that is not a time."""
    return value if isinstance(value, int) else None


def is_time_transform(transform: Any) -> bool:
    from pyiceberg.transforms import DayTransform, HourTransform, MonthTransform, YearTransform

    return isinstance(transform, YearTransform | MonthTransform | DayTransform | HourTransform)


def delete_quietly(io: Any, path: str) -> None:
    try:
        io.delete(path)
    except Exception:  # noqa: S110 - an orphan file is harmless; orphan removal deletes it
        pass


def walk_files(io: Any, folder: str, recursive: bool = True) -> list[tuple[str, float, int]]:
    """(location, mtime, size) of every file under ``folder`` (or directly in it), through the FileIO.

    Both of PyIceberg's FileIOs are served: PyArrowFileIO through its PyArrow file system,
    FsspecFileIO through its fsspec one. Any other FileIO cannot list, which is an error.
    """
    if hasattr(io, "parse_location") and hasattr(io, "fs_by_scheme"):
        return _walk_pyarrow(io, folder, recursive)
    if hasattr(io, "get_fs"):
        return _walk_fsspec(io, folder, recursive)
    raise CatalogError(f"cannot list {folder}: the FileIO {type(io).__name__} cannot list files")


def _walk_pyarrow(io: Any, folder: str, recursive: bool) -> list[tuple[str, float, int]]:
    from pyarrow.fs import FileSelector, FileType

    scheme, netloc, path = io.parse_location(folder)
    fs = io.fs_by_scheme(scheme, netloc)
    prefix = folder[: len(folder) - len(path)] if folder.endswith(path) else f"{scheme}://"
    infos = fs.get_file_info(FileSelector(path, allow_not_found=True, recursive=recursive))
    return [
        (prefix + info.path, info.mtime.timestamp() if info.mtime else 0.0, int(info.size or 0))
        for info in infos
        if info.type == FileType.File
    ]


def _walk_fsspec(io: Any, folder: str, recursive: bool) -> list[tuple[str, float, int]]:
    from datetime import datetime
    from urllib.parse import urlsplit

    scheme = urlsplit(folder).scheme or "file"
    fs = io.get_fs(scheme, urlsplit(folder).hostname) if scheme.startswith("abfs") else io.get_fs(scheme)
    # s3fs keeps listings in a cache that it also consults to open a file: a stale listing would
    # miss files written since, and a cached one would hide files another process writes later
    # (a metadata file would then "not exist"). List fresh, and keep nothing cached.
    fs.invalidate_cache()
    try:
        found = fs.find(folder, detail=True) if recursive else {e["name"]: e for e in fs.ls(folder, detail=True)}
    except FileNotFoundError:
        return []
    finally:
        fs.invalidate_cache()
    out = []
    for name, info in found.items():
        if info.get("type") != "file":
            continue
        stamp = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or 0.0
        mtime = stamp.timestamp() if isinstance(stamp, datetime) else float(stamp)
        location = name if "://" in name else f"{scheme}://{name}"
        out.append((location, mtime, int(info.get("size") or 0)))
    return out


def metadata_version(path: str) -> int | None:
    name = path.rsplit("/", 1)[-1]
    head = name.split("-", 1)[0]
    if head.startswith("v"):
        head = head[1:].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def list_files(io: Any, folder: str) -> list[str]:
    """Full locations of the files directly in ``folder``, through the table's FileIO."""
    return [path for path, _, _ in walk_files(io, folder, recursive=False)]
