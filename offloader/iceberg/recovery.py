"""Registering a table again from its warehouse files when the catalog has lost it.

Every commit leaves a new metadata file in ``<location>/metadata/``, and a commit that never
landed (killed before the catalog took it, or beaten by another writer) leaves one too. The
newest file is therefore not necessarily the table: recovery registers only a file that is
*known to have landed*:

- the one the table's landed record names (``<location>/offloader/landed.json``), which
  offloader rewrites right after each commit the catalog accepted;
- any file a later metadata file lists in its metadata log: a commit starts from the file
  the catalog holds, so every file a later one builds on was current once;
- the file whose snapshot a successful run recorded (the state database, when it survived);
- the file the catalog still points to (a catalog restored from an old backup).

Of those, the newest is registered, after checking that every file it refers to is in the
warehouse. Recovery refuses, naming the files, when a newer file exists that is not known to
have landed (a commit killed right after the catalog took it cannot be told from one killed
right before), or when two landed files are on different branches of history (commits made
on top of a stale catalog). ``metadata=`` names the file to register in those cases.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from offloader.config import TableConfig
from offloader.errors import RecoveryError, first_line
from offloader.iceberg import lineage
from offloader.iceberg.files import metadata_version, walk_files
from offloader.ports import Marker, Recovered, plain_location

LANDED_FILE = "offloader/landed.json"


def landed_path(location: str) -> str:
    """Where a table's landed record is, under its location."""
    return f"{location.rstrip('/')}/{LANDED_FILE}"


def record_landed(table: Any) -> bool:
    """Note the metadata file the catalog has just accepted; best effort (one small write).

    A missing or stale record costs nothing but a refusal at recovery, where the operator
    then names the file; it never makes recovery pick a file that did not land."""
    body = json.dumps(
        {"metadata": table.metadata_location, "version": metadata_version(table.metadata_location), "at": time.time()}
    ).encode()
    try:
        with table.io.new_output(landed_path(table.metadata.location)).create(overwrite=True) as out:
            out.write(body)
    except Exception:  # noqa: BLE001 - the commit has landed; only the record is missing
        return False
    return True


def read_landed(io: Any, location: str) -> str | None:
    """The metadata file a table's landed record names, if the record is there and whole."""
    try:
        with io.new_input(landed_path(location)).open() as stream:
            record = json.loads(stream.read())
    except Exception:  # noqa: BLE001 - no record, or a torn one: recovery relies on the rest
        return None
    named = record.get("metadata") if isinstance(record, dict) else None
    return named if isinstance(named, str) else None


def refuse_if_behind(table: Any, listed: list[str], name: str) -> None:
    """Refuse to work on a catalog that is behind the warehouse: the landed record names a newer
    file the current one does not descend from (a catalog restored from an old backup). Working
    on would fork the history, and the stale files of the newer branch would be pruned."""
    named = read_landed(table.io, table.metadata.location)
    current = table.metadata_location
    if named is None or named == current or named not in listed:
        return
    if named in {entry.metadata_file for entry in table.metadata.metadata_log}:
        return
    if (metadata_version(named) or 0) <= (metadata_version(current) or 0):
        return
    raise RecoveryError(
        f"{name}: the catalog is behind the warehouse: it points at {current}, but {named} landed after it "
        f"(the catalog restored from an old backup?); register the newer file with `offloader catalog recover --table {name}`"
    )


@dataclass(frozen=True)
class MetadataFile:
    """What recovery needs from one metadata file."""

    location: str
    version: int
    updated_ms: int
    log: tuple[str, ...]  # the files before it, oldest first
    snapshot_id: int | None
    marker: Marker | None
    table: Any = field(repr=False, compare=False, default=None)

    @property
    def parent(self) -> str | None:
        return self.log[-1] if self.log else None


@dataclass
class Choice:
    """The file to register, and why the others were passed over."""

    chosen: MetadataFile
    newer_unlanded: list[str]  # newer files never known to have landed (there is none, or --metadata chose)


def read_metadata(location: str, properties: dict[str, str]) -> MetadataFile:
    from pyiceberg.table import StaticTable

    table = StaticTable.from_metadata(location, properties)
    metadata = table.metadata
    snapshot = table.current_snapshot()
    return MetadataFile(
        location=location,
        version=metadata_version(location) or 0,
        updated_ms=int(metadata.last_updated_ms),
        log=tuple(entry.metadata_file for entry in metadata.metadata_log),
        snapshot_id=None if snapshot is None else int(snapshot.snapshot_id),
        marker=lineage.marker(table),
        table=table,
    )


