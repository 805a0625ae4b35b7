"""``pacsman jobstore migrate``: thin wiring over :mod:`pacsman.jobstore.migrate`.

    pacsman jobstore migrate --to postgresql://user@host[:port]/db [--jobstore FILE | --config FILE]

Copies the SQLite job store (``--jobstore FILE``, else ``jobstore`` in the config) into an
empty PostgreSQL database, in one transaction, and prints the rows copied per table.  Exit
codes: 0 copied; 2 bad input (no such file, not a URL, a password in the URL, a target that
is not empty: nothing copied); 3 a store cannot be used (nothing copied).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pacsman.config import load_config
from pacsman.config.options import add_common_options, config_help, jobstore_argument
from pacsman.errors import EXIT_OK, ConfigError, InputError
from pacsman.jobstore.migrate import migrate_to_postgresql

__all__ = ["jobstore_main"]

_EXAMPLE = "postgresql://pacsman@db.example.org/pacsman"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsman jobstore",
        description="Job store tools.",
        epilog="Exit codes: 0 done, 2 bad input (nothing changed), 3 a job store cannot be used.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    migrate = commands.add_parser(
        "migrate",
        help="copy a SQLite job store into an empty PostgreSQL database",
        description="Copy the SQLite job store (every run, row, series, transition, push, job "
        "and service node, with their ids) into an empty PostgreSQL database, in one "
        "transaction. The SQLite file is read only and left unchanged. Prints the rows "
        "copied per table.",
        epilog="Exit codes: 0 copied, 2 bad input or a target that is not empty (nothing "
        "copied), 3 a job store cannot be used (nothing copied).",
    )
    migrate.add_argument(
        "--to",
        required=True,
        type=jobstore_argument,
        metavar="URL",
        help=f"the PostgreSQL database to copy into, e.g. {_EXAMPLE}; its password comes from "
        "PGPASSWORD, ~/.pgpass or PGPASSFILE, never the URL",
    )
    migrate.add_argument(
        "--jobstore",
        type=Path,
        metavar="FILE",
        help="the SQLite job store to copy (default: 'jobstore' in the config)",
    )
    add_common_options(migrate, config=config_help("config YAML, read only for its 'jobstore'"))
    return parser


def jobstore_main(argv: Sequence[str]) -> int:
    """``pacsman jobstore ...``; returns the exit code.

    Raises:
        InputError: bad arguments, no SQLite store to copy, a target that is not empty.
        JobStoreError: a store cannot be used.
    """
    args = _parser().parse_args(list(argv))
    if isinstance(args.to, Path):
        raise InputError(
            f"--to {args.to}: give the PostgreSQL database to copy into as a URL, e.g. {_EXAMPLE}"
        )
    migrated = migrate_to_postgresql(_source(args.jobstore, args.config), args.to)
    print("\n".join(migrated.lines()))
    return EXIT_OK


def _source(jobstore: Path | None, config: Path | None) -> Path:
    """The SQLite store to copy: ``--jobstore``, else the config's ``jobstore``.

    Raises:
        InputError: none given and no config found, or the config's is already PostgreSQL.
    """
    if jobstore is not None:
        return jobstore
    try:
        found = load_config(config).jobstore
    except ConfigError as exc:
        raise InputError(
            f"{exc}\ngive the SQLite job store to copy with --jobstore FILE, or the config "
            "that names it with --config PATH"
        ) from None
    if not isinstance(found, Path):
        raise InputError(
            f"the config's 'jobstore' is already a PostgreSQL database ({found}); give the "
            "SQLite job store to copy with --jobstore FILE"
        )
    return found
