"""The source table's TTL, as ClickHouse prints it in ``engine_full``.

:func:`delete_ttls` finds the TTL expressions that delete rows (moves to a disk or volume,
recompression and ``GROUP BY`` rollups keep them), so the offload can tell how long the
source still holds a row it has not copied yet.
"""

from __future__ import annotations

import re

_TTL_MOVES = re.compile(r"\b(TO\s+(DISK|VOLUME)|RECOMPRESS|GROUP\s+BY)\b", re.IGNORECASE)


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside parentheses and quotes."""
    parts, depth, quote_char, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote_char:
            if ch == quote_char and text[i - 1] != "\\":
                quote_char = ""
        elif ch in "'`\"":
            quote_char = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def delete_ttls(engine_full: str) -> list[str]:
    """The expressions of a table's row-deleting TTL rules, from ``system.tables.engine_full``."""
    match = re.search(r"\sTTL\s(.*?)(\sSETTINGS\s.*)?$", engine_full, re.DOTALL)
    if not match:
        return []
    out = []
    for rule in _split_top(match.group(1)):
        if _TTL_MOVES.search(rule):
            continue
        rule = re.split(r"\s+DELETE\b", rule, maxsplit=1, flags=re.IGNORECASE)[0].strip()
        if rule:
            out.append(rule)
    return out
