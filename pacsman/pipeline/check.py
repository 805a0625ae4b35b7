"""``pacsman check`` and the run's push pre-flight: is everything ready before a night's run?

``pacsman check [--pacs NAME] [--push xnat]`` checks, in this order, and prints one line
each, ``ok`` or what to fix:

1. **config**: the config file loads and names the PACS node;
2. **C-ECHO**: the PACS accepts an association from pacsman's calling AE title and answers;
3. **C-FIND**: it answers a study-level query (for a study the job store knows, else for a
   UID no study has);
4. **move**: the PACS can send to pacsman.  With a series the job store knows, ONE of its
   instances is retrieved (C-MOVE to ``local.ae_title``, or C-GET) into a temporary folder
   that is deleted at once: its arrival proves that the PACS knows pacsman's AE title at this
   host and ``local.port``, and that pacsman accepts the PACS's calling AE title; "sent but
   none arrived" proves the PACS has the AE title at another address.  Without a known
   series, a C-MOVE of a study no PACS holds is sent: only 0xA801 (move destination unknown)
   proves something (the PACS does not know the AE title); Success and failures prove
   nothing (DCMTK dcmqrscp answers Success, Orthanc 0xC000, whether they know it or not), so
   the line is a warning that says to run ``--info`` first;
5. **XNAT** (with ``--push xnat``): credentials found, the login accepted, the project seen;
6. **state**: the project's key and mapping table, and the job store, can be written;
7. **disk**: free space at ``store_root``.

Exit code: 0 when every line is ok; otherwise the worst line's: 1 something is not proved (a
warning), 2 the config or the local setup must be fixed, 3 a peer refused or did not answer,
or the disk is (nearly) full.

:func:`check_push_target` is the pre-flight a run makes before it queries anything: with
``--push xnat``, the credentials, the login, the project and the labels the query file gives.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import structlog

from pacsman.anonymize.keys import load_or_create_key
from pacsman.anonymize.locations import default_key_path, default_mapping_path
from pacsman.config import Config, load_config
from pacsman.config.options import add_common_options
from pacsman.dicom.client import DicomPeer
from pacsman.errors import EXIT_OK, FatalError, InputError, PacsmanError
from pacsman.jobstore import JobStore, is_postgresql
from pacsman.models import QueryFile
from pacsman.pipeline._checks import (
    CheckLine,
    Verdict,
    echo_line,
    failed,
    find_line,
    known_series,
    move_line,
    ok,
    warning,
)
from pacsman.pipeline.helper import xnat_project
from pacsman.push import Credentials, check_anonymization, resolve_credentials
from pacsman.push.targets import TargetKind
from pacsman.push.xnat import PlannedSession, check_xnat

__all__ = ["CheckLine", "Verdict", "check_main", "check_push_target", "run_checks"]

_log = structlog.get_logger("pacsman.pipeline")
_SHOWN_PROBLEMS = 20
#: Free space at store_root below which check fails, and below which it warns.
_DISK_FAIL = 1 << 30
_DISK_WARN = 10 << 30


# -- the run's pre-flight -----------------------------------------------------------------------


def check_push_target(config: Config, kind: TargetKind | None, queryfile: QueryFile) -> None:
    """Before the run sends anything: with ``kind`` xnat, XNAT must be ready to take it.

    The credentials are found, the login accepted, the project seen, and the labels the
    query file gives are free (the push's own rules).  Nothing is retried: each request has
    20 s, and the wait is announced after 5 s.

    Raises:
        InputError: xnat.url is not set, no credentials are found, or labels clash.
        FatalError: XNAT refused (401, 403), is not at the URL (404, nothing listening),
            did not answer, or the project does not exist.
    """
    if kind != "xnat":
        return
    url, credentials, project = _xnat_setup(config)
    planned = [
        PlannedSession(f"{queryfile.path}:{r.line}", r.subject, r.session)
        for r in queryfile.rows
        if r.subject and r.session
    ]
    try:
        problems = check_xnat(config.xnat, credentials, project, planned)
    except FatalError as exc:
        raise FatalError(f"{exc} (XNAT pre-flight: nothing was sent to the PACS)") from None
    if problems:
        shown = problems[:_SHOWN_PROBLEMS]
        more = len(problems) - len(shown)
        listed = "\n".join(shown) + (f"\n... and {more} more" if more else "")
        raise InputError(
            f"{len(problems)} XNAT label problem(s) in project {project!r} on {url}; nothing was "
            f"sent to the PACS: fix the Subject/Session columns of the query file\n{listed}"
        )
    _log.info("xnat_preflight_ok", url=url, project=project, labels_checked=len(planned))


def _xnat_setup(config: Config) -> tuple[str, Credentials, str]:
    """XNAT's URL, the credentials and the project, all found before any request.

    Raises:
        InputError: xnat.url is not set, or no credentials are found.
    """
    url = config.xnat.url
    if url is None:
        raise InputError("xnat.url is not set; add xnat: {url: https://your.xnat} to the config")
    credentials = resolve_credentials(url, credentials_file=config.xnat.credentials_file)
    return url, credentials, xnat_project(config)


# -- pacsman check: the lines -------------------------------------------------------------------


def run_checks(
    config_path: Path | None, *, pacs: str | None = None, push: TargetKind | None = None
) -> Iterator[CheckLine]:
    """Every check, in order, as it finishes (a line is printed before the next check runs).

    A config that does not load ends the checks; a PACS that fails the C-ECHO skips C-FIND
    and the move, and the other checks still run.
    """
    try:
        config = load_config(config_path)
        node = config.node(pacs)
    except PacsmanError as exc:
        yield failed("config", exc)
        return
    yield _config_line(config, node.name)
    peer = DicomPeer(node, config.local.ae_title, config.local.port)
    echo = echo_line(peer)
    yield echo
    if echo.verdict is Verdict.FAILED:
        for check in ("C-FIND", "move"):
            yield CheckLine(check, Verdict.SKIPPED, "not tried: the C-ECHO failed")
    else:
        known = known_series(config, node.name)
        yield find_line(peer, known)
        yield move_line(config, peer, known)
    yield _xnat_line(config, push)
    yield _state_line(config)
    yield _disk_line(config)


def _config_line(config: Config, node: str) -> CheckLine:
    local = config.local
    what = (
        f"{config.source} loaded ({len(config.pacs)} PACS node(s)); checking {node!r}; "
        f"pacsman is AE {local.ae_title!r}, port {local.port}"
    )
    if config.warnings:
        return warning("config", f"{what}; " + "; ".join(str(w) for w in config.warnings))
    return ok("config", what)


# -- XNAT, state and disk -----------------------------------------------------------------------


def _xnat_line(config: Config, push: TargetKind | None) -> CheckLine:
    if push != "xnat":
        return CheckLine("XNAT", Verdict.SKIPPED, "not checked: add --push xnat to check it")
    try:
        check_anonymization(config, kind="xnat")
        url, credentials, project = _xnat_setup(config)
        check_xnat(config.xnat, credentials, project)
    except PacsmanError as exc:
        return failed("XNAT", exc)
    return ok("XNAT", f"{url} accepted the login ({credentials}); project {project!r} is there")


def _state_line(config: Config) -> CheckLine:
    project = xnat_project(config)
    try:
        notes = [
            _key_state(default_key_path(project)),
            "mapping table: in the job store (shared by the head nodes)"
            if is_postgresql(config.jobstore)
            else _database_state("mapping table", default_mapping_path(project), _STATE_FIX),
            _jobstore_state(config.jobstore),
        ]
    except PacsmanError as exc:
        return failed("state", exc)
    return ok("state", "; ".join(notes))


_STATE_FIX = "or set XDG_CONFIG_HOME to a folder of this user (keep the key with its table)"


def _key_state(path: Path) -> str:
    if not path.exists():
        return f"key {_creatable(path, _STATE_FIX)}"
    load_or_create_key(path)  # reads it: private, and a pacsman key
    return f"key {path} readable (mode {stat.filemode(path.stat().st_mode)})"


def _jobstore_state(location: Path | str) -> str:
    """The job store: a SQLite file as :func:`_database_state` checks it; a PostgreSQL URL
    by logging in and reading its schema version (nothing is written).

    Raises:
        PacsmanError: the server cannot be reached, refuses the login, has no such database,
            or holds a store written by a newer pacsman.
    """
    if isinstance(location, Path):
        return _database_state("job store", location, "set jobstore: in the config")
    with JobStore(location, read_only=True) as store:
        where = store.where
    return (
        f"job store {where} reachable (PostgreSQL); pacsman creates or updates its tables "
        "when it first writes"
    )


def _database_state(what: str, path: Path, fix: str) -> str:
    """``what`` at ``path`` can be written (a write transaction opens), or can be created.

    Raises:
        InputError: it or its folder cannot be written, or it is not a database.
    """
    if not path.exists():
        return f"{what} {_creatable(path, fix)}"
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK):
        raise InputError(
            f"{what} {path}: this user cannot write it or its folder; fix the owner or mode "
            f"(chown, chmod 600), {fix}"
        )
    try:
        database = sqlite3.connect(path, timeout=2.0)
        try:
            database.execute("BEGIN IMMEDIATE")
            database.execute("ROLLBACK")
        finally:
            database.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            return f"{what} {path} writable (a running pacsman holds it now)"
        raise InputError(f"{what} {path}: {exc}; {fix}") from None
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{what} {path}: not a database ({exc}); {fix}") from None
    return f"{what} {path} writable"


def _existing(path: Path) -> Path:
    """``path``, or its nearest folder that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _creatable(path: Path, fix: str) -> str:
    base = _existing(path.parent)
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot be created, {base} is not writable by this user; {fix}")
    return f"{path} will be created on first use"


def _disk_line(config: Config) -> CheckLine:
    root = config.store_root
    base = _existing(root)
    if not os.access(base, os.W_OK | os.X_OK):
        return failed(
            "disk",
            InputError(
                f"store_root {root}: {base} is not writable by this user; fix its owner or "
                "mode, or set store_root: in the config (or give --out_directory)"
            ),
        )
    free = shutil.disk_usage(base).free
    what = f"store_root {root}: {free / (1 << 30):.1f} GiB free"
    if free < _DISK_FAIL:
        return failed("disk", FatalError(f"{what}; free space there before a run"))
    if free < _DISK_WARN:
        return warning("disk", f"{what}; a cohort of CT/MR studies needs far more")
    return ok("disk", what)


# -- the command --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsman check",
        description="Check, in order, that a run can work, before the night's run: the "
        "config; the PACS (C-ECHO, C-FIND, and that it can send to pacsman: one instance of a "
        "series the job store knows, else a C-MOVE of an unknown study); the XNAT login and "
        "project (--push xnat); that the project's key, mapping table and the job store can "
        "be written; free disk at store_root. One line per check: ok, or what to fix.",
        epilog="exit codes: 0 every check ok; 1 something not proved (warning); 2 fix the "
        "config or the local setup; 3 a peer refused or did not answer, or the disk is full.",
    )
    parser.add_argument("--pacs", metavar="NAME", help="PACS node to check (default: default_pacs)")
    parser.add_argument(
        "--push",
        choices=("xnat",),
        metavar="TARGET",
        help="also check the push target: xnat (credentials, login, project)",
    )
    add_common_options(parser)
    return parser


def check_main(argv: list[str]) -> int:
    """``pacsman check``: print one line per check as it ends; return the worst exit code."""
    args = _parser().parse_args(argv)
    worst = EXIT_OK
    for line in run_checks(args.config, pacs=args.pacs, push=args.push):
        print(line, flush=True)
        worst = max(worst, line.exit_code)
    print("every check ok" if worst == EXIT_OK else f"some checks need attention (exit {worst})")
    return worst
