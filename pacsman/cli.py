"""Command line: every pacsman command, listed here.  A PacsmanError becomes one clear message
and an exit code.

    pacsman --queryfile q.csv [--info] [--save] [--anonymize] [--push [xnat|dicom|folder]]
            [--workers N] [--out_directory DIR] [--pacs NAME] [--config PATH]
            [--adopt-existing] [--new-run] [--nifti [--bids MAP]]
                                            the pipeline: validate, C-FIND, retrieve, verify,
                                            de-identify, push, verify on the target (here)
    pacsman validate q.csv [--config PATH]  check a query file, send nothing (here)
    pacsman echo [--pacs NAME]              C-ECHO a PACS node (here)
    pacsman check                           pre-flight of config, PACS, XNAT, state, disk
    pacsman status | runs | report          what the job store knows about runs
    pacsman init [PATH] [--force]           write the commented example config (here)
    pacsman anonymize IN_DIR OUT_DIR --subject S --session E
                                            de-identify a folder (pacsman.anonymize.cli)
    pacsman mapping export OUT.csv          the local pseudonym table (pacsman.anonymize.cli)
    pacsman upload DIR --subject S --session E
                                            de-identify and push a local folder (pacsman.push.cli)
    pacsman xnat upload-resource|download   XNAT side tools (pacsman.push.cli)
    pacsman dqr --queryfile q.csv [--pacs-id N | --pacs-ae AE]
                                            XNAT's DQR pulls each study (pacsman.dqr.cli)

``COMMANDS`` below lists every command with its one-line description (``pacsman --help``);
a name that is not a command gets "unknown command 'valdate'; did you mean 'validate'?".

Exit codes: 0 every row done; 1 some rows failed; 2 bad input or config, nothing sent (or,
for series folders the job store does not know, nothing retrieved); 3 fatal (e.g. the PACS
rejects pacsman's AE title, or the job store cannot be used); 4 (``status``) the run is still
going; 130 interrupted (Ctrl-C): the same command resumes.

Every command, the stage commands too, logs as ``log:`` in the config says (level, file,
console); ``--log-level`` overrides the level.  The error that ends a command is logged with
its traceback at debug level, and in ``log.file`` when it is fatal.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from pacsman.config import DEFAULT_SEARCH, Config, load_config
from pacsman.config.options import add_common_options, add_push_option, add_queryfile_options
from pacsman.errors import (
    EXIT_BAD_INPUT,
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    ConfigError,
    InputError,
    PacsmanError,
)

# Imported where they are used, so that --help and --version start fast: logging (structlog,
# which imports rich), the query-file reader, and the pipeline (DICOM, the job store).
if TYPE_CHECKING:
    from pacsman.pipeline import RunSummary

__all__ = ["COMMANDS", "main"]

#: Every command, in the order ``pacsman --help`` lists them, with its one-line description.
#: A new command gets its line here, and is dispatched by _SUBCOMMANDS or _STAGE_COMMANDS.
COMMANDS: dict[str, str] = {
    "validate": "check a query file (every problem as file:line:column); sends nothing",
    "echo": "C-ECHO a PACS node: is it reachable, and does it accept an association?",
    "check": "check config, PACS (echo, find, move), XNAT, key, mapping table and disk",
    "status": "how far a run is and what needs attention (reads the job store only)",
    "runs": "list the runs in the job store",
    "report": "export a run's rows with their state per stage and the reason (csv, xlsx)",
    "anonymize": "de-identify a local folder of DICOM files (PS3.15) into another folder",
    "mapping": "export the local pseudonym table (original IDs <-> labels; holds PHI)",
    "upload": "de-identify a local folder of DICOM files and push it (XNAT, DICOM, folder)",
    "nifti": "convert a folder of de-identified DICOM series to NIfTI (dcm2niix), optional BIDS",
    "xnat": "XNAT side tools: upload-resource (derived files), download (sessions)",
    "dqr": "XNAT pulls the query file's studies from the PACS itself (DQR), followed, verified",
    "init": "write the commented example config to PATH (default config/pacsman.yaml)",
    "serve": "run the service: job queue, Storage SCP, scheduler, inbox, web page and API",
    "submit": "queue a query file as a job of the service (validated first; sends nothing)",
    "jobs": "list the service's jobs: state, priority, options, node, progress",
    "cancel": "cancel a job (a running one stops at the next series)",
    "pause": "pause a job (a running one pauses at the next series)",
    "resume": "queue a paused job again",
    "retry-failed": "queue a failed job again: its failed rows and series are tried again",
    "jobstore": "job store tools: migrate a SQLite job store into PostgreSQL",
}

_SUBCOMMANDS = ("validate", "echo", "init")

#: ``pacsman init`` writes this package-data copy of config/pacsman.example.yaml
#: (tests/test_init.py keeps the two identical).
_EXAMPLE_CONFIG = "pacsman.example.yaml"

#: Subcommands that live with their stage: name -> (module, function taking argv, returning the
#: exit code).  They raise PacsmanError subclasses; main() turns those into messages.
_STAGE_COMMANDS: dict[str, tuple[str, str]] = {
    "anonymize": ("pacsman.anonymize.cli", "anonymize_main"),
    "mapping": ("pacsman.anonymize.cli", "mapping_main"),
    "xnat": ("pacsman.push.cli", "xnat_main"),
    "upload": ("pacsman.push.cli", "upload_main"),
    "nifti": ("pacsman.nifti.cli", "nifti_main"),
    "dqr": ("pacsman.dqr.cli", "dqr_main"),
    "check": ("pacsman.pipeline.check", "check_main"),
    "status": ("pacsman.pipeline.status", "status_main"),
    "runs": ("pacsman.pipeline.status", "runs_main"),
    "report": ("pacsman.pipeline.export", "report_main"),
    "serve": ("pacsman.service.cli", "serve_main"),
    "submit": ("pacsman.service.cli", "submit_main"),
    "jobs": ("pacsman.service.cli", "jobs_main"),
    "cancel": ("pacsman.service.cli", "cancel_main"),
    "pause": ("pacsman.service.cli", "pause_main"),
    "resume": ("pacsman.service.cli", "resume_main"),
    "retry-failed": ("pacsman.service.cli", "retry_failed_main"),
    "jobstore": ("pacsman.jobstore.cli", "jobstore_main"),
}


_RUN_DESCRIPTION = """\
Move the studies a query file names from a PACS into XNAT: validate the file, ask the PACS
what it holds (C-FIND), then retrieve and verify (--save), de-identify (--anonymize), push
and verify on the target (--push). Every step is recorded in the job store: the same
command run again resumes where it stopped."""

_EXIT_CODES = """\
exit codes: 0 every row done; 1 some rows need attention (the info CSV's detail says why);
  2 bad input or config, nothing sent; 3 fatal (the message says what to fix);
  4 (pacsman status) the run is still going; 130 interrupted: run the same command again."""


def _commands_epilog() -> str:
    """The commands, one line each, and the exit codes: the end of ``pacsman --help``."""
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name.ljust(width)}  {summary}" for name, summary in COMMANDS.items()]
    return "\n".join(["commands ('pacsman COMMAND --help' for each):", *lines, "", _EXIT_CODES])


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsman",
        usage="pacsman --queryfile Q [--info] [--save] [--anonymize] [--push [TARGET]] ...\n"
        "       pacsman COMMAND [ARGS] (COMMAND --help for each)",
        description=_RUN_DESCRIPTION,
        epilog=_commands_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--queryfile", "-q", type=Path, required=True, help="query file (queryfiles/README.md)"
    )
    add_queryfile_options(parser)
    parser.add_argument(
        "--info",
        action="store_true",
        help="query only: C-FIND every row and list what the PACS holds in the info CSV. "
        "Every run writes the info CSV (<out_directory>/<query file name>_info.csv), "
        "with or without --info",
    )
    parser.add_argument(
        "--save",
        action="store_true",
        help="retrieve every selected series (C-MOVE or C-GET, as pacs.NAME.retrieve_method "
        "says) into --out_directory and verify it is complete",
    )
    parser.add_argument(
        "--anonymize",
        action="store_true",
        help="de-identify every COMPLETE series into <out_directory>/anonymized/ (PS3.15); "
        "without --save, what earlier runs retrieved",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="de-identification worker processes, 1-64 (default: 1)",
    )
    parser.add_argument(
        "--nifti",
        action="store_true",
        help="convert each de-identified series with dcm2niix into "
        "<out_directory>/nifti/<subject>/<session>/<SeriesNumber>/ (NIfTI + JSON sidecars, "
        "leak-checked); with --push xnat also into each scan's NIFTI resource. Needs "
        "--anonymize (or --push)",
    )
    parser.add_argument(
        "--bids",
        type=Path,
        metavar="MAP",
        help="with --nifti: also a BIDS folder <out_directory>/bids/sub-*/ses-*/<datatype>/, "
        "from the SeriesDescription patterns of the mapping file MAP (series that match "
        "nothing are listed, not guessed)",
    )
    add_push_option(parser)
    parser.add_argument(
        "--out_directory",
        "--out-directory",
        type=Path,
        dest="out_directory",
        metavar="DIR",
        help="where everything goes: the retrieved series (DIR/<subject>/<session>/<series>/), "
        "the de-identified copies (DIR/anonymized/) and the info CSV "
        "(default: store_root from the config, whose default is ./data)",
    )
    parser.add_argument(
        "--pacs",
        metavar="NAME",
        help="PACS node (a name under pacs: in the config) for rows without a Pacs column "
        "(default: default_pacs, else the first node)",
    )
    parser.add_argument(
        "--adopt-existing",
        action="store_true",
        help="with --save or --push: series folders already on disk that the job store does "
        "not know are kept; those holding as many instances as C-FIND reports are not "
        "retrieved again",
    )
    parser.add_argument(
        "--new-run",
        action="store_true",
        help="with --save or --push: start a new run on purpose (the job store's run for this "
        "query file is retired) and retrieve every series again",
    )
    add_common_options(parser)
    return parser


def _sub_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"pacsman {command}")
    if command == "init":
        return _init_parser(parser)
    if command == "validate":
        parser.add_argument(
            "queryfile", type=Path, metavar="QUERYFILE", help="query file (queryfiles/README.md)"
        )
        add_queryfile_options(parser)
        parser.description = (
            "Check a query file (CSV or .xlsx) and send nothing: every problem as "
            "file:line:column (in a workbook file:sheet:B7). "
            "With a config, each row's Pacs name is checked too."
        )
    else:
        parser.add_argument("--pacs", help="node name (default: default_pacs)")
        parser.description = (
            "C-ECHO a PACS node. Success proves that the PACS is reachable at its host and "
            "port and accepts an association from pacsman's calling AE title (local.ae_title) "
            "to its called AE title; many PACSes accept any calling AE title for a C-ECHO. "
            "It does not prove that the PACS can send to pacsman (the move destination): "
            "'pacsman check' tests that."
        )
    add_common_options(parser)
    return parser


def _init_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = (
        "Write the commented example config (every key with its default) to PATH, mode 0600, "
        "to edit. An existing file is never overwritten without --force."
    )
    parser.add_argument(
        "path",
        nargs="?",
        type=Path,
        metavar="PATH",
        help=f"where to write it (default: {DEFAULT_SEARCH[0]}, the first place pacsman looks)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing PATH")
    add_common_options(parser, config="the same as PATH")
    return parser


def _load_config(path: Path | None) -> Config:
    return load_config(path)


def _validate(args: argparse.Namespace) -> int:
    from pacsman.queryfile import load_queryfile

    try:
        config: Config | None = _load_config(args.config)
    except ConfigError:
        if args.config is not None:
            raise
        config = None
    how = {"sheet": args.sheet, "encoding": args.encoding}
    if config is None:
        queryfile = load_queryfile(args.queryfile, **how)
    else:
        queryfile = load_queryfile(
            args.queryfile,
            character_sets=config.character_sets,
            default_pacs=config.default_pacs,
            **how,
        )
    for warning in (*(config.warnings if config else ()), *queryfile.warnings):
        print(warning, file=sys.stderr)
    note = "" if config is not None else " (no config found: Pacs names not checked)"
    print(f"{args.queryfile}: {len(queryfile.rows)} row(s) OK{note}")
    return EXIT_OK


def _echo(args: argparse.Namespace) -> int:
    from pacsman.dicom import client
    from pacsman.dicom.client import DicomPeer

    config = _load_config(args.config)
    node = config.node(args.pacs)
    peer = DicomPeer(node, config.local.ae_title, config.local.port)
    client.echo(peer)
    over = " over DICOM TLS" if node.tls is not None else ""
    print(f"C-ECHO {config.local.ae_title} -> {peer.describe()}{over}: OK")
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    """``pacsman init [PATH]``: the example config shipped in the package, written to edit."""
    if args.path is not None and args.config is not None and args.path != args.config:
        raise InputError(f"init: PATH {args.path} and --config {args.config} differ; give one")
    path: Path = (args.path or args.config or DEFAULT_SEARCH[0]).expanduser()
    example = resources.files("pacsman").joinpath("data", _EXAMPLE_CONFIG)
    _write_private(path, example.read_text(encoding="utf-8"), force=args.force)
    flag = "" if path == DEFAULT_SEARCH[0] else f" --config {path}"
    print(f"wrote {path} (mode 0600): every key, commented, with its default")
    print(
        f"next: edit it (pacs: your PACS node; local: pacsman's AE title and port, which the "
        f"PACS must know), then run: pacsman check{flag}"
    )
    return EXIT_OK


def _write_private(path: Path, text: str, *, force: bool) -> None:
    """Write ``text`` to ``path`` with mode 0600; replace an existing file only if ``force``.

    Raises:
        InputError: ``path`` is a folder, or exists and ``force`` is false.
    """
    if path.is_dir():
        raise InputError(f"init: {path} is a folder; give a file, e.g. {path / 'pacsman.yaml'}")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if force else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(
            f"init: {path} already exists and pacsman init never overwrites a config; "
            "edit it, give another PATH, or add --force to replace it"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)  # whatever the umask
        out.write(text)
    if force:
        os.replace(target, path)


def _run(args: argparse.Namespace) -> int:
    if not (args.info or args.save or args.anonymize or args.push):
        raise InputError(
            "nothing to do: add --info (list what the PACS holds for each row), "
            "--save (retrieve it), --anonymize (de-identify what was retrieved) "
            "or --push (all of it, then push)"
        )
    if not 1 <= args.workers <= 64:
        raise InputError(f"--workers {args.workers}: use 1 to 64 worker processes")
    save = args.save or args.push is not None  # --push implies --save (and --anonymize)
    for flag, given in (("--adopt-existing", args.adopt_existing), ("--new-run", args.new_run)):
        if given and not save:
            raise InputError(f"{flag} is about retrieving: use it with --save or --push")
    # The pipeline (DICOM, the job store) is imported by the command that runs it only, so
    # that validate, submit and the other commands start fast.
    from pacsman.pipeline import RunOptions, run_queryfile

    config = _load_config(args.config)
    out = args.out_directory if args.out_directory is not None else config.store_root
    options = RunOptions(
        queryfile=args.queryfile,
        out_directory=out,
        save=save,
        anonymize=args.anonymize,
        push=args.push,
        workers=args.workers,
        pacs=args.pacs,
        adopt_existing=args.adopt_existing,
        new_run=args.new_run,
        sheet=args.sheet,
        encoding=args.encoding,
        nifti=args.nifti,
        bids=args.bids,
    )
    summary = run_queryfile(options, config)
    _print_summary(summary)
    return EXIT_OK if summary.ok else EXIT_SOME_FAILED


def _print_summary(summary: RunSummary) -> None:
    """Every stage, where the files are, the rows that need attention and why, what next
    (:meth:`~pacsman.pipeline.RunSummary.lines`; the same as the ``run_finished`` event)."""
    print("\n".join(summary.lines()), flush=True)


def _configure_logging(config_path: Path | None, log_level: str | None) -> None:
    """Logging as the config's ``log:`` section says; without a usable config, the defaults.

    A config that cannot be read is reported by the command itself, with every problem.
    """
    from pacsman.log import configure_logging

    level, log_file, console = log_level or "info", None, "auto"
    try:
        config = load_config(config_path)
    except PacsmanError:
        pass
    else:
        level, log_file, console = (
            log_level or config.log.level,
            config.log.file,
            config.log.console,
        )
    try:
        configure_logging(level=level, file=log_file, console=console)
    except OSError as exc:  # log.file cannot be opened: say so, and log to the console alone
        configure_logging(level=level, console=console)
        print(
            f"pacsman: warning: log.file {log_file}: {exc.strerror}; logging to the console only",
            file=sys.stderr,
        )


def _logging_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``--config`` and ``--log-level`` of a stage command; its arguments without the latter."""
    level = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    level.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    known, rest = level.parse_known_args(argv)
    config = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    config.add_argument("--config", type=Path)
    known.config = config.parse_known_args(rest)[0].config
    return known, rest


def _stage_command(name: str, argv: list[str]) -> int:
    module, function = _STAGE_COMMANDS[name]
    run: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
    known, rest = _logging_arguments(argv)
    _configure_logging(known.config, known.log_level)
    return _guarded(lambda: run(rest))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pacsman`` console script; returns the exit code.

    Without ``argv`` (the console script, ``python -m pacsman``: the process's own command
    line) the process exits once it returns, so its objects are frozen first
    (:func:`gc.freeze`): the interpreter's last garbage collections then skip them, which
    took 0.1-0.4 s with DICOM and a run's records loaded.  Everything that must reach disk
    (files, the job store, the log) is closed by then.
    """
    if argv is not None:
        return _dispatch(list(argv))
    try:
        return _dispatch(sys.argv[1:])
    finally:
        gc.freeze()


def _dispatch(argv: list[str]) -> int:
    """Run the command ``argv`` names (the arguments after the program's name)."""
    if argv and argv[0] in _STAGE_COMMANDS:
        return _stage_command(argv[0], argv[1:])
    if not argv:
        _run_parser().print_help(sys.stderr)
        return EXIT_BAD_INPUT
    if not argv[0].startswith("-") and argv[0] not in _SUBCOMMANDS:
        return _unknown_command(argv[0])
    command = argv[0] if argv[0] in _SUBCOMMANDS else None
    parser = _sub_parser(command) if command else _run_parser()
    args = parser.parse_args(argv[1:] if command else argv)
    _configure_logging(None if command == "init" else args.config, args.log_level)
    handler = {"validate": _validate, "echo": _echo, "init": _init}.get(command or "", _run)
    return _guarded(lambda: handler(args))


def _unknown_command(name: str) -> int:
    """Exit 2 for a first argument that is no command, naming the closest one."""
    known = [c for c in COMMANDS if c in _SUBCOMMANDS or c in _STAGE_COMMANDS]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{close[0]}'?"
    elif Path(name).suffix.lower() in (".csv", ".xlsx", ".txt"):
        hint = f"a query file goes after --queryfile: pacsman --queryfile {name} --info"
    else:
        hint = f"the commands are {', '.join(known)}; 'pacsman --help' describes them"
    print(f"pacsman: unknown command '{name}'; {hint}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _guarded(call: Callable[[], int]) -> int:
    """Run a command; turn pacsman's errors into one clear line and the exit code."""
    import structlog

    from pacsman.log import log_failure

    try:
        return call()
    except InputError as exc:
        log_failure(exc)
        print(f"pacsman: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PacsmanError as exc:
        log_failure(exc, fatal=exc.exit_code == EXIT_FATAL)
        print(f"pacsman: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: no traceback now
        from pacsman.pipeline import INTERRUPTED

        print(f"pacsman: {INTERRUPTED}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the CLI is one of the two places that catch broadly
        structlog.get_logger("pacsman.cli").exception("unexpected_error")
        print(f"pacsman: unexpected error: {exc!r}; please report it", file=sys.stderr)
        return EXIT_FATAL


if __name__ == "__main__":
    sys.exit(main())
