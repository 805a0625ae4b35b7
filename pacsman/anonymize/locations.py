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
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "default_key_path",
    "default_mapping_path",
    "is_postgresql",
    "mapping_location",
    "redacted",
    "state_dir",
]

# The same rules as pacsman.jobstore's (issue 14), kept here until pacsman.jobstore exports
# them: anonymize may not import the job store's private _backend module.
_SCHEMES = ("postgresql://", "postgres://")


def is_postgresql(location: object) -> bool:
    """Whether ``location`` (a path or a URL) names a PostgreSQL job store."""
    return isinstance(location, str) and location.startswith(_SCHEMES)


def redacted(url: str) -> str:
    """``url`` without a password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}{port}".replace("@***@", ":***@")))


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
