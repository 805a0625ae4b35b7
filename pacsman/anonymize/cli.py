"""``pacsman anonymize`` and ``pacsman mapping export``: thin wiring over the library.

    pacsman anonymize IN_DIR OUT_DIR --subject S --session E [--profile P] [--project NAME]
                      [--key PATH] [--mapping PATH] [--workers N] [--config PATH]
    pacsman mapping export OUT.csv [--mapping PATH|URL] [--project NAME] [--config PATH]
    pacsman mapping import FILE.sqlite [--mapping URL] [--config PATH]

Everything is checked before any file is touched.  Exit codes: 0 every DICOM instance
written; 1 some quarantined or failed (``ItemFailed``); 2 bad arguments (``InputError``).
Nothing printed names a patient: only counts, labels, reasons and output folders.
The mapping table is where :func:`~pacsman.anonymize.locations.mapping_location` says: the
PostgreSQL job store's database when the config's ``jobstore`` is a ``postgresql://`` URL
(shared by every head node), else the local file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pacsman import __version__
from pacsman.anonymize.batch import BatchSummary, EngineSpec, Outcome, Task, deidentify_files
from pacsman.anonymize.engine import Encapsulated, check_label, quarantine_dir
from pacsman.anonymize.keys import load_or_create_key
from pacsman.anonymize.locations import (
    default_key_path,
    default_mapping_path,
    is_postgresql,
    mapping_location,
)
from pacsman.anonymize.mapping import MappingTable, export_mapping, import_mapping
from pacsman.anonymize.profile import Profile, load_profile
from pacsman.config import ENV_VAR, Config, find_config, load_config
from pacsman.config.options import add_common_options, config_help
from pacsman.errors import EXIT_OK, ConfigError, InputError, ItemFailed

__all__ = ["anonymize_main", "mapping_main"]

DEFAULT_PROJECT = "pacsman"
MAX_WORKERS = 64


@dataclass(frozen=True)
class _Settings:
    """The validated arguments of ``pacsman anonymize``."""

    in_dir: Path
    out_dir: Path
    subject: str
    session: str
    project: str
    profile: Profile
    key_path: Path
    mapping: Path | str
    workers: int
    encapsulated: Encapsulated = Encapsulated.OMIT


def _anonymize_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsman anonymize",
        description="De-identify every DICOM file under IN_DIR (PS3.15 Annex E, keyed UIDs "
        "and date shift, leak check) into OUT_DIR, relabelled to one XNAT subject/session.",
        epilog="Quarantined files go to OUT_DIR.quarantine with a .reason.txt each. "
        "Exit codes: 0 all written, 1 some quarantined or failed, 2 bad input.",
    )
    parser.add_argument("in_dir", type=Path, metavar="IN_DIR", help="folder read recursively")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output folder")
    parser.add_argument("--subject", required=True, help="XNAT subject label")
    parser.add_argument(
        "--session",
        "--experiment",
        dest="session",
        required=True,
        help="XNAT session (experiment) label; --experiment is the same",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="profile YAML (default: anonymization.profile from the config, else the "
        "built-in PS3.15 profile)",
    )
    _state_arguments(parser)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    return parser


def _state_arguments(parser: argparse.ArgumentParser, *, key: bool = True) -> None:
    parser.add_argument(
        "--project", help=f"XNAT project (default: xnat.project, else {DEFAULT_PROJECT})"
    )
    if key:
        parser.add_argument(
            "--key", type=Path, help="key file (default: ~/.config/pacsman/PROJECT.key)"
        )
    parser.add_argument(
        "--mapping",
        type=_mapping_argument,
        metavar="PATH|URL",
        help="mapping table: a SQLite file or a postgresql:// job store (default: the "
        "config's jobstore when it is a postgresql:// URL, shared by every head node; else "
        "~/.config/pacsman/PROJECT.mapping.sqlite)",
    )
    add_common_options(parser, config=config_help("pacsman config YAML", "; none is needed"))


def _mapping_argument(value: str) -> Path | str:
    """``--mapping``: a PostgreSQL URL stays as it is (a path would lose its ``//``)."""
    return value if is_postgresql(value) else Path(value).expanduser()


def _mapping(args: argparse.Namespace, project: str, config: Config | None) -> Path | str:
    """The mapping table given, else the one :func:`mapping_location` gives."""
    given: Path | str | None = args.mapping
    if given is not None:
        return given
    location = mapping_location(project, jobstore=config.jobstore if config else None)
    return location.expanduser() if isinstance(location, Path) else location


def _config(path: Path | None) -> Config | None:
    """The config given, or found by the usual search; ``None`` when there is none."""
    if path is not None or os.environ.get(ENV_VAR, "").strip():
        return load_config(path)
    try:
        found = find_config()
    except ConfigError:
        return None  # anonymize works on local folders: a config is optional
    return load_config(found)


def _project(args: argparse.Namespace, config: Config | None) -> str:
    project = args.project or (config.xnat.project if config else None) or DEFAULT_PROJECT
    check_label("project", project)
    return str(project)


def _settings(args: argparse.Namespace) -> _Settings:
    """Validate every argument; nothing is created or written here.

    Raises:
        InputError: a label, folder, profile, config or worker count is invalid.
    """
    check_label("subject", args.subject)
    check_label("session", args.session)
    if not 1 <= args.workers <= MAX_WORKERS:
        raise InputError(f"--workers {args.workers}: use 1 to {MAX_WORKERS} processes")
    in_dir, out_dir = args.in_dir.expanduser(), args.out_dir.expanduser()
    if not in_dir.is_dir():
        raise InputError(f"IN_DIR {in_dir}: not a folder; give the folder holding the DICOM files")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"OUT_DIR {out_dir}: exists and is not a folder; give a folder")
    if _resolved(out_dir, "OUT_DIR") == _resolved(in_dir, "IN_DIR"):
        raise InputError(f"OUT_DIR {out_dir} is IN_DIR; give a separate output folder")
    config = _config(args.config)
    profile_path = args.profile or (config.anonymization.profile if config else None)
    project = _project(args, config)
    return _Settings(
        in_dir=in_dir,
        out_dir=out_dir,
        subject=args.subject,
        session=args.session,
        project=project,
        profile=load_profile(profile_path),
        key_path=(args.key or default_key_path(project)).expanduser(),
        mapping=_mapping(args, project, config),
        workers=args.workers,
        encapsulated=Encapsulated(config.anonymization.encapsulated if config else "omit"),
    )


