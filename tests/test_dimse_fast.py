"""The C-FIND and C-MOVE fast channel: PDU/PDV framing on a real socket, transfer syntaxes,
C-MOVE-RSP counts, faults, and a halt in the middle of a C-MOVE."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import encode

from pacsman.config import PacsNode
from pacsman.dicom import client
from pacsman.dicom import codec as dimse
from pacsman.dicom._dimse_fast import (
    _Context,
    _decode,
    _find_command,
    _MessageReader,
    _move_command,
    _move_response,
    _NotPData,
    _ProtocolError,
    _request,
)
from pacsman.dicom.client import DicomPeer
from pacsman.dicom.scp import InstanceWriter, StorageSCP
from pacsman.errors import TransientError
from pacsman.query import FindAssociation
from pacsman.testing.fakepacs import FakePacs, Faults
from pacsman.testing.synthetic import DEMO_STUDIES
from pacsman.throttle import RetryPolicy

FAST = RetryPolicy(max_attempts=3, initial=0.01, cap=0.05, jitter=0.01)
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


@pytest.fixture
def wire() -> Iterator[tuple[socket.socket, _MessageReader]]:
    """A connected socket pair: the test writes PDUs as the PACS, the reader reads them."""
    pacs, ours = socket.socketpair()
    ours.settimeout(5)
    try:
        yield pacs, _MessageReader(ours)
    finally:
        pacs.close()
        ours.close()


def _context(syntax: str) -> _Context:
    uid = UID(syntax)
    return _Context(1, uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated)


def _identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen"
    ds.StudyDescription = "x" * 64
    ds.StudyInstanceUID = "1.2.3.4"
    return ds


def _find_rsp(status: int, *, dataset: bool, responding_to: int = 7) -> bytes:
    return dimse.command_set(
        dimse.element(dimse.AFFECTED_SOP_CLASS, dimse.padded_uid(STUDY_ROOT_FIND)),
        dimse.element(dimse.COMMAND_FIELD, dimse.ushort(dimse.C_FIND_RSP)),
        dimse.element(dimse.MESSAGE_ID_BEING_RESPONDED_TO, dimse.ushort(responding_to)),
        dimse.element(
            dimse.DATASET_TYPE, dimse.ushort(dimse.DATASET_PRESENT if dataset else dimse.NO_DATASET)
        ),
        dimse.element(dimse.STATUS, dimse.ushort(status)),
    )


def _pdv(control: int, data: bytes) -> bytes:
    return (len(data) + 2).to_bytes(4, "big") + bytes((1, control)) + data


def _pdu(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return b"\x04\x00" + len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
    ],
)
def test_request_round_trips_in_every_default_transfer_syntax(
    wire: tuple[socket.socket, _MessageReader], syntax: str
) -> None:
    """The C-FIND-RQ is a valid command set plus an identifier that decodes intact."""
    pacs, reader = wire
    context = _context(syntax)
    pacs.sendall(_request(context, _find_command(STUDY_ROOT_FIND, 7), _identifier(), 0))
    message = reader.next_message()
    assert dimse.us(message.fields, dimse.COMMAND_FIELD) == dimse.C_FIND_RQ
    assert dimse.us(message.fields, dimse.MESSAGE_ID) == 7
    assert dimse.text(message.fields, dimse.AFFECTED_SOP_CLASS) == STUDY_ROOT_FIND
    assert message.dataset is not None
    decoded = _decode(message.dataset, context)
    assert decoded is not None
    assert str(decoded.PatientName) == "Müller^Jürgen"
    assert decoded.StudyDescription == "x" * 64


def test_messages_split_and_joined_across_pdus_are_reassembled(
    wire: tuple[socket.socket, _MessageReader],
) -> None:
    """A command split over two PDUs, a dataset in three fragments, and the final response
    in the same PDU as the last dataset fragment: two whole messages, in order."""
    pacs, reader = wire
    pending = _find_rsp(0xFF00, dataset=True)
    context = _context(ImplicitVRLittleEndian)
    data = _request(context, _find_command(STUDY_ROOT_FIND, 1), _identifier(), 64)
    identifier_bytes = _identifier_bytes(data)
    chunks = [identifier_bytes[:10], identifier_bytes[10:40], identifier_bytes[40:]]
    stream = b"".join(
        (
            _pdu(_pdv(0x01, pending[:9])),
            _pdu(_pdv(0x03, pending[9:]), _pdv(0x00, chunks[0])),
            _pdu(_pdv(0x00, chunks[1])),
            _pdu(_pdv(0x02, chunks[2]), _pdv(0x03, _find_rsp(0x0000, dataset=False))),
        )
    )
    for i in range(0, len(stream), 5):  # dribbled in 5-byte segments
        pacs.sendall(stream[i : i + 5])
    first, second = reader.next_message(), reader.next_message()
    assert dimse.us(first.fields, dimse.STATUS) == 0xFF00
    assert first.dataset == identifier_bytes
    assert dimse.us(second.fields, dimse.STATUS) == 0x0000
    assert second.dataset is None


def _identifier_bytes(request: bytes) -> bytes:
    """The identifier carried by a request built with one PDV per PDU."""
    reader_pacs, reader_ours = socket.socketpair()
    with reader_pacs, reader_ours:
        reader_pacs.sendall(request)
        message = _MessageReader(reader_ours).next_message()
    assert message.dataset is not None
    return message.dataset


def test_fragments_respect_the_peers_maximum_pdu_length() -> None:
    """Every PDU fits the peer's Maximum Length Received; only the last is marked last."""
    pdus = list(dimse.fragments(1, bytes(1000), command=False, max_pdu=256))
    assert all(len(pdu) - 6 <= 256 for pdu in pdus)
    assert [pdu[11] for pdu in pdus] == [0x00] * (len(pdus) - 1) + [0x02]
    assert sum(len(pdu) - 12 for pdu in pdus) == 1000


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00", _NotPData),  # A-ABORT: left for pynetdicom
        (_pdu(_pdv(0x00, b"\x00\x00")), _ProtocolError),  # dataset before its command
        (b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x09\x01\x03", _ProtocolError),  # PDV too long
        (_pdu(_pdv(0x03, b"\x08\x00\x00\x00")), _ProtocolError),  # not group 0000
    ],
    ids=["abort-pdu", "dataset-first", "pdv-overrun", "bad-command"],
)
def test_broken_framing_is_refused(
    wire: tuple[socket.socket, _MessageReader], stream: bytes, error: type[Exception]
) -> None:
    pacs, reader = wire
    pacs.sendall(stream)
    with pytest.raises(error):
        reader.next_message()


