"""The inbox: query files dropped into ``serve.inbox`` become jobs.

:meth:`Inbox.scan` is one look at the folder; the scheduler calls it every
``serve.inbox_interval`` seconds, and :meth:`Inbox.set_folder` when SIGHUP names another
folder.  The rules:

* A file is taken only once it is seen unchanged (size, mtime, inode) in two consecutive
  looks, so a file still being copied is never touched.  Names that say "still being
  written" are never taken: dotfiles (rsync's temporary names), Office lock files ``~$*``,
  ``*.part``, ``*.filepart``, ``*.partial``, ``*.crdownload``, ``*.tmp``; nor Windows'
  ``Thumbs.db`` and ``desktop.ini``.  Only regular files are taken; a link, FIFO or folder
  is left where it is.
* A file is claimed atomically by ``os.rename`` into ``.claimed/<node>/``: of two nodes
  watching one shared folder, exactly one wins; the other moves on quietly.
* A valid file is queued (:func:`~pacsman.service.submit.queue_job`, ``source="inbox"``,
  with the options of ``serve.inbox_job``) and moved to ``accepted/<name>``; an invalid
  one goes to ``rejected/<name>`` beside ``<name>.errors.txt``, which holds every located
  message, one a line, as ``pacsman validate`` prints them.  An existing file is never
  overwritten: the name gets ``-2``, ``-3``...
* Files a crash left in ``.claimed/<node>/`` are taken up again by the first look of that
  node; a file whose job was already queued is filed in ``accepted/``, not queued again.
* ``accepted/``, ``rejected/`` and ``.claimed/`` are made 0700 and the files in them are
  0600: query files hold patient identifiers.  Logs name the file, never its content.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import structlog

from pacsman.config import Config
from pacsman.config.serve import InboxJob
from pacsman.errors import InputError, Problem, QueryFileError
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import MAX_QUERYFILE_BYTES, Job, JobOptions
from pacsman.layout import (
    PRIVATE_FILE_MODE,
    open_private,
    private_directory,
    safe_component,
    write_private,
)
from pacsman.service.submit import check_options, queue_job

__all__ = [
    "ACCEPTED",
    "CLAIMED",
    "ERRORS_SUFFIX",
    "REJECTED",
    "Inbox",
    "InboxResult",
    "inbox_options",
    "named_after",
    "read_queryfile",
]

_log = structlog.get_logger("pacsman.service")

ACCEPTED = "accepted"
REJECTED = "rejected"
CLAIMED = ".claimed"
ERRORS_SUFFIX = ".errors.txt"
#: Name endings of files still being written (browsers, WinSCP, curl, editors).
_PARTIAL_SUFFIXES = (".part", ".filepart", ".partial", ".crdownload", ".tmp")
#: Files a desktop drops into any folder it shows.
_DESKTOP_FILES = frozenset({"thumbs.db", "desktop.ini"})

#: (size, mtime in ns, inode): a file is taken once two looks see the same.
_Signature = tuple[int, int, int]


@dataclass(frozen=True)
class InboxResult:
    """What one look did with one file: queued (``job``) or rejected (``problems``)."""

    name: str  # the file's name as dropped
    path: Path  # where it is now: accepted/ or rejected/
    job: Job | None = None
    problems: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.job is not None


def inbox_options(job: InboxJob) -> JobOptions:
    """The job options of ``serve.inbox_job`` (``push`` implies save and anonymize)."""
    pushes = job.push is not None
    return JobOptions(
        save=job.save or pushes,
        anonymize=job.anonymize or pushes,
        push=job.push,
        pacs=job.pacs,
        nifti=job.nifti,
        bids=None if job.bids is None else str(job.bids.absolute()),
    )


def named_after(exc: QueryFileError, source: str) -> QueryFileError:
    """``exc`` with every problem located in ``source`` (the name the user knows the file
    by), not in the private copy that was validated."""
    return QueryFileError(replace(problem, source=source) for problem in exc.problems)


def read_queryfile(path: Path, *, source: str | None = None) -> bytes:
    """The bytes of the query file at ``path``: a regular file, at most what a job carries.

    Raises:
        QueryFileError: the file cannot be read, is not a regular file, or is too large
            (located in ``source``, default ``path``).
    """
    shown = source or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        message = f"cannot read the query file ({exc.strerror}); check the path"
        raise _refused(shown, message) from None
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refused(
                shown,
                "the query file is not a regular file (a FIFO, device or folder); save the "
                "query as a CSV or .xlsx file and give that",
            )
        content = stream.read(MAX_QUERYFILE_BYTES + 1)
    if len(content) > MAX_QUERYFILE_BYTES:
        raise _refused(
            shown,
            f"the query file is larger than a job may carry ({MAX_QUERYFILE_BYTES} bytes); "
            "split it into several query files",
        )
    return content


def _refused(source: str, message: str) -> QueryFileError:
    return QueryFileError([Problem(source, message)])


def _waiting(name: str) -> bool:
    """Whether ``name`` says the file is still being written, or is not a query file's."""
    lower = name.lower()
    return (
        name.startswith((".", "~$")) or lower.endswith(_PARTIAL_SUFFIXES) or lower in _DESKTOP_FILES
    )


