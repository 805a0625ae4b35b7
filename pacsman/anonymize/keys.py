"""The project's secret key: 32 random bytes, hex in a file created with mode 0600.

The key makes UIDs and date shifts stable across runs and unlinkable without it.  Losing
it means a re-pull is no longer merged into the same sessions; leaking it lets anyone who
has the originals confirm a pseudonym.  Back it up like a password.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import structlog

from pacsman.errors import InputError
from pacsman.layout import read_private

__all__ = ["KEY_BYTES", "load_or_create_key"]

KEY_BYTES = 32
_log = structlog.get_logger(__name__)


def _read(path: Path) -> bytes:
    text = read_private(path, key="key file").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise InputError(
            f"{path}: not a pacsman key ({KEY_BYTES * 2} hex digits expected); "
            "restore it from your backup, or give a new path to create a new key"
        )
    return key


def load_or_create_key(path: Path) -> bytes:
    """Read the project key at ``path``, creating it (mode 0600) on first use.

    Raises:
        InputError: the file is readable by group/others, or is not a pacsman key.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(KEY_BYTES) + "\n")
    _log.info("anonymize_key_created", key_path=str(path))
    return _read(path)