def test_closed_connection_mid_pdu_is_an_error(wire: tuple[socket.socket, _MessageReader]) -> None:
    pacs, reader = wire
    pacs.sendall(_pdu(_pdv(0x03, _find_rsp(0, dataset=False)))[:15])
    pacs.close()
    with pytest.raises(OSError, match="closed the connection mid-PDU"):
        reader.next_message()


FakePacsFactory = Callable[..., FakePacs]


def _association(pacs: FakePacs, retry: RetryPolicy = FAST) -> FindAssociation:
    node = PacsNode("fake", pacs.host, pacs.port, pacs.ae_title)
    return FindAssociation(DicomPeer(node, "PACSMAN"), retry=retry)


def test_pacs_abort_mid_answers_is_retried_whole(fake_pacs: FakePacsFactory) -> None:
    """An A-ABORT after the first match: the query is asked again, on a fresh association,
    and the answer holds every match (never the partial one)."""
    pacs = fake_pacs(faults=Faults(abort_mid_finds=1))
    with _association(pacs) as association:
        answers = association.find("SERIES", {"PatientID": "DEMO001"}, ("SeriesInstanceUID",))
        again = association.find("SERIES", {"PatientID": "DEMO001"}, ("SeriesInstanceUID",))
    truth = {ds.SeriesInstanceUID for ds in pacs.datasets if ds.PatientID == "DEMO001"}
    assert len(truth) > 1
    assert sorted(ds.SeriesInstanceUID for ds in answers) == sorted(truth)
    assert len(again) == len(truth)
    assert "A-ABORT" in pacs.calls


def test_pacs_abort_without_retries_left_is_transient(fake_pacs: FakePacsFactory) -> None:
    pacs = fake_pacs(faults=Faults(abort_mid_finds=1))
    with (
        _association(pacs, RetryPolicy(max_attempts=1)) as association,
        pytest.raises(TransientError),
    ):
        association.find("SERIES", {"PatientID": "DEMO001"}, ("SeriesInstanceUID",))


STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


def _move_rsp(status: int, *, dataset: bool = False, comment: str = "", **counts: int) -> bytes:
    elements = [
        dimse.element(dimse.AFFECTED_SOP_CLASS, dimse.padded_uid(STUDY_ROOT_MOVE)),
        dimse.element(dimse.COMMAND_FIELD, dimse.ushort(dimse.C_MOVE_RSP)),
        dimse.element(dimse.MESSAGE_ID_BEING_RESPONDED_TO, dimse.ushort(3)),
        dimse.element(
            dimse.DATASET_TYPE, dimse.ushort(dimse.DATASET_PRESENT if dataset else dimse.NO_DATASET)
        ),
        dimse.element(dimse.STATUS, dimse.ushort(status)),
    ]
    if comment:
        elements.append(dimse.element(dimse.ERROR_COMMENT, dimse.ae_title(comment)))
    tags = {
        "remaining": dimse.REMAINING_SUBOPERATIONS,
        "completed": dimse.COMPLETED_SUBOPERATIONS,
        "failed": dimse.FAILED_SUBOPERATIONS,
        "warning": dimse.WARNING_SUBOPERATIONS,
    }
    elements += [dimse.element(tags[k], dimse.ushort(v)) for k, v in counts.items()]
    return dimse.command_set(*elements)