def list_metadata(io: Any, location: str, properties: dict[str, str]) -> list[MetadataFile]:
    """Every readable metadata file of the table at ``location``; unreadable ones are skipped
    (a torn write of a commit that never landed)."""
    folder = f"{location.rstrip('/')}/metadata"
    files = []
    for path, _, _ in walk_files(io, folder, recursive=False):
        if path.endswith(".metadata.json"):
            try:
                files.append(read_metadata(path, properties))
            except Exception:  # noqa: BLE001, S112 - a file that cannot be read cannot be the table
                continue
    return files


def landed(files: list[MetadataFile], named: Iterable[str], snapshot_ids: Iterable[int]) -> set[str]:
    """The files known to have landed (see the module docstring)."""
    present = {f.location: f for f in files}
    known = {name for name in named if name in present}
    for f in files:
        known.update(entry for entry in f.log if entry in present)
    ids = set(snapshot_ids)
    for f in files:
        parent = present.get(f.parent or "")
        introduced = parent is None or parent.snapshot_id != f.snapshot_id
        if f.snapshot_id in ids and introduced and f.parent is not None:
            known.add(f.location)
    return known


def choose(files: list[MetadataFile], known: set[str], table: str, metadata: str | None = None) -> Choice:
    """The newest landed file; or ``metadata`` when the operator names it."""
    by_location = {f.location: f for f in files}
    if metadata is not None:
        if metadata not in by_location:
            raise RecoveryError(f"{table}: --metadata {metadata} is not a readable metadata file of the table")
        chosen = by_location[metadata]
        return Choice(chosen, [f.location for f in files if f.version > chosen.version])
    if not files:
        raise RecoveryError(f"{table}: no metadata file found; nothing to register")
    if not known and len(files) == 1 and not files[0].log:
        known = {files[0].location}  # a table that was created and never committed to
    if not known:
        names = ", ".join(sorted(by_location))
        raise RecoveryError(f"{table}: no metadata file is known to have landed ({names}); name one with --metadata")
    chosen = max((by_location[name] for name in known), key=lambda f: (f.version, f.updated_ms))
    in_log = set(chosen.log)
    oldest = min((by_location[n].version for n in in_log if n in by_location), default=chosen.version)
    forks = sorted(f for f in known if f != chosen.location and f not in in_log and by_location[f].version >= oldest)
    if forks:
        raise RecoveryError(
            f"{table}: history forked: {chosen.location} and {', '.join(forks)} both landed on different branches "
            "(commits on top of a stale catalog?); name the file to register with --metadata"
        )
    newer = sorted(f.location for f in files if f.version > chosen.version)
    if newer:
        raise RecoveryError(
            f"{table}: {', '.join(newer)} is newer than the last file known to have landed ({chosen.location}) and "
            "may be a commit that never landed; register the landed file with --metadata "
            f"{chosen.location} (the next run offloads again what the newer file held, from the source), or the "
            "newer one if you know its commit landed"
        )
    return Choice(chosen, [])


def missing_files(io: Any, chosen: MetadataFile) -> list[str]:
    """Files the chosen metadata refers to (its snapshot's manifest list, manifests, data and
    delete files) that are not in the warehouse; one listing of the table's location."""
    table = chosen.table
    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    wanted = {snapshot.manifest_list}
    try:
        for manifest in snapshot.manifests(io):
            wanted.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                wanted.add(entry.data_file.file_path)
    except Exception as exc:  # noqa: BLE001 - a manifest that cannot be read is missing for recovery
        raise RecoveryError(f"{chosen.location}: cannot read its manifests: {first_line(exc)}") from exc
    present = {plain_location(path) for path, _, _ in walk_files(io, table.metadata.location)}
    return sorted(path for path in wanted if plain_location(path) not in present)


def default_location(catalog: Any, namespace: str, name: str) -> str | None:
    """Where the catalog puts a new table: its namespace's location, else ``<warehouse>/<namespace>/<name>``;
    None when the catalog decides for itself (a REST catalog)."""
    from pyiceberg.catalog.rest import RestCatalog

    if isinstance(catalog, RestCatalog):
        return None
    try:
        folder = catalog.load_namespace_properties(namespace).get("location")
    except Exception:  # noqa: BLE001 - a lost catalog has lost its namespaces too
        folder = None
    if folder:
        return f"{folder.rstrip('/')}/{name}"
    warehouse = catalog.properties.get("warehouse")
    return f"{warehouse.rstrip('/')}/{namespace}/{name}" if warehouse else None


