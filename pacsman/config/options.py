"""The options every pacsman command shares: ``--config``, ``--log-level``, ``--version``.

One place, so every command's help says the same (the search order comes from
:data:`pacsman.config.DEFAULT_SEARCH`).  ``pacsman.cli`` reads ``--config`` and
``--log-level`` before a stage command's own parser runs; the stage parsers take them too, so
that their ``--help`` shows them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pacsman import __version__
from pacsman.config import DEFAULT_SEARCH, ENV_VAR, jobstore_location, load_config
from pacsman.config._values import Invalid
from pacsman.errors import ConfigError, InputError

if TYPE_CHECKING:
    from pacsman.jobstore import JobStore

__all__ = [
    "LOG_LEVELS",
    "add_common_options",
    "add_push_option",
    "add_queryfile_options",
    "add_store_options",
    "config_help",
    "jobstore_argument",
    "open_jobstore",
]

LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_LEVEL_HELP = "debug, info, warning or error (default: log.level from the config, else info)"


def config_help(what: str = "config YAML", note: str = "") -> str:
    """``config YAML (default: the first of $PACSMAN_CONFIG, ./config/...)`` plus ``note``."""
    places = ", ".join([f"${ENV_VAR}", *(_shown(p) for p in DEFAULT_SEARCH)])
    return f"{what} (default: the first of {places}{note})"


def _shown(path: Path) -> str:
    return str(path) if path.is_absolute() else f"./{path}"


def add_common_options(parser: argparse.ArgumentParser, *, config: str | None = None) -> None:
    """Add ``--config PATH`` (help ``config``, else :func:`config_help`), ``--log-level`` and
    ``--version`` to ``parser``."""
    parser.add_argument("--config", type=Path, metavar="PATH", help=config or config_help())
    parser.add_argument("--log-level", choices=LOG_LEVELS, metavar="LEVEL", help=_LOG_LEVEL_HELP)
    parser.add_argument("--version", action="version", version=f"pacsman {__version__}")


def add_queryfile_options(parser: argparse.ArgumentParser) -> None:
    """--sheet and --encoding: how the query file is read (queryfiles/README.md)."""
    parser.add_argument(
        "--sheet",
        metavar="NAME",
        help="the sheet of an .xlsx query file to read (default: the first sheet)",
    )
    parser.add_argument(
        "--encoding",
        metavar="NAME",
        help="the encoding of a CSV query file, e.g. cp1252 or cp1250 (default: UTF-8, "
        "else Windows-1252 with a warning)",
    )


def add_push_option(parser: argparse.ArgumentParser) -> None:
    """``--push [TARGET]``: the one-shot command's and ``pacsman submit``'s."""
    parser.add_argument(
        "--push",
        nargs="?",
        const="xnat",
        choices=("xnat", "dicom", "folder"),
        metavar="TARGET",
        help="push every complete, de-identified session to TARGET and verify it there: xnat "
        "(the default; xnat: in the config), dicom (push.dicom) or folder (push.folder). "
        "Implies --save and --anonymize",
    )


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """``--jobstore``, ``--config`` (read only for its ``jobstore``), ``--log-level``,
    ``--version``: the options of the commands that read the job store only."""
    parser.add_argument(
        "--jobstore",
        type=jobstore_argument,
        metavar="PATH|URL",
        help="the job store to read: a SQLite file or a postgresql://user@host/db URL "
        "(default: 'jobstore' in the config)",
    )
    add_common_options(parser, config=config_help("config YAML, read only for its 'jobstore'"))


def jobstore_argument(value: str) -> Path | str:
    """``--jobstore``: a file path or a PostgreSQL URL without a password (argparse type).

    Raises:
        argparse.ArgumentTypeError: the value breaks the rules of ``jobstore`` in the config.
    """
    try:
        return jobstore_location(value)
    except Invalid as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def open_jobstore(jobstore: Path | str | None, config: Path | None) -> JobStore:
    """The job store, read-only: ``jobstore``, else the config's ``jobstore``.

    Raises:
        InputError: no job store given and no config found (the message says how to give it).
        JobStoreError: the file does not exist or cannot be read.
    """
    from pacsman.jobstore import JobStore  # every command imports these options

    if jobstore is None:
        try:
            jobstore = load_config(config).jobstore
        except ConfigError as exc:
            raise InputError(
                f"{exc}\nthis command reads only the job store: give it with --jobstore PATH|URL, "
                "or give the config that names it with --config PATH"
            ) from None
    return JobStore(jobstore, read_only=True)
