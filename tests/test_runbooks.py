"""The runbooks in docs/runbooks/: their shape, their links, and every offloader command they give.

Every line starting with ``offloader `` in a fenced code block of a runbook is run, in the order
the runbooks give them, against one embedded demo workspace (chDB, SQLite, a local warehouse)
seeded and offloaded once for this module. Placeholders are replaced by a demo table, by a
time inside the seeded data and by the snapshot before the demo table's current one. Each command
must exit cleanly (0, or the exit code it documents for a problem it reports) without a traceback. Commands that cannot run here are listed in NOT_RUN
with the reason, and that list must name exactly the commands skipped. The PromQL lines of the
runbooks are evaluated against a real Prometheus by tests/test_prometheus_e2e.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import ROOT, anchors, cli_argv, run_cli

RUNBOOKS = ROOT / "docs/runbooks"
INDEX = RUNBOOKS / "index.md"
SECTIONS = ("## Symptoms", "## Diagnosis", "## Resolution", "## Prevention")
FENCE = re.compile(r"^[ \t]*```([^\n]*)\n(.*?)^[ \t]*```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")

TABLE = "bronze_trades_binance"  # a demo table with a tuple cursor: the hardest case for reset
SEED_ROWS = 3000  # spread over the last 6 hours by `offloader demo seed`

# Commands a runbook gives that this test does not run, and why.
NOT_RUN = {
    "offloader run": (
        "the long-running service never exits by itself; tests/test_service.py and "
        "tests/test_prometheus_e2e.py start it as a daemon and stop it with SIGTERM"
    ),
    "offloader catalog recover --table <table> --metadata <the landed file's location>": (
        "it needs a lost table and the file recovery named; tests/test_recovery.py loses the catalog and performs it"
    ),
}

# Exit codes a command documents for a problem it reports, besides 0, with the output that must
# show it is that report and not a failure of the command. `check` exits 1 when a bucket differs.
REPORTED_PROBLEMS = {"check": (1, "DIFFERS")}


def _runbooks() -> list[Path]:
    return sorted(p for p in RUNBOOKS.glob("*.md") if p != INDEX)


def runbook_commands() -> list[tuple[str, str]]:
    """(runbook file name, command line) of every `offloader ...` line in a fenced block, first occurrence first."""
    seen: dict[str, str] = {}
    for path in [*_runbooks(), INDEX]:
        for _lang, block in FENCE.findall(path.read_text()):
            for line in block.splitlines():
                line = line.strip()
                if line.startswith("offloader ") and line not in seen:
                    seen[line] = path.name
    return [(name, line) for line, name in seen.items()]


COMMANDS = runbook_commands()


def _placeholders() -> dict[str, str]:
    """The runbooks' placeholders: a demo table, and a UTC time an hour ago (inside the seeded data)."""
    an_hour_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    return {"<table>": TABLE, "<time>": an_hour_ago.strftime("%Y-%m-%d %H:%M:%S")}


