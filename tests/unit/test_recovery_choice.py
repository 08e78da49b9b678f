"""Which metadata file recovery registers (offloader/iceberg/recovery.py), on small made-up histories."""

from __future__ import annotations

import pytest

from offloader.errors import RecoveryError
from offloader.iceberg.recovery import MetadataFile, choose, landed


def _file(version: int, *log: int, snapshot: int | None = None) -> MetadataFile:
    return MetadataFile(
        location=f"m/{version:05d}.metadata.json", version=version, updated_ms=version,
        log=tuple(f"m/{v:05d}.metadata.json" for v in log), snapshot_id=snapshot, marker=None,
    )  # fmt: skip


def _name(version: int) -> str:
    return f"m/{version:05d}.metadata.json"


def test_the_newest_file_named_by_the_landed_record_is_chosen() -> None:
    files = [_file(0), _file(1, 0), _file(2, 0, 1)]
    assert choose(files, landed(files, [_name(2)], []), "t").chosen.location == _name(2)


def test_a_newer_file_no_one_vouches_for_is_refused_and_named() -> None:
    files = [_file(0), _file(1, 0), _file(2, 0, 1)]
    with pytest.raises(RecoveryError, match=r"00002.metadata.json is newer than the last file known to have landed"):
        choose(files, landed(files, [_name(1)], []), "t")


def test_a_file_a_later_one_builds_on_has_landed() -> None:
    files = [_file(0), _file(1, 0), _file(2, 0, 1), _file(3, 0, 1, 2)]
    known = landed(files, [], [])
    assert known == {_name(0), _name(1), _name(2)}
    with pytest.raises(RecoveryError, match="00003"):
        choose(files, known, "t")


def test_a_failed_commit_beside_the_landed_one_is_passed_over() -> None:
    """A lost race leaves a file of the same version as the winner's: never newer, never chosen."""
    winner, loser = _file(2, 0, 1), _file(2, 0, 1)
    loser = MetadataFile("m/00002-lost.metadata.json", 2, 1, loser.log, None, None)
    files = [_file(0), _file(1, 0), winner, loser]
    assert choose(files, landed(files, [winner.location], []), "t").chosen.location == winner.location


def test_two_landed_branches_are_refused() -> None:
    files = [_file(0), _file(1, 0), _file(2, 0, 1), _file(3, 0, 1, 2)]
    branch = MetadataFile("m/00002-b.metadata.json", 2, 5, (_name(0), _name(1)), None, None)
    files.append(branch)
    with pytest.raises(RecoveryError, match="forked"):
        choose(files, landed(files, [_name(3), branch.location], []), "t")


def test_a_recorded_run_vouches_only_for_the_file_that_made_its_snapshot() -> None:
    files = [_file(0, snapshot=None), _file(1, 0, snapshot=7), _file(2, 0, 1, snapshot=7)]
    assert _name(2) not in landed(files, [], [7]), "a property change after the snapshot is not vouched for"
    files = [_file(0, snapshot=None), _file(1, 0, snapshot=7)]
    assert landed(files, [], [7]) == {_name(0), _name(1)}


def test_a_table_never_committed_to_is_its_creation_file() -> None:
    assert choose([_file(0)], set(), "t").chosen.location == _name(0)


def test_the_operator_may_name_the_file_and_newer_ones_are_reported() -> None:
    files = [_file(0), _file(1, 0), _file(2, 0, 1)]
    choice = choose(files, set(), "t", metadata=_name(1))
    assert choice.chosen.location == _name(1) and choice.newer_unlanded == [_name(2)]
    with pytest.raises(RecoveryError, match="not a readable metadata file"):
        choose(files, set(), "t", metadata="m/nope.metadata.json")
