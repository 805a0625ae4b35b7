"""Run and row keys from what the rows ask for, never from line numbers (private).

A row's key is the hash of its normalized values: the C-FIND keys as the query-file reader
cleaned them, the Subject/Session labels and the PACS node it goes to.  A run's key is the
hash of its rows' keys, sorted.  So a blank line, a comment, re-ordered rows or columns, or
whitespace the reader strips give the same run and the same rows; any changed value gives
another run.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence

from pacsman.models import QueryRow

__all__ = ["row_keys", "run_key"]


def _row_key(row: QueryRow, pacs: str) -> str:
    material = {
        "keys": dict(sorted(row.keys.items())),
        "subject": row.subject or "",
        "session": row.session or "",
        "pacs": pacs,
    }
    text = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def row_keys(rows: Sequence[tuple[QueryRow, str]]) -> list[str]:
    """The key of each (row, PACS node) pair; the n-th copy of a repeated row gets ``#n``."""
    seen: Counter[str] = Counter()
    keys = []
    for row, pacs in rows:
        key = _row_key(row, pacs)
        seen[key] += 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def run_key(keys: Sequence[str]) -> str:
    """The run key: the hash of the row keys, in any order."""
    return hashlib.sha256("\n".join(sorted(keys)).encode("ascii")).hexdigest()