def _snapshot(workspace: Path) -> str:
    """`<snapshot>`: the parent of the demo table's current snapshot, as `offloader rollback --table` lists it."""
    listed = _offloader(workspace, "rollback", "--table", TABLE)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    ids = [line.split()[0] for line in listed.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert len(ids) >= 2, f"{TABLE} has no snapshot before its current one:\n{listed.stdout}"
    return ids[1]


def _argv(line: str, workspace: Path) -> list[str]:
    for placeholder, value in _placeholders().items():
        line = line.replace(placeholder, value)
    if "<snapshot>" in line:
        line = line.replace("<snapshot>", _snapshot(workspace))
    assert not re.search(r"<[a-z_-]+>", line), f"unknown placeholder in {line!r}"
    words = shlex.split(line)
    assert words[0] == "offloader"
    return cli_argv(*words[1:])


def _offloader(workspace: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`offloader ARGS` on the embedded demo workspace (no config: the data directory says where)."""
    return run_cli(*args, env={"OFFLOADER_DATA_DIR": str(workspace / "data")}, cwd=workspace, timeout=timeout)


def _subcommand(argv: list[str]) -> str:
    """The command word after the global options (`--config PATH`, `--debug`, ...)."""
    args = argv[3:]
    while args and args[0].startswith("-"):
        args = args[2:] if args[0] in {"--config", "--log-level"} else args[1:]
    return args[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An embedded demo workspace: seeded, every table offloaded once."""
    root = tmp_path_factory.mktemp("runbooks")
    seeded = _offloader(root, "demo", "seed", "--rows", str(SEED_ROWS))
    assert seeded.returncode == 0, seeded.stderr
    once = _offloader(root, "once")
    assert once.returncode == 0, once.stdout + once.stderr
    yield root


# -- the runbooks' shape ---------------------------------------------------------------------------


def test_the_issue_s_runbooks_exist() -> None:
    """One runbook per alert family, and the index."""
    names = {p.name for p in _runbooks()}
    assert names == {
        "offload-failure.md", "high-lag.md", "slow-cycle.md", "watermark.md", "scheduler-down.md",
        "data-mismatch.md", "ttl-risk.md", "disaster-recovery.md", "bad-commit.md",
    }  # fmt: skip
    assert INDEX.is_file()


@pytest.mark.parametrize("path", _runbooks(), ids=lambda p: p.name)
def test_runbook_has_symptoms_diagnosis_resolution_prevention(path: Path) -> None:
    """Each runbook has its four sections in order; its diagnosis gives offloader commands and PromQL."""
    text = path.read_text()
    lines = text.splitlines()
    positions = [lines.index(section) for section in SECTIONS]
    assert positions == sorted(positions), f"{path.name}: sections out of order"
    diagnosis = text.split("## Diagnosis", 1)[1].split("## Resolution", 1)[0]
    blocks = FENCE.findall(diagnosis)
    assert any(lang == "promql" for lang, _ in blocks), f"{path.name}: no PromQL in the diagnosis"
    assert any(
        line.strip().startswith("offloader ") for _, block in blocks for line in block.splitlines()
    ), f"{path.name}: no offloader command in the diagnosis"  # fmt: skip
    assert "(index.md)" in text, f"{path.name}: no way back to the index"


def test_index_links_every_runbook_and_holds_a_decision_tree() -> None:
    """The index links every runbook, and its decision tree leads to each of them."""
    text = INDEX.read_text()
    assert "## Decision tree" in text
    tree = text.split("## Decision tree", 1)[1]
    for path in _runbooks():
        assert f"]({path.name}" in text, f"index does not link {path.name}"
        assert f"► {path.name}" in tree, f"the decision tree does not lead to {path.name}"


@pytest.mark.parametrize("path", [*_runbooks(), INDEX], ids=lambda p: p.name)
def test_runbook_links_resolve(path: Path) -> None:
    """Every relative link of a runbook points at an existing file, and at an existing heading when it has an anchor."""
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        assert resolved.exists(), f"{path.name}: broken link {target}"
        if anchor:
            assert anchor in anchors(resolved), f"{path.name}: no heading #{anchor} in {file or path.name}"


# -- the commands ----------------------------------------------------------------------------------


def test_the_commands_not_run_are_exactly_the_listed_ones() -> None:
    """NOT_RUN names only commands the runbooks really give; every other one is run below."""
    given = {line for _, line in COMMANDS}
    assert set(NOT_RUN) <= given, f"stale entries: {set(NOT_RUN) - given}"
    assert len(COMMANDS) - len(NOT_RUN) >= 15, "the runbooks give the commands to run"


@pytest.mark.parametrize(("runbook", "line"), COMMANDS, ids=[line for _, line in COMMANDS])
def test_runbook_command_runs(workspace: Path, runbook: str, line: str) -> None:
    """The command runs against the demo workspace and exits cleanly, without a traceback."""
    if line in NOT_RUN:
        pytest.skip(f"{line}: {NOT_RUN[line]}")
    argv = _argv(line, workspace)
    result = _offloader(workspace, *argv[3:])
    output = result.stdout + result.stderr
    assert "Traceback" not in result.stderr, f"{runbook}: {line}\n{output}"
    code, shown = REPORTED_PROBLEMS.get(_subcommand(argv), (0, ""))
    if result.returncode != 0:
        assert (result.returncode, True) == (code, shown in result.stdout), (
            f"{runbook}: {line} exited {result.returncode}\n{output}"
        )


def test_after_the_runbooks_commands_the_workspace_is_consistent(workspace: Path) -> None:
    """Following every procedure of the runbooks (reset, repair, maintenance, ...) leaves ClickHouse and Iceberg equal."""
    once = _offloader(workspace, "once")
    assert once.returncode == 0, once.stdout + once.stderr
    check = _offloader(workspace, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "DIFFERS" not in check.stdout