def test_c_move_request_names_the_destination() -> None:
    """The C-MOVE-RQ command set: its fields, the Move Destination padded to even length."""
    fields = dimse.parse_command(_move_command(STUDY_ROOT_MOVE, 3, "PACSMAN"))
    assert fields is not None
    assert dimse.us(fields, dimse.COMMAND_FIELD) == dimse.C_MOVE_RQ
    assert dimse.us(fields, dimse.MESSAGE_ID) == 3
    assert dimse.text(fields, dimse.AFFECTED_SOP_CLASS) == STUDY_ROOT_MOVE
    assert fields[dimse.MOVE_DESTINATION] == b"PACSMAN "
    assert dimse.us(fields, dimse.DATASET_TYPE) == dimse.DATASET_PRESENT


def test_c_move_responses_carry_counts_comment_and_failed_uids(
    wire: tuple[socket.socket, _MessageReader],
) -> None:
    """A pending response's counts; a final warning's counts, Error Comment and the Failed
    SOP Instance UID List of its identifier."""
    pacs, reader = wire
    context = _context(ExplicitVRLittleEndian)
    failed = Dataset()
    failed.FailedSOPInstanceUIDList = ["1.2.3.4.5", "1.2.3.4.6"]
    final_rsp = _move_rsp(0xB000, dataset=True, comment="two lost", completed=8, failed=2)
    pacs.sendall(_pdu(_pdv(0x03, _move_rsp(0xFF00, remaining=9, completed=1, failed=0))))
    pacs.sendall(_pdu(_pdv(0x03, final_rsp), _pdv(0x02, encode(failed, False, True))))
    pending = _move_response(reader.next_message(), context, 3)
    final = _move_response(reader.next_message(), context, 3)
    assert pending.pending
    assert (pending.remaining, pending.completed, pending.failed) == (9, 1, 0)
    assert pending.identifier is None
    assert not final.pending
    assert (final.status, final.completed, final.failed, final.warning) == (0xB000, 8, 2, None)
    assert final.error_comment == "two lost"
    assert final.identifier is not None
    assert list(final.identifier.FailedSOPInstanceUIDList) == ["1.2.3.4.5", "1.2.3.4.6"]


def test_a_c_move_response_to_another_request_is_refused(
    wire: tuple[socket.socket, _MessageReader],
) -> None:
    pacs, reader = wire
    pacs.sendall(_pdu(_pdv(0x03, _find_rsp(0xFF00, dataset=False, responding_to=3))))
    with pytest.raises(_ProtocolError, match="another kind of message"):
        _move_response(reader.next_message(), _context(ImplicitVRLittleEndian), 3)


def test_a_halt_mid_c_move_ends_it_at_once(tmp_path: Path, fake_pacs: FakePacsFactory) -> None:
    """An abort from another thread (what a halt does) while the caller reads C-MOVE-RSPs on
    the fast channel: the C-MOVE fails as transient within seconds, not after the move."""
    writer = InstanceWriter(unrouted_directory=tmp_path / "unrouted", unsolicited="keep")
    scp = StorageSCP(
        writer,
        ae_title="PACSMAN",
        bind_host="127.0.0.1",
        port=0,
        allowed_calling_ae_titles=["FAKEPACS"],
    ).start()
    try:
        pacs = fake_pacs(
            move_destinations={"PACSMAN": ("127.0.0.1", scp.port)},
            faults=Faults(pending_delay=0.5),
        )
        peer = DicomPeer(PacsNode("fake", pacs.host, pacs.port, pacs.ae_title), "PACSMAN")
        model = client.MOVE_MODELS["study"]
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = str(DEMO_STUDIES[0].study_instance_uid)
        progress: list[client.RetrieveProgress] = []
        with client.associate(peer, [model, client.FIND_MODELS["study"]]) as assoc:

            def halt(update: client.RetrieveProgress) -> None:
                progress.append(update)
                if len(progress) == 1:
                    threading.Thread(target=assoc.abort).start()

            started = time.monotonic()
            with pytest.raises(TransientError, match="C-MOVE"):
                client.retrieve(
                    peer,
                    assoc,
                    identifier,
                    model=model,
                    move_destination="PACSMAN",
                    on_progress=halt,
                )
            assert time.monotonic() - started < 5  # the whole move would take > 10 s
            assert len(progress) == 1
            assert not assoc.is_established
    finally:
        scp.stop()
