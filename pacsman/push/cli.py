"""Command line of the push stage: thin wiring over :mod:`pacsman.push`.

    pacsman xnat upload-resource --project P --subject S --session E [--scan N]
                                 --resource LABEL [--base DIR] [--overwrite] FILE...
    pacsman xnat download --project P [--subject S]... [--from DATE] [--to DATE]
                          [--modality MR]... --out DIR [--extract]
    pacsman upload DIR --subject S --session E [--project P] [--target xnat|dicom|folder]

Each function takes the arguments after the command name and returns the exit code; errors
are raised as :class:`~pacsman.errors.PacsmanError` subclasses for ``pacsman.cli`` to report.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pacsman import __version__
from pacsman.anonymize import check_label
from pacsman.config import Config, load_config
from pacsman.config.options import add_common_options
from pacsman.errors import EXIT_OK, InputError, ItemFailed
from pacsman.push._download import DownloadRequest, download_sessions
from pacsman.push._local import LocalFolder, prepare_upload
from pacsman.push._resource import ResourceRequest, remote_paths, upload_resource
from pacsman.push._xnat_connection import connect, disconnect
from pacsman.push.credentials import resolve_credentials
from pacsman.push.models import PushOutcome
from pacsman.push.queue import push_all, retry_policy
from pacsman.push.targets import open_target
from pacsman.throttle import RetryPolicy

__all__ = ["upload_main", "xnat_main"]


def _date(text: str) -> date:
    for pattern in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, pattern).date()
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYYMMDD or YYYY-MM-DD")


def _xnat_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsman xnat",
        description="XNAT's other jobs: upload derived files (NIfTI, masks, reports) to a "
        "session's resource, or download sessions. The login is xnat.url in the config with "
        "XNAT_USER/XNAT_PASS, xnat.credentials_file or ~/.netrc.",
    )
    parser.add_argument("--version", action="version", version=f"pacsman {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    put = commands.add_parser(
        "upload-resource",
        help="upload derived files to a resource",
        description="Upload files to a resource of an XNAT session (or of one of its scans); "
        "files already there with the same content are skipped.",
    )
    put.add_argument("files", nargs="+", type=Path, metavar="FILE")
    put.add_argument("--project", help="XNAT project ID (default: xnat.project)")
    put.add_argument("--subject", required=True, help="XNAT subject label")
    put.add_argument(
        "--session",
        "--experiment",
        dest="session",
        required=True,
        help="XNAT session (experiment) label; --experiment is the same",
    )
    put.add_argument("--scan", help="scan ID; created when missing (default: the session)")
    put.add_argument("--scan-type", help="type of a created scan (default: the resource)")
    put.add_argument("--resource", required=True, help="resource label, e.g. NIFTI")
    put.add_argument("--format", help="resource format of a created resource")
    put.add_argument(
        "--base",
        type=Path,
        default=Path(),
        help="each file's path in the resource is its path below this folder "
        "(default: the current folder)",
    )
    put.add_argument("--overwrite", action="store_true", help="replace files with other content")
    get = commands.add_parser(
        "download",
        help="download sessions, one zip each",
        description="Download a project's sessions, one zip each (or unzipped with "
        "--extract), with a manifest.csv; sessions already downloaded are skipped.",
    )
    get.add_argument("--project", help="XNAT project ID (default: xnat.project)")
    get.add_argument(
        "--subject",
        action="append",
        default=[],
        help="subject label; repeat or comma-separate for several (default: every subject)",
    )
    get.add_argument(
        "--from",
        dest="date_from",
        type=_date,
        metavar="DATE",
        help="first session date, YYYYMMDD or YYYY-MM-DD, included (default: no limit)",
    )
    get.add_argument(
        "--to",
        dest="date_to",
        type=_date,
        metavar="DATE",
        help="last session date, YYYYMMDD or YYYY-MM-DD, included (default: no limit)",
    )
    get.add_argument(
        "--modality", action="append", default=[], help="e.g. MR; repeatable (default: any)"
    )
    get.add_argument("--out", type=Path, required=True, help="folder for zips and manifest")
    get.add_argument("--extract", action="store_true", help="unzip each session")
    for sub in (put, get):
        add_common_options(sub)
    return parser


def _upload_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsman upload",
        description="De-identify a local folder of DICOM files (one study) and push it.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR")
    parser.add_argument("--subject", required=True, help="XNAT subject label")
    parser.add_argument(
        "--session",
        "--experiment",
        dest="session",
        required=True,
        help="XNAT session (experiment) label; --experiment is the same",
    )
    parser.add_argument("--project", help="XNAT project ID (default: xnat.project)")
    parser.add_argument(
        "--target",
        choices=("xnat", "dicom", "folder"),
        default="xnat",
        help="where to push: xnat (xnat: in the config), dicom (push.dicom) or folder "
        "(push.folder) (default: xnat)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for the de-identified copy "
        "(default: <store_root>/upload/<project>/<subject>/<session>)",
    )
    parser.add_argument("--key", type=Path, help="project key file (default: the pipeline's)")
    parser.add_argument("--mapping", type=Path, help="mapping table (default: the pipeline's)")
    add_common_options(parser)
    return parser


def _project(given: str | None, config: Config) -> str:
    project = given or config.xnat.project
    if project is None:
        raise InputError("no project: give --project or set xnat.project in the config")
    check_label("project", project)
    return project


@contextmanager
def _xnat(config: Config, retry: RetryPolicy) -> Iterator[Any]:
    """One logged-in ``xnat`` session (the push's own connect and error sorting)."""
    if config.xnat.url is None:
        raise InputError("xnat.url is not set; add xnat: {url: https://your.xnat} to the config")
    credentials = resolve_credentials(
        config.xnat.url, credentials_file=config.xnat.credentials_file
    )
    connection = retry.call(lambda: connect(config.xnat, credentials), operation="xnat_connect")
    try:
        yield connection
    finally:
        disconnect(connection)


def xnat_main(argv: list[str]) -> int:
    """``pacsman xnat upload-resource|download``; returns the exit code.

    Raises:
        InputError: bad arguments, labels, paths or config; nothing was sent.
        ItemFailed: some sessions could not be downloaded (see the manifest).
        TransientError, FatalError: XNAT kept failing, or refused the login.
    """
    args = _xnat_parser().parse_args(argv)
    config = load_config(args.config)
    retry = retry_policy(config.push)
    if args.command == "upload-resource":
        return _upload_resource(args, config, retry)
    return _download(args, config, retry)


def _upload_resource(args: argparse.Namespace, config: Config, retry: RetryPolicy) -> int:
    for kind, label in (("subject", args.subject), ("session", args.session)):
        check_label(kind, label)
    request = ResourceRequest(
        project=_project(args.project, config),
        subject=args.subject,
        experiment=args.session,
        resource=args.resource,
        files=tuple(args.files),
        base=args.base,
        scan=args.scan,
        scan_type=args.scan_type,
        format=args.format,
        overwrite=args.overwrite,
    )
    remote_paths(request.files, request.base)  # refuse bad paths before connecting
    with _xnat(config, retry) as connection:
        urls = upload_resource(connection, request, retry=retry, url=config.xnat.url or "")
    for url in urls:
        print(url)
    return EXIT_OK


def _download(args: argparse.Namespace, config: Config, retry: RetryPolicy) -> int:
    subjects = tuple(s.strip() for given in args.subject for s in given.split(",") if s.strip())
    request = DownloadRequest(
        project=_project(args.project, config),
        out=args.out,
        subjects=subjects,
        date_from=args.date_from,
        date_to=args.date_to,
        modalities=tuple(m.strip().upper() for m in args.modality if m.strip()),
        extract=args.extract,
    )
    with _xnat(config, retry) as connection:
        summary = download_sessions(connection, request, retry=retry)
    print(
        f"{summary.matched} session(s) matched: {summary.downloaded} downloaded, "
        f"{summary.skipped} already there, {summary.failed} failed; manifest: {summary.manifest}"
    )
    if summary.failed:
        raise ItemFailed(f"{summary.failed} session(s) failed; see {summary.manifest}")
    return EXIT_OK


def upload_main(argv: list[str]) -> int:
    """``pacsman upload DIR``: de-identify, push, verify; returns the exit code.

    Raises:
        InputError: bad arguments, labels or config; nothing was sent.
        ItemFailed: a file was quarantined, or the push failed (the message says why).
        TransientError, FatalError: the target kept failing, or refused the login.
    """
    args = _upload_parser().parse_args(argv)
    config = load_config(args.config)
    project = _project(args.project, config)
    check_label("subject", args.subject)
    check_label("session", args.session)
    out = args.out or config.store_root / "upload" / project / args.subject / args.session
    folder = LocalFolder(
        args.directory,
        project,
        args.subject,
        args.session,
        out,
        args.key,
        args.mapping,
        replace_out=args.out is None,
    )
    with open_target(config, kind=args.target) as target:
        upload = prepare_upload(folder, config)
        outcomes = push_all(
            [upload],
            target,
            interval=config.push.interval,
            retry=retry_policy(config.push),
        )
    return _report(outcomes, target.name)


def _report(outcomes: list[PushOutcome], target: str) -> int:
    for outcome in outcomes:
        upload = outcome.upload
        print(
            f"{outcome.state} {upload.describe()}: {outcome.files_on_target} of "
            f"{upload.expected_files} file(s) on {target} {outcome.uri or ''} "
            f"({outcome.detail})"
        )
        if outcome.state != "DONE":
            raise ItemFailed(f"the push of {upload.describe()} failed: {outcome.detail}")
    return EXIT_OK