def recover(
    catalog: Any,
    config: TableConfig,
    *,
    location: str | None,
    metadata: str | None,
    snapshot_ids: set[int],
    dry_run: bool,
) -> Recovered:
    """Register ``config``'s table from the newest metadata file known to have landed."""
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.io import load_file_io

    identifier = config.target
    try:
        existing = catalog.load_table(identifier)
    except NoSuchTableError:
        existing = None
    where = location or (existing.metadata.location if existing is not None else None)
    where = where or default_location(catalog, config.target_namespace, identifier.split(".")[-1])
    if where is None:
        raise RecoveryError(
            f"{config.name}: the catalog decides where its tables live; give the table's location with --location"
        )
    io = existing.io if existing is not None else load_file_io(catalog.properties, where)
    files = list_metadata(io, where, catalog.properties)
    if not files and existing is None:
        return Recovered(config.name, "absent", where, 0, None, None)  # never created: nothing to recover
    named = [n for n in (read_landed(io, where), existing.metadata_location if existing is not None else None) if n]
    choice = choose(files, landed(files, named, snapshot_ids), config.name, metadata)
    chosen = choice.chosen
    missing = missing_files(io, chosen)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise RecoveryError(f"{config.name}: {chosen.location} refers to files the warehouse does not hold: {shown}")
    marker = chosen.marker
    result = Recovered(
        table_name=config.name,
        action="registered",
        metadata_location=chosen.location,
        version=chosen.version,
        cursor=marker.cursor if marker else None,
        snapshot_id=chosen.snapshot_id,
        passed_over=tuple(choice.newer_unlanded),
    )
    if existing is not None and existing.metadata_location == chosen.location:
        return replace(result, action="current")
    if dry_run:
        return replace(result, action="would register")
    catalog.create_namespace_if_not_exists(config.target_namespace)
    if existing is not None:
        from pyiceberg.catalog.sql import SqlCatalog

        if not isinstance(catalog, SqlCatalog):  # a REST catalog may delete the files of a table it drops
            raise RecoveryError(
                f"{config.name}: the catalog holds the table at {existing.metadata_location}, behind "
                f"{chosen.location}; offloader drops and registers tables only in the SQL catalog (another "
                "catalog may delete a dropped table's files): point the catalog at the newer file with its own tools"
            )
        catalog.drop_table(identifier)  # the SQL catalog's row only: no file is deleted
    record_landed(catalog.register_table(identifier, chosen.location))
    return result


def refuse_lost_table(catalog: Any, config: TableConfig) -> None:
    """Before a table is created: refuse when its location already holds a table the catalog
    does not know (a lost or restored catalog), rather than start an empty table over it."""
    from pyiceberg.io import load_file_io

    where = default_location(catalog, config.target_namespace, config.target.split(".")[-1])
    if where is not None:
        _refuse_if_held(load_file_io(catalog.properties, where), where, config, set())


def refuse_created_over_lost(catalog: Any, created: Any, config: TableConfig) -> None:
    """After a table is created where the catalog chose (a REST catalog): when its location
    already held a table, take the new one out of the catalog again and refuse."""
    if default_location(catalog, config.target_namespace, config.target.split(".")[-1]) is not None:
        return  # checked before the creation
    try:
        _refuse_if_held(created.io, created.metadata.location, config, {created.metadata_location})
    except RecoveryError:
        catalog.drop_table(config.target)
        created.io.delete(created.metadata_location)
        raise


def _refuse_if_held(io: Any, where: str, config: TableConfig, own: set[str]) -> None:
    try:
        listed = walk_files(io, f"{where}/metadata", recursive=False)
    except Exception:  # noqa: BLE001 - nothing to list: nothing to lose
        return
    found = sum(1 for path, _, _ in listed if path.endswith(".metadata.json") and path not in own)
    if found:
        raise RecoveryError(
            f"{config.name}: Iceberg table {config.target} is not in the catalog, but {where} holds {found} metadata "
            f"files: the catalog has lost it; register it again with `offloader catalog recover --table {config.name}`"
        )
