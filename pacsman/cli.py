"""Command line: every pacsman command, listed here.  A PacsmanError becomes one clear message
and an exit code.

    pacsman --queryfile q.csv [--info] [--save] [--anonymize] [--push [xnat|dicom|folder]]
            [--workers N] [--out_directory DIR] [--pacs NAME] [--config PATH]
            [--adopt-existing] [--new-run]
                                            the pipeline: validate, C-FIND, retrieve, verify,
                                            de-identify, push, verify on the target (here)
    pacsman validate q.csv [--config PATH]  check a query file, send nothing (here)
    pacsman echo [--pacs NAME]              C-ECHO a PACS node (here)
    pacsman anonymize IN_DIR OUT_DIR --subject S --session E
                                            de-identify a folder (pacsman.anonymize.cli)
    pacsman mapping export OUT.csv          the local pseudonym table (pacsman.anonymize.cli)
    pacsman upload DIR --subject S --session E
                                            de-identify and push a local folder (pacsman.push.cli)
    pacsman xnat upload-resource|download   XNAT side tools (pacsman.push.cli)

Exit codes: 0 every row done; 1 some rows failed; 2 bad input or config, nothing sent (or,
for series folders the job store does not know, nothing retrieved); 3 fatal (e.g. the PACS
rejects pacsman's AE title, or the job store cannot be used).

Every command, the stage commands too, logs as ``log:`` in the config says (level, file,
console); ``--log-level`` overrides the level.  The error that ends a command is logged with
its traceback at debug level, and in ``log.file`` when it is fatal.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from pacsman import __version__
from pacsman.config import Config, load_config
from pacsman.dicom import client
from pacsman.dicom.client import DicomPeer
from pacsman.errors import (
    EXIT_BAD_INPUT,
    EXIT_FATAL,
    EXIT_OK,
    EXIT_SOME_FAILED,
    ConfigError,
    InputError,
    PacsmanError,
)
from pacsman.log import configure_logging, log_failure
from pacsman.pipeline import RunOptions, RunSummary, run_queryfile
from pacsman.queryfile import load_queryfile

__all__ = ["main"]

_SUBCOMMANDS = ("validate", "echo")

#: Subcommands that live with their stage: name -> (module, function taking argv, returning the
#: exit code).  They raise PacsmanError subclasses; main() turns those into messages.
_STAGE_COMMANDS: dict[str, tuple[str, str]] = {
    "anonymize": ("pacsman.anonymize.cli", "anonymize_main"),
    "mapping": ("pacsman.anonymize.cli", "mapping_main"),
    "xnat": ("pacsman.push.cli", "xnat_main"),
    "upload": ("pacsman.push.cli", "upload_main"),
}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="config YAML (default: search order)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--version", action="version", version=f"pacsman {__version__}")


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsman",
        description="Query a PACS for the studies in a query file; --info lists what it holds.",
        epilog="Other commands: 'pacsman validate Q.CSV', 'pacsman echo'. "
        "Exit codes: 0 done, 1 some rows failed, 2 bad input (nothing sent), 3 fatal.",
    )
    parser.add_argument("--queryfile", "-q", type=Path, required=True, help="query CSV")
    parser.add_argument("--info", action="store_true", help="write the per-series info CSV")
    parser.add_argument("--save", action="store_true", help="retrieve the series (C-MOVE/C-GET)")
    parser.add_argument(
        "--anonymize",
        action="store_true",
        help="de-identify every COMPLETE series into <out_directory>/anonymized (PS3.15)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="de-identification worker processes (default 1)"
    )
    parser.add_argument(
        "--push",
        nargs="?",
        const="xnat",
        choices=("xnat", "dicom", "folder"),
        help="push every complete, de-identified session (default target: xnat); "
        "implies --anonymize",
    )
    parser.add_argument(
        "--out_directory",
        "--out-directory",
        type=Path,
        dest="out_directory",
        help="where the info CSV goes (default: store_root from the config, ./data)",
    )
    parser.add_argument("--pacs", help="PACS node for rows without a Pacs column")
    parser.add_argument(
        "--adopt-existing",
        action="store_true",
        help="with --save: series folders already on disk that the job store does not know "
        "are kept; those holding as many instances as C-FIND reports are not retrieved again",
    )
    parser.add_argument(
        "--new-run",
        action="store_true",
        help="with --save: start a new run on purpose (the job store's run for this query "
        "file is retired) and retrieve every series again",
    )
    _common(parser)
    return parser


def _sub_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"pacsman {command}")
    if command == "validate":
        parser.add_argument("queryfile", type=Path)
        parser.description = "Check a query file; report every problem as file:line:column."
    else:
        parser.add_argument("--pacs", help="node name (default: default_pacs)")
        parser.description = "C-ECHO a PACS node: proves both AE titles are known."
    _common(parser)
    return parser


def _load_config(path: Path | None) -> Config:
    return load_config(path)


def _validate(args: argparse.Namespace) -> int:
    try:
        config: Config | None = _load_config(args.config)
    except ConfigError:
        if args.config is not None:
            raise
        config = None
    if config is None:
        queryfile = load_queryfile(args.queryfile)
    else:
        queryfile = load_queryfile(
            args.queryfile, character_sets=config.character_sets, default_pacs=config.default_pacs
        )
    for warning in (*(config.warnings if config else ()), *queryfile.warnings):
        print(warning, file=sys.stderr)
    note = "" if config is not None else " (no config found: Pacs names not checked)"
    print(f"{args.queryfile}: {len(queryfile.rows)} row(s) OK{note}")
    return EXIT_OK


def _echo(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    node = config.node(args.pacs)
    peer = DicomPeer(node, config.local.ae_title, config.local.port)
    client.echo(peer)
    over = " over DICOM TLS" if node.tls is not None else ""
    print(f"C-ECHO {config.local.ae_title} -> {peer.describe()}{over}: OK")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if not (args.info or args.save or args.anonymize or args.push):
        raise InputError(
            "nothing to do: add --info (list what the PACS holds for each row), "
            "--save (retrieve it) or --anonymize (de-identify what was retrieved)"
        )
    if not 1 <= args.workers <= 64:
        raise InputError(f"--workers {args.workers}: use 1 to 64 worker processes")
    for flag, given in (("--adopt-existing", args.adopt_existing), ("--new-run", args.new_run)):
        if given and not args.save:
            raise InputError(f"{flag} is about retrieving: use it with --save")
    config = _load_config(args.config)
    out = args.out_directory if args.out_directory is not None else config.store_root
    options = RunOptions(
        queryfile=args.queryfile,
        out_directory=out,
        save=args.save,
        anonymize=args.anonymize,
        push=args.push,
        workers=args.workers,
        pacs=args.pacs,
        adopt_existing=args.adopt_existing,
        new_run=args.new_run,
    )
    summary = run_queryfile(options, config)
    _print_summary(summary)
    return EXIT_OK if summary.ok else EXIT_SOME_FAILED


def _print_summary(summary: RunSummary) -> None:
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.states.items()))
    how = "resumed" if summary.resumed else "new"
    print(f"run {summary.run_id} ({how}): {summary.rows} row(s): {states}")
    print(
        f"{summary.studies} study(ies), {summary.series} series, "
        f"{summary.expected_instances} instance(s) expected"
    )
    if summary.series_states:
        series = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.series_states.items()))
        print(f"series: {series}; {summary.received_instances} instance(s) received")
    if summary.adopted:
        print(f"{summary.adopted} series adopted from disk (their count matched C-FIND)")
    if summary.queried_now == 0 and summary.worked_now == 0 and not summary.adopted:
        print("nothing to do: every row and series was already settled in the job store")
    if summary.failed_lines:
        lines = ", ".join(str(n) for n in summary.failed_lines)
        print(f"rows that need attention (see the info CSV 'detail' column): lines {lines}")
    print(f"info: {summary.info_csv}")


def _configure_logging(config_path: Path | None, log_level: str | None) -> None:
    """Logging as the config's ``log:`` section says; without a usable config, the defaults.

    A config that cannot be read is reported by the command itself, with every problem.
    """
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
    """Entry point of the ``pacsman`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _STAGE_COMMANDS:
        return _stage_command(argv[0], argv[1:])
    command = argv[0] if argv and argv[0] in _SUBCOMMANDS else None
    parser = _sub_parser(command) if command else _run_parser()
    args = parser.parse_args(argv[1:] if command else argv)
    _configure_logging(args.config, args.log_level)
    handler = {"validate": _validate, "echo": _echo}.get(command or "", _run)
    return _guarded(lambda: handler(args))


def _guarded(call: Callable[[], int]) -> int:
    """Run a command; turn pacsman's errors into one clear line and the exit code."""
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
        print("pacsman: interrupted; the job store keeps what was done", file=sys.stderr)
        return EXIT_FATAL
    except Exception as exc:  # the CLI is one of the two places that catch broadly
        structlog.get_logger("pacsman.cli").exception("unexpected_error")
        print(f"pacsman: unexpected error: {exc!r}; please report it", file=sys.stderr)
        return EXIT_FATAL


if __name__ == "__main__":
    sys.exit(main())
