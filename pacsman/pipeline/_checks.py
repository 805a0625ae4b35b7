"""The lines of ``pacsman check`` and its DICOM checks: C-ECHO, C-FIND and the move.

Private to :mod:`pacsman.pipeline`; :mod:`pacsman.pipeline.check` runs them in order and
describes what each answer proves.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydicom.uid import generate_uid

from pacsman.config import Config
from pacsman.dicom import client, scp
from pacsman.dicom.client import DicomPeer
from pacsman.dicom.tls import server_context
from pacsman.errors import (
    EXIT_BAD_INPUT,
    EXIT_FATAL,
    EXIT_OK,
    EXIT_SOME_FAILED,
    FatalError,
    InputError,
    ItemFailed,
    PacsmanError,
)
from pacsman.jobstore import JobStore, RetrieveSeries
from pacsman.models import ItemState
from pacsman.query import FindAssociation
from pacsman.retrieve import FetchResult, Level, RetrieveAssociation, SeriesRequest
from pacsman.throttle import Courtesy, RetryPolicy

__all__ = [
    "CheckLine",
    "Verdict",
    "echo_line",
    "failed",
    "find_line",
    "known_series",
    "move_line",
    "ok",
    "warning",
]

_ONCE = RetryPolicy(max_attempts=1)
#: Runs of the job store looked at for a known series, newest first.
_RUNS_LOOKED_AT = 50
_NO_PATIENT = "PACSMAN-CHECK"
_INFO_FIRST = (
    "run 'pacsman --queryfile Q --info' (C-FIND only) on a query file of yours, then check "
    "again: it moves one instance of a study the job store then knows"
)


class Verdict(StrEnum):
    """What one check found."""

    OK = "ok"
    WARNING = "warning"
    FAILED = "FAILED"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class CheckLine:
    """One line of ``pacsman check``: which check, its verdict, what it proved or the fix."""

    check: str
    verdict: Verdict
    message: str
    exit_code: int = EXIT_OK

    def __str__(self) -> str:
        return f"{self.verdict.value:<8} {self.check:<7} {self.message}"


def ok(check: str, message: str) -> CheckLine:
    """A line that proved what it checks."""
    return CheckLine(check, Verdict.OK, message)


def warning(check: str, message: str) -> CheckLine:
    """A line that could not prove what it checks (exit 1): the message says how to."""
    return CheckLine(check, Verdict.WARNING, message, EXIT_SOME_FAILED)


def failed(check: str, error: PacsmanError) -> CheckLine:
    """A line that found a problem: exit 2 for the config or local setup, else 3."""
    code = EXIT_BAD_INPUT if isinstance(error, InputError) else EXIT_FATAL
    one_line = " ".join(part.strip() for part in str(error).splitlines())  # config problems
    return CheckLine(check, Verdict.FAILED, one_line, code)


def echo_line(peer: DicomPeer) -> CheckLine:
    """C-ECHO once (no retry): reachable, and it accepts an association from pacsman."""
    try:
        client.echo(peer)
    except PacsmanError as exc:
        return failed("C-ECHO", exc)
    over = " over DICOM TLS" if peer.node.tls is not None else ""
    return ok(
        "C-ECHO",
        f"PACS {peer.describe()} accepted an association{over} from calling AE "
        f"{peer.calling_ae_title!r} and answered the C-ECHO",
    )


def known_series(config: Config, pacs: str) -> RetrieveSeries | None:
    """A series of ``pacs`` the job store knows (the newest run's; COMPLETE ones first).

    An unusable job store gives none: the state line reports it.
    """
    if isinstance(config.jobstore, Path) and not config.jobstore.is_file():
        return None
    try:
        with JobStore(config.jobstore, read_only=True) as store:
            for record in store.run_records()[::-1][:_RUNS_LOOKED_AT]:
                mine = [
                    s
                    for s in store.series_for_retrieve(store.run_by_id(record.id))
                    if s.pacs == pacs
                ]
                if mine:
                    complete = [s for s in mine if s.state is ItemState.COMPLETE]
                    return (complete or mine)[0]
    except (PacsmanError, KeyError):
        return None
    return None


def _study_keys(peer: DicomPeer, known: RetrieveSeries | None) -> dict[str, str]:
    keys = {"StudyInstanceUID": known.study_instance_uid if known else str(generate_uid())}
    if peer.node.query_model == "patient":
        keys["PatientID"] = known.patient_id if known else _NO_PATIENT
    return keys


def find_line(peer: DicomPeer, known: RetrieveSeries | None) -> CheckLine:
    """One STUDY-level C-FIND: for the known study, else for a UID no study has."""
    what = f"a study the job store knows (line {known.line})" if known else "a UID no study has"
    try:
        with FindAssociation(peer, retry=_ONCE) as finder:
            found = finder.find("STUDY", _study_keys(peer, known), ("StudyInstanceUID",))
    except PacsmanError as exc:
        return failed("C-FIND", exc)
    return ok(
        "C-FIND",
        f"PACS {peer.describe()} answered a STUDY-level C-FIND ({peer.node.query_model} root) "
        f"for {what}: {len(found)} match(es)",
    )


# -- the move pre-flight ------------------------------------------------------------------------


def move_line(config: Config, peer: DicomPeer, known: RetrieveSeries | None) -> CheckLine:
    """Can the PACS send to pacsman?  One instance of ``known``, else an unknown study."""
    move = peer.node.retrieve_method == "move"
    with tempfile.TemporaryDirectory(prefix="pacsman-check-") as folder:
        writer = scp.InstanceWriter(unrouted_directory=Path(folder) / "unrouted")
        try:
            with _receiving(config, writer, needed=move):
                uid = _one_instance(peer, known) if known is not None else None
                if known is not None and uid is not None:
                    return _moved_one_or_why(peer, writer, known, uid, Path(folder))
                if not move:
                    return warning(
                        "move",
                        "not proved: retrieve_method is get (no move destination needed), and "
                        f"no instance is known to try; {_INFO_FIRST}",
                    )
                return _moved_nothing(peer, writer, Path(folder))
        except PacsmanError as exc:
            return failed("move", exc)


@contextmanager
def _receiving(config: Config, writer: scp.InstanceWriter, *, needed: bool) -> Iterator[None]:
    """pacsman's Storage SCP on local.port, as a run starts it (for a C-MOVE only).

    Raises:
        FatalError: local.port cannot be bound (a pacsman run may be using it).
    """
    if not needed:
        yield
        return
    local = config.local
    callers = local.allowed_calling_ae_titles or tuple(
        sorted({n.called_ae_title for n in config.pacs.values()})
    )
    server = scp.StorageSCP(
        writer,
        ae_title=local.ae_title,
        bind_host=local.bind_host,
        port=local.port,
        allowed_calling_ae_titles=callers,
        accept_any_called_ae_title=local.accept_any_called_ae_title,
        association_request_timeout=local.association_request_timeout,
        max_connections_per_address=local.max_connections_per_address,
        ssl_context=server_context(local.tls) if local.tls is not None else None,
    )
    with server:
        yield


def _one_instance(peer: DicomPeer, known: RetrieveSeries) -> str | None:
    """One SOPInstanceUID of the known series, if the PACS still holds it."""
    scope = {**_study_keys(peer, known), "SeriesInstanceUID": known.series_instance_uid}
    with FindAssociation(peer, retry=_ONCE) as finder:
        answers = finder.find("IMAGE", scope, ("SOPInstanceUID",))
    uids = sorted({str(a.get("SOPInstanceUID", "")) for a in answers} - {""})
    return uids[0] if uids else None


def _retrieve(
    peer: DicomPeer,
    writer: scp.InstanceWriter,
    request: SeriesRequest,
    *,
    level: Level,
    uids: tuple[str, ...] = (),
) -> FetchResult:
    move = peer.node.retrieve_method == "move"
    storage = None if move else scp.storage_role(writer)
    with RetrieveAssociation(
        peer,
        receiver=writer,
        retry=_ONCE,
        courtesy=Courtesy(),
        move_destination=peer.calling_ae_title if move else None,
        storage=storage,
    ) as association:
        return association.fetch([request], level=level, sop_instance_uids=uids, rounds=1)


def _moved_one_or_why(
    peer: DicomPeer, writer: scp.InstanceWriter, known: RetrieveSeries, uid: str, folder: Path
) -> CheckLine:
    """:func:`_moved_one`; a refusal of that one instance names the fix."""
    try:
        return _moved_one(peer, writer, known, uid, folder)
    except ItemFailed as exc:
        return failed("move", FatalError(f"{exc}. {_move_fix(peer)}"))


def _move_fix(peer: DicomPeer) -> str:
    if peer.node.retrieve_method != "move":
        return f"Check pacs.{peer.node.name}.retrieve_method, or ask the PACS administrator"
    ae, port = peer.calling_ae_title, peer.local_port
    return (
        f"The PACS must know AE {ae!r} at this host's address and port {port} (Orthanc: "
        f"DicomModalities), and pacsman must accept its calling AE "
        f"{peer.node.called_ae_title!r} (local.allowed_calling_ae_titles)"
    )


def _moved_one(
    peer: DicomPeer, writer: scp.InstanceWriter, known: RetrieveSeries, uid: str, folder: Path
) -> CheckLine:
    """Retrieve one instance of the known series; it must arrive."""
    request = SeriesRequest(
        known.study_instance_uid, known.series_instance_uid, folder / "one", known.patient_id
    )
    fetched = _retrieve(peer, writer, request, level="IMAGE", uids=(uid,))
    ae, port = peer.calling_ae_title, peer.local_port
    how = f"C-MOVE to {ae!r}" if peer.node.retrieve_method == "move" else "C-GET"
    if fetched.received[known.series_instance_uid]:
        proof = (
            f"the PACS knows AE {ae!r} at this host and port {port}, and pacsman accepts its "
            f"calling AE {peer.node.called_ae_title!r}"
            if peer.node.retrieve_method == "move"
            else "the PACS sends it on pacsman's own association"
        )
        return ok(
            "move",
            f"one instance of a series the job store knows (line {known.line}) arrived by "
            f"{how}: {proof}; the copy was deleted",
        )
    reported = fetched.result.completed or 0
    if reported:
        return failed(
            "move",
            FatalError(
                f"PACS {peer.describe()} says it sent {reported} instance(s) by {how}, but none "
                f"arrived: it has AE {ae!r} at another address, or pacsman refused it. "
                f"{_move_fix(peer)}"
            ),
        )
    return warning(
        "move", f"not proved: PACS {peer.describe()} sent nothing for one known instance"
    )


def _moved_nothing(peer: DicomPeer, writer: scp.InstanceWriter, folder: Path) -> CheckLine:
    """A C-MOVE of a study no PACS holds: only 0xA801 (destination unknown) proves anything.

    Measured: DCMTK dcmqrscp answers Success (0 sub-operations) and Orthanc 0xC000 whether
    they know the destination or not; a pynetdicom-based PACS answers 0xA801 when it does not.
    """
    ae = peer.calling_ae_title
    request = SeriesRequest(str(generate_uid()), str(generate_uid()), folder, _NO_PATIENT)
    try:
        fetched = _retrieve(peer, writer, request, level="STUDY")
    except ItemFailed as exc:
        said = str(exc).split("; ")[0]  # the PACS's answer, without the client's hint
    else:
        status = fetched.result.status
        said = f"PACS {peer.describe()} answered the C-MOVE with 0x{status:04X}"
    return warning(
        "move",
        f"not proved: {said}, for a C-MOVE to {ae!r} of a study it does not hold; PACSes "
        "answer so whether they know the destination or not (DCMTK: Success, Orthanc: "
        f"0xC000), and no instance of a series the job store knows could be tried; {_INFO_FIRST}",
    )
