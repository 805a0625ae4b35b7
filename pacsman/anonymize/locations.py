"""Where a project's key and mapping table live unless given: ``~/.config/pacsman/``.

``$XDG_CONFIG_HOME/pacsman/`` when that is set.  The folder is created with mode 0700 and
both files with mode 0600 on first use.  Keep them together and back them up: without the
key, a study pulled again gets new UIDs and dates; the mapping table is the only link back
to the patients (PHI).  The pipeline and ``pacsman anonymize`` use the same defaults
(:func:`mapping_location`), so both give a project's studies the same pseudonyms.

With a PostgreSQL job store (``jobstore: postgresql://...``, several head nodes) the mapping
table is in the job store's database, shared by every node; the key stays a file, and it
must be the same file on every node.
"""

from __future__ import annotations

import os
from pathlib import Path

from pacsman.jobstore import is_postgresql, redacted

__all__ = [
    "default_key_path",
    "default_mapping_path",
    "is_postgresql",
    "mapping_location",
    "redacted",
    "state_dir",
]


def state_dir() -> Path:
    """``$XDG_CONFIG_HOME/pacsman``, else ``~/.config/pacsman``."""
    base = os.environ.get("XDG_CONFIG_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".config") / "pacsman"


def default_key_path(project: str) -> Path:
    """The project's key file: ``<state_dir>/<project>.key``."""
    return state_dir() / f"{project}.key"


def default_mapping_path(project: str) -> Path:
    """The project's local mapping table: ``<state_dir>/<project>.mapping.sqlite``."""
    return state_dir() / f"{project}.mapping.sqlite"


def mapping_location(project: str, *, jobstore: Path | str | None = None) -> Path | str:
    """The one rule for where ``project``'s mapping table is, for the pipeline, ``pacsman
    anonymize``, ``pacsman upload`` and ``pacsman mapping export`` alike: the job store's
    URL when ``jobstore`` (the config's) is a PostgreSQL one, shared by every head node;
    else the local file :func:`default_mapping_path`.
    """
    if jobstore is not None and is_postgresql(jobstore):
        return str(jobstore)
    return default_mapping_path(project)
