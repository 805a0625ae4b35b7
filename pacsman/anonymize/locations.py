"""Where a project's key and mapping table live unless given: ``~/.config/pacsman/``.

``$XDG_CONFIG_HOME/pacsman/`` when that is set.  The folder is created with mode 0700 and
both files with mode 0600 on first use.  Keep them together and back them up: without the
key, a study pulled again gets new UIDs and dates; the mapping table is the only link back
to the patients (PHI).  The pipeline and ``pacsman anonymize`` use the same defaults, so
both give a project's studies the same pseudonyms.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_key_path", "default_mapping_path", "state_dir"]


def state_dir() -> Path:
    """``$XDG_CONFIG_HOME/pacsman``, else ``~/.config/pacsman``."""
    base = os.environ.get("XDG_CONFIG_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".config") / "pacsman"


def default_key_path(project: str) -> Path:
    """The project's key file: ``<state_dir>/<project>.key``."""
    return state_dir() / f"{project}.key"


def default_mapping_path(project: str) -> Path:
    """The project's mapping table: ``<state_dir>/<project>.mapping.sqlite``."""
    return state_dir() / f"{project}.mapping.sqlite"