def _resolved(path: Path, name: str) -> Path:
    """``path`` with every symbolic link followed.

    Raises:
        InputError: a link in it points back at itself (a symbolic-link loop).
    """
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError for a loop
        raise InputError(
            f"{name} {path}: cannot be followed ({exc}); remove the symbolic-link loop or "
            "give the real folder"
        ) from exc


def _files(in_dir: Path, out_dir: Path) -> list[Path]:
    """Every file under ``in_dir``, sorted, leaving out the output and quarantine folders.

    Only regular files (or links to one) count: a broken link or a symbolic-link loop is
    not a file, and is left out before its target is ever resolved.
    """
    excluded = [_resolved(out_dir, "OUT_DIR"), _resolved(quarantine_dir(out_dir), "OUT_DIR")]
    files = []
    for path in sorted(in_dir.rglob("*")):
        if path.is_file() and not any(path.resolve().is_relative_to(e) for e in excluded):
            files.append(path)
    if not files:
        raise InputError(f"IN_DIR {in_dir}: holds no file; give the folder with the DICOM files")
    return files


def anonymize_main(argv: list[str]) -> int:
    """``pacsman anonymize``; returns the exit code.

    Raises:
        InputError: bad arguments, or no DICOM instance under IN_DIR (nothing written).
        ItemFailed: some files were quarantined or could not be de-identified.
    """
    settings = _settings(_anonymize_parser().parse_args(argv))
    files = _files(settings.in_dir, settings.out_dir)
    key = load_or_create_key(settings.key_path)
    spec = EngineSpec(settings.profile, key, settings.project, settings.encapsulated)
    tasks = [Task(path, settings.subject, settings.session) for path in files]
    mapping = MappingTable(settings.mapping)
    try:
        mapping.check_key(settings.project, key)
        mapping.check_not_left_behind(settings.project, default_mapping_path(settings.project))
        summary = deidentify_files(
            tasks, settings.out_dir, spec=spec, mapping=mapping, workers=settings.workers
        )
    finally:
        mapping.close()
    _print_summary(summary, settings)
    return _exit_code(summary, settings)


