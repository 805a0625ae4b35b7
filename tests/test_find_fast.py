"""The C-FIND fast channel: PDU/PDV framing on a real socket, transfer syntaxes, faults."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacsman.config import PacsNode
from pacsman.dicom import codec as dimse
from pacsman.dicom._find_fast import (
    _Context,
    _decode,
    _MessageReader,
    _NotPData,
    _ProtocolError,
    _request,
)
from pacsman.dicom.client import DicomPeer
from pacsman.errors import TransientError
from pacsman.query import FindAssociation
from pacsman.testing.fakepacs import FakePacs, Faults
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
    pacs.sendall(_request(context, _identifier(), STUDY_ROOT_FIND, 7, 0))
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
    data = _request(context, _identifier(), STUDY_ROOT_FIND, 1, 64)
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
