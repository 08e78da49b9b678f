"""The source table's TTL, as ClickHouse prints it in ``engine_full``.

:func:`delete_ttls` finds the TTL expressions that delete rows (moves to a disk or volume,
recompression and ``GROUP BY`` rollups keep them), so the offload can tell how long the
source still holds a row it has not copied yet. :func:`split_top` splits an expression as
ClickHouse prints it (here and in ``mutations``).
"""

from __future__ import annotations

import re

_TTL_MOVES = re.compile(r"\b(TO\s+(DISK|VOLUME)|RECOMPRESS|GROUP\s+BY)\b", re.IGNORECASE)


def split_top(text: str, keyword: str = ",") -> list[str]:
    """Split ``text`` at ``keyword`` (``,`` or a word such as ``AND``) outside parentheses and quotes;
    the parts stripped, empty ones dropped."""
    parts, depth, quote_char, start, i = [], 0, "", 0, 0
    word = keyword != ","
    n = len(keyword)
    while i < len(text):
        ch = text[i]
        if quote_char:
            if ch == "\\":
                i += 1
            elif ch == quote_char:
                quote_char = ""
        elif ch in "'`\"":
            quote_char = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif (
            depth == 0
            and text[i : i + n].upper() == keyword
            and (not word or ((i == 0 or not text[i - 1].isalnum()) and (i + n == len(text) or not text[i + n].isalnum())))
        ):
            parts.append(text[start:i])
            start = i + n
            i += n
            continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def delete_ttls(engine_full: str) -> list[str]:
    """The expressions of a table's row-deleting TTL rules, from ``system.tables.engine_full``."""
    match = re.search(r"\sTTL\s(.*?)(\sSETTINGS\s.*)?$", engine_full, re.DOTALL)
    if not match:
        return []
    out = []
    for rule in _rules(match.group(1)):
        if _TTL_MOVES.search(rule):
            continue
        # ClickHouse prints ``DELETE WHERE cond`` as ``WHERE cond``: the expression ends at either
        rule = re.split(r"\s+(DELETE|WHERE)\b", rule, maxsplit=1, flags=re.IGNORECASE)[0].strip()
        if rule:
            out.append(rule)
    return out


_KEY = r"(\w+|`[^`]+`)"
_MORE_KEYS = re.compile(rf"^{_KEY}(\s+SET\s.*)?$", re.IGNORECASE | re.DOTALL)  # a key, or the last key and SET
_ASSIGNMENT = re.compile(rf"^{_KEY}\s*=(?!=)", re.DOTALL)


def _rules(clause: str) -> list[str]:
    """The TTL rules of a clause: split at its top-level commas, except those inside a roll-up
    (``GROUP BY k, j SET v = max(v), w = sum(w)``), whose keys and assignments are one rule."""
    rules: list[str] = []
    for piece in split_top(clause):
        last = rules[-1] if rules else ""
        if re.search(r"\bGROUP\s+BY\b", last, re.IGNORECASE):
            after_set = re.search(r"\sSET\s", last, re.IGNORECASE) is not None
            if (after_set and _ASSIGNMENT.match(piece)) or (not after_set and _MORE_KEYS.match(piece)):
                rules[-1] = f"{last}, {piece}"
                continue
        rules.append(piece)
    return rules