class Inbox:
    """A folder watched for query files; one :meth:`scan` at a time (not thread-safe).

    Raises (when built or reloaded):
        ConfigError, InputError: ``serve.inbox_job`` does not fit the config (an unknown
            PACS node, de-identification asked for while ``anonymization.enabled`` is off).
    """

    def __init__(
        self,
        store: JobStore,
        config: Config,
        *,
        folder: Path | None = None,
        node_name: str | None = None,
    ) -> None:
        self._store = store
        self._node = safe_component(node_name or config.serve.node_name, fallback="node")
        self._folder: Path | None = None
        self._seen: dict[str, _Signature] = {}
        self._skipped: set[str] = set()
        self._recover = False
        self._config = config
        self._options = inbox_options(config.serve.inbox_job)
        check_options(config, self._options)
        self.set_folder(folder if folder is not None else config.serve.inbox)

    @property
    def folder(self) -> Path | None:
        """The folder watched (None: no inbox)."""
        return self._folder

    def set_folder(self, folder: Path | None) -> None:
        """Watch ``folder`` from the next look on (None: none).  Files claimed there by this
        node before a crash are taken up again by that look."""
        self._folder = folder
        self._seen = {}
        self._skipped = set()
        self._recover = folder is not None

    def reload(self, config: Config) -> None:
        """SIGHUP: the new config's ``serve.inbox`` and ``serve.inbox_job``.

        Raises:
            ConfigError, InputError: the new ``serve.inbox_job`` does not fit the config
                (the inbox keeps its old settings).
        """
        options = inbox_options(config.serve.inbox_job)
        check_options(config, options)
        self._config, self._options = config, options
        if config.serve.inbox != self._folder:
            self.set_folder(config.serve.inbox)

    def scan(self) -> list[InboxResult]:
        """One look: queue or reject every file seen unchanged since the last look.

        Raises:
            OSError: the inbox or its folders cannot be made or read.
            JobStoreError: the job store cannot be written; the file stays claimed and
                the next look takes it up again.
        """
        if self._folder is None:
            return []
        claimed = self._prepare(self._folder)
        results: list[InboxResult] = []
        if self._recover:
            self._recover = False
            for path in sorted(p for p in claimed.iterdir() if p.is_file()):
                _log.info("inbox_recovered", file=path.name)
                results.append(self._take(path, recovered=True))
        for path in self._stable_files(self._folder):
            taken = self._claim(path, claimed)
            if taken is not None:
                results.append(self._take(taken))
        return results

    # -- one look -----------------------------------------------------------------------

    def _prepare(self, folder: Path) -> Path:
        """Make the inbox's folders (0700); return this node's claim folder."""
        for name in (ACCEPTED, REJECTED):
            private_directory(folder / name)
        return private_directory(folder / CLAIMED / self._node)

    def _stable_files(self, folder: Path) -> list[Path]:
        """The regular files seen with the same size, mtime and inode by the last look."""
        now: dict[str, _Signature] = {}
        with os.scandir(folder) as entries:
            for entry in entries:
                if _waiting(entry.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # taken by another node, or deleted, since the listing
                if stat.S_ISREG(info.st_mode):
                    now[entry.name] = (info.st_size, info.st_mtime_ns, info.st_ino)
                elif not stat.S_ISDIR(info.st_mode):
                    self._skip(entry.name)
        ready = [name for name, signature in now.items() if self._seen.get(name) == signature]
        self._seen = now
        return [folder / name for name in sorted(ready)]

    def _skip(self, name: str) -> None:
        if name not in self._skipped:
            self._skipped.add(name)
            _log.warning(
                "inbox_skipped",
                file=name,
                reason="not a regular file (a link, FIFO or device); copy the query file itself",
            )

    def _claim(self, path: Path, claimed: Path) -> Path | None:
        """Rename ``path`` into the claim folder; None when another node took it first."""
        target = claimed / path.name
        if target.exists():
            return None  # a file of the same name waits to be taken up again: later
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None  # another node (or the operator) was first
        self._seen.pop(path.name, None)
        return target

    # -- one file -------------------------------------------------------------------------

    def _take(self, claimed: Path, *, recovered: bool = False) -> InboxResult:
        """Queue the claimed file, or reject it with every located message.

        Raises:
            JobStoreError (and other unexpected errors): the file stays claimed and the
                next look takes it up again.
        """
        name = claimed.name
        try:
            content = read_queryfile(claimed, source=name)
            job = self._queued_before(claimed, content) if recovered else None
            if job is None:
                job = queue_job(
                    self._store,
                    self._config,
                    filename=name,
                    content=content,
                    options=self._options,
                    priority=self._config.serve.inbox_job.priority,
                    source="inbox",
                )
        except QueryFileError as exc:
            return self._reject(claimed, [str(p) for p in named_after(exc, name).problems])
        except InputError as exc:  # ConfigError too: the options do not fit the config
            return self._reject(claimed, str(exc).splitlines())
        except BaseException:
            self._recover = True
            raise
        path = _file_away(claimed, self._folder_of(claimed) / ACCEPTED)
        _log.info("inbox_accepted", job_id=job.id, file=name, to=path.name)
        return InboxResult(name, path, job=job)

    def _reject(self, claimed: Path, problems: list[str]) -> InboxResult:
        name = claimed.name
        try:
            path = _file_away(claimed, self._folder_of(claimed) / REJECTED, errors=problems)
        except BaseException:
            self._recover = True
            raise
        _log.warning("inbox_rejected", file=name, to=path.name, problems=len(problems))
        return InboxResult(name, path, problems=tuple(problems))

    @staticmethod
    def _folder_of(claimed: Path) -> Path:
        """The inbox a claimed file came from: ``<inbox>/.claimed/<node>/<name>``."""
        return claimed.parent.parent.parent

    def _queued_before(self, claimed: Path, content: bytes) -> Job | None:
        """The job a crash left this claimed file's queueing done for, if any: an inbox job
        of the same name and bytes, submitted after the file was last written."""
        written = datetime.fromtimestamp(claimed.stat().st_mtime, UTC)
        for job in self._store.jobs():
            if (
                job.source == "inbox"
                and job.queryfile_name == claimed.name
                and datetime.fromisoformat(job.submitted_at) >= written
                and self._store.job_queryfile(job.id) == content
            ):
                return job
        return None


def _file_away(claimed: Path, folder: Path, *, errors: list[str] | None = None) -> Path:
    """Move ``claimed`` into ``folder`` under its name, or ``-2``, ``-3``... (never over a
    file); with ``errors``, write ``<name>.errors.txt`` beside it first.  Mode 0600.

    Raises:
        OSError: the file cannot be moved or the errors written.
    """
    target = _reserve(folder, claimed.name)
    if errors is not None:
        text = "\n".join(errors) + "\n"
        write_private(target.with_name(target.name + ERRORS_SUFFIX), text.encode("utf-8"))
    os.replace(claimed, target)  # over the empty 0600 file that reserved the name
    with contextlib.suppress(PermissionError):  # the operator's file: the 0700 folder guards it
        os.chmod(target, PRIVATE_FILE_MODE)
    return target


def _reserve(folder: Path, name: str) -> Path:
    """An empty 0600 file ``folder/name`` (or ``name-2``...) that did not exist before."""
    stem, suffix = _split(name)
    for number in range(1, 10_000):
        candidate = folder / (name if number == 1 else f"{stem}-{number}{suffix}")
        try:
            os.close(open_private(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{folder}: 9,999 files named like {name}; empty the folder")


def _split(name: str) -> tuple[str, str]:
    """``("q", ".csv")`` for ``q.csv``; ``("q.tar", ".gz")`` for ``q.tar.gz``."""
    suffix = Path(name).suffix
    return (name[: -len(suffix)], suffix) if suffix else (name, "")