def _print_summary(summary: BatchSummary, settings: _Settings) -> None:
    print(
        f"project {settings.project}, subject {settings.subject}, "
        f"session {settings.session}: {summary.written} file(s) written to {settings.out_dir}"
    )
    where = {Outcome.QUARANTINED: f" (in {quarantine_dir(settings.out_dir)})"}
    for outcome in (Outcome.LEFT_OUT, Outcome.QUARANTINED, Outcome.FAILED, Outcome.SKIPPED):
        reasons: Mapping[str, int] = summary.reasons.get(outcome, {})
        if reasons:
            print(f"{summary.count(outcome)} file(s) {outcome.value}{where.get(outcome, '')}:")
            for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
                print(f"  {count:6d}  {reason}")


def _exit_code(summary: BatchSummary, settings: _Settings) -> int:
    held, failed = summary.count(Outcome.QUARANTINED), summary.count(Outcome.FAILED)
    if summary.written + held + failed == 0:
        raise InputError(
            f"IN_DIR {settings.in_dir}: no DICOM instance found "
            f"({summary.count(Outcome.SKIPPED)} file(s) skipped); nothing was written"
        )
    if held or failed:
        raise ItemFailed(
            f"{held} file(s) quarantined, {failed} failed, {summary.written} written: "
            "quarantined files must not be pushed; see the reasons above"
        )
    return EXIT_OK


def _mapping_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsman mapping",
        description="The mapping table: original PatientID, StudyInstanceUID and "
        "AccessionNumber <-> subject, session and date shift.",
    )
    parser.add_argument("--version", action="version", version=f"pacsman {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export",
        help="write the table as CSV (mode 0600; holds PHI)",
        description="Write the project's mapping table as CSV, mode 0600. It holds PHI "
        "(original PatientIDs, StudyInstanceUIDs, AccessionNumbers): keep it on this machine. "
        "With a postgresql:// job store it is the table every head node shares.",
    )
    export.add_argument("out", type=Path, metavar="OUT.csv")
    _state_arguments(export, key=False)
    copy = commands.add_parser(
        "import",
        help="copy a local table into the shared one of a PostgreSQL job store",
        description="Copy a local mapping table (e.g. ~/.config/pacsman/PROJECT.mapping.sqlite) "
        "into the mapping table the config names: the shared one of a postgresql:// job "
        "store. Run it once, on one node, before the other nodes de-identify; a project the "
        "target already holds is refused and nothing is copied.",
    )
    copy.add_argument("source", type=Path, metavar="FILE.sqlite")
    _state_arguments(copy, key=False)
    return parser


def mapping_main(argv: list[str]) -> int:
    """``pacsman mapping export OUT.csv`` or ``import FILE.sqlite``; returns the exit code.

    Raises:
        InputError: there is no mapping table, or the project label is invalid.
        JobStoreError: the PostgreSQL job store cannot be reached.
    """
    args = _mapping_parser().parse_args(argv)
    if args.command == "import":
        return _import(args)
    needs_config = args.project is None or args.mapping is None
    config = _config(args.config) if needs_config else None
    project = _project(args, config)
    out = args.out.expanduser()
    rows = export_mapping(_mapping(args, project, config), out)
    print(f"{rows} row(s) written to {out} (mode 0600)")
    print(
        f"pacsman: warning: {out} holds PHI (original PatientIDs, StudyInstanceUIDs, "
        "AccessionNumbers); keep it on this machine and delete it when done",
        file=sys.stderr,
    )
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    """``pacsman mapping import FILE.sqlite``: into the mapping the config (or --mapping) names.

    Raises:
        InputError: the target is the source itself, or already holds one of its projects.
    """
    config = _config(args.config) if args.mapping is None else None
    target_location = _mapping(args, _project(args, config), config)
    source = args.source.expanduser()
    if not is_postgresql(target_location) and _resolved(Path(target_location), "--mapping") == (
        _resolved(source, "FILE")
    ):
        raise InputError(
            f"{source} is the mapping table the config names already; give the shared one "
            "(a postgresql:// job store in the config, or --mapping URL)"
        )
    target = MappingTable(target_location)
    try:
        rows = import_mapping(source, target)
        where = target.where
    finally:
        target.close()
    print(f"{rows} row(s) copied from {source} to {where}")
    return EXIT_OK
