"""DICOM TLS (issue 10, "New capability: DICOM TLS") against real TLS peers on 127.0.0.1.

Certificates are made here (:mod:`pacsman.testing.tls`): one CA, a peer certificate it signs
(used by every trusted peer, as server and as client), an expired one and one from a second
CA that nobody trusts.  The peers:

* Orthanc with ``DicomTlsEnabled`` (it requires a client certificate), and Orthanc's own
  C-STORE/C-MOVE SCU towards modalities with ``UseDicomTls``;
* DCMTK's ``/usr/bin/storescp +tls``, ``storescu +tls`` and ``echoscu +tls``.

First the peers are shown to talk to each other, so that a failure below is pacsman's; then
``pacsman --queryfile q.csv --save`` runs over TLS both ways (C-FIND/C-MOVE/C-GET with
``pacs.<node>.tls``, Orthanc's C-STORE into the Storage SCP with ``local.tls``), DCMTK stores
into the Storage SCP over TLS, the ``dicom`` push target stores into ``storescp +tls``, and
every misconfiguration fails fast, naming the node and the fix.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import csv
import json
import shutil
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydicom import dcmwrite
from structlog.testing import capture_logs

from pacsman.cli import main
from pacsman.config import TlsConfig, parse_config
from pacsman.config.push import DicomTarget
from pacsman.dicom.scp import InstanceWriter, StorageSCP, StoredInstance
from pacsman.dicom.tls import server_context
from pacsman.errors import FatalError
from pacsman.push import SessionUpload, push_all
from pacsman.push.dicomstore import DicomStoreTarget
from pacsman.testing.dcmtk import StoreSCP, dcmtk_tool, run_dcmtk
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer, orthanc_available
from pacsman.testing.synthetic import SeriesSpec, StudySpec, iter_datasets
from pacsman.testing.tls import EXPIRED, PEER, UNTRUSTED, Pki, TlsFiles, make_pki
from pacsman.throttle import RetryPolicy
from tests.conftest import require_peer

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.dcmtk,
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]

SECOND_HOST = "127.0.0.2"  # also in the certificates; 127.0.0.3 is not
NODE = "orthanc"  # the PACS node's name in pacsman's config: messages say pacs.orthanc
PACS_AE = "TLSPACS"
FAST = RetryPolicy(max_attempts=3, initial=0.01, cap=0.05, jitter=0)
#: How long a misconfigured TLS association may take to fail: "fast" (issue 10).
FAIL_FAST_SECONDS = 5.0


def _series(number: int, instances: int) -> SeriesSpec:
    return SeriesSpec(
        series_number=number,
        series_description=f"TLS{number}",
        n_instances=instances,
        rows=8,
        columns=8,
    )


STUDY = StudySpec(
    patient_id="TLS001",
    patient_name="Tls^Patient",
    study_date="20240301",
    accession_number="TLSACC1",
    study_description="dicom tls",
    series=(_series(1, 3), _series(2, 2)),
)
QUERY = "PatientID,Subject,Session\nTLS001,SUBJ01,SESS01\n"


# -- peers and PKI, shared by the module ------------------------------------------------------


def _require_peers() -> None:
    require_peer(orthanc_available(), "Orthanc (/usr/sbin/Orthanc)", "apt install orthanc")
    for tool in ("storescp", "storescu", "echoscu"):
        require_peer(dcmtk_tool(tool) is not None, f"DCMTK {tool}", "apt install dcmtk")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The CA, the trusted peer certificate, an expired and an untrusted one."""
    return make_pki(tmp_path_factory.mktemp("tls") / "pki", ip_addresses=[SECOND_HOST])


@pytest.fixture(scope="module")
def tls_orthanc(pki: Pki) -> Iterator[OrthancServer]:
    """Orthanc speaking DICOM TLS only, requiring a client certificate, holding :data:`STUDY`."""
    _require_peers()
    with OrthancServer(ae_title=PACS_AE, tls=pki.files(PEER)) as server:
        server.upload_datasets(iter_datasets(STUDY))
        yield server


@pytest.fixture
def tls_store_scp(pki: Pki) -> Iterator[Callable[..., StoreSCP]]:
    """Factory: DCMTK ``storescp +tls`` with the trusted peer certificate (or ``tls=``)."""
    _require_peers()
    started: list[StoreSCP] = []

    def start(directory: Path | None = None, **kwargs: Any) -> StoreSCP:
        kwargs.setdefault("tls", pki.files(PEER))
        scp = StoreSCP(directory, **kwargs).start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = structlog.get_config()  # main() configures logging for the process
    yield
    structlog.configure(**saved)


def _dicom_file(directory: Path) -> Path:
    """One instance of :data:`STUDY` as a Part 10 file."""
    path = directory / "one.dcm"
    dcmwrite(path, next(iter(iter_datasets(STUDY))), enforce_file_format=True)
    return path


# -- the PKI itself ---------------------------------------------------------------------------


def test_make_pki_writes_private_keys_and_the_certificates_each_case_needs(pki: Pki) -> None:
    """Folder 0700, keys 0600; peer valid for 127.0.0.1 and localhost, as server and client,
    signed by the CA; expired signed by the CA but out of date; untrusted from another CA."""
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    other = x509.load_pem_x509_certificate(pki.untrusted_ca.read_bytes())
    certs = {n: x509.load_pem_x509_certificate(pki.cert(n).read_bytes()) for n in _NAMES}
    now = time.time()
    assert 0o700 == stat.S_IMODE(pki.directory.stat().st_mode)
    assert {0o600} == {stat.S_IMODE(pki.key(n).stat().st_mode) for n in _NAMES}
    certs[PEER].verify_directly_issued_by(ca)
    certs[EXPIRED].verify_directly_issued_by(ca)
    certs[UNTRUSTED].verify_directly_issued_by(other)
    assert certs[PEER].not_valid_after_utc.timestamp() > now
    assert certs[EXPIRED].not_valid_after_utc.timestamp() < now
    san = certs[PEER].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert ["127.0.0.1", SECOND_HOST] == ips
    assert ["localhost"] == san.get_values_for_type(x509.DNSName)
    eku = certs[PEER].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} == set(eku)


_NAMES = (PEER, EXPIRED, UNTRUSTED)


# -- the peers talk to each other -------------------------------------------------------------


def test_dcmtk_echoscu_over_tls_reaches_orthanc_and_nothing_else_does(
    pki: Pki, tls_orthanc: OrthancServer
) -> None:
    """echoscu +tls with the trusted certificate: C-ECHO succeeds.  Plain TCP, an untrusted
    client certificate, and a CA that did not sign Orthanc's certificate all fail."""
    target = ("-aec", PACS_AE, "127.0.0.1", str(tls_orthanc.dicom_port))
    trusted = run_dcmtk("echoscu", *target, tls=pki.files(PEER))
    plain = run_dcmtk("echoscu", *target)
    untrusted = run_dcmtk("echoscu", *target, tls=pki.files(UNTRUSTED))
    wrong_ca = run_dcmtk("echoscu", *target, tls=pki.files(PEER, ca=pki.untrusted_ca))
    assert 0 == trusted.returncode, trusted.stderr
    assert [False, False, False] == [r.returncode == 0 for r in (plain, untrusted, wrong_ca)]
    assert "certificate verify failed" in wrong_ca.stderr


def test_dcmtk_storescu_over_tls_stores_into_storescp_over_tls(
    pki: Pki, tmp_path: Path, tls_store_scp: Callable[..., StoreSCP]
) -> None:
    """storescu +tls → storescp +tls stores the file; an untrusted client and a plain one are
    refused, and storescp goes on serving the trusted one."""
    scp = tls_store_scp()
    path = _dicom_file(tmp_path)
    target = ("-aec", scp.ae_title, "127.0.0.1", str(scp.port), str(path))
    untrusted = run_dcmtk("storescu", *target, tls=pki.files(UNTRUSTED))
    plain = run_dcmtk("storescu", *target)
    trusted = run_dcmtk("storescu", *target, tls=pki.files(PEER))
    assert 0 == trusted.returncode, trusted.stderr
    assert (False, False) == (untrusted.returncode == 0, plain.returncode == 0)
    assert 1 == len(scp.received())


def test_orthanc_stores_over_tls_to_a_modality_with_use_dicom_tls(
    tls_orthanc: OrthancServer, tls_store_scp: Callable[..., StoreSCP]
) -> None:
    """Orthanc's C-STORE SCU uses TLS towards a modality with ``UseDicomTls`` (the same path
    its C-MOVE takes to pacsman's Storage SCP)."""
    scp = tls_store_scp()
    tls_orthanc.add_modality("tlsscp", scp.ae_title, "127.0.0.1", scp.port, use_tls=True)
    series = list(tls_orthanc.rest("GET", "/series"))
    answer = tls_orthanc.rest("POST", "/modalities/tlsscp/store", {"Resources": series})
    assert 5 == answer["InstancesCount"]
    assert 5 == len(scp.received())


# -- pacsman over TLS, both ways --------------------------------------------------------------


def _tls_yaml(files: TlsFiles | None, indent: int, **extra: object) -> str:
    if files is None:
        return ""
    pad = " " * indent
    lines = [f"{pad}tls:", f"{pad}  ca: {files.ca}", f"{pad}  cert: {files.cert}"]
    lines += [f"{pad}  key: {files.key}"]
    lines += [f"{pad}  {k}: {str(v).lower()}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def _config(
    tmp_path: Path,
    orthanc: OrthancServer,
    *,
    node_tls: TlsFiles | None,
    local_tls: TlsFiles | None = None,
    local_port: int = 0,
    retrieve_method: str = "move",
    host: str = "127.0.0.1",
    **node_tls_extra: object,
) -> Path:
    """A pacsman config: node ``orthanc`` at ``host`` (with ``pacs.orthanc.tls`` and the
    extra ``tls`` keys given), ``local.tls`` with ``verify: true``."""
    port_line = f"  port: {local_port}\n" if local_port else ""
    text = (
        f"local:\n  ae_title: PACSMAN\n{port_line}"
        + _tls_yaml(local_tls, 2, verify=True)
        + f"pacs:\n  {NODE}:\n    host: {host}\n    port: {orthanc.dicom_port}\n"
        + f"    called_ae_title: {orthanc.ae_title}\n    retrieve_method: {retrieve_method}\n"
        + _tls_yaml(node_tls, 4, **node_tls_extra)
        + f"store_root: {tmp_path}/data\njobstore: {tmp_path}/jobs.sqlite\n"
    )
    path = tmp_path / "pacsman.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _events(err: str) -> list[dict[str, Any]]:
    """The JSON log events pacsman wrote to stderr."""
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def _info(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "data" / "q_info.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("retrieve_method", ["move", "get"])
def test_save_over_tls_both_ways_retrieves_every_instance(
    pki: Pki,
    tls_orthanc: OrthancServer,
    tmp_path: Path,
    retrieve_method: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """``pacsman --queryfile q.csv --save`` against Orthanc over DICOM TLS: C-FIND and the
    C-MOVE/C-GET with ``pacs.orthanc.tls``; for C-MOVE, Orthanc's C-STOREs reach the Storage
    SCP over TLS (``local.tls``, ``UseDicomTls``).  Every series COMPLETE with Orthanc's
    counts, every instance on disk."""
    port = free_port()
    tls_orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", port, use_tls=True)
    files = pki.files(PEER)
    config = _config(
        tmp_path,
        tls_orthanc,
        node_tls=files,
        local_tls=files,
        local_port=port,
        retrieve_method=retrieve_method,
    )
    queryfile = tmp_path / "q.csv"
    queryfile.write_text(QUERY, encoding="utf-8")
    argv = ["--queryfile", str(queryfile), "--info", "--save", "--config", str(config)]
    status = main(argv)
    out, err = capfd.readouterr()
    rows = _info(tmp_path)
    truth = tls_orthanc.series_instance_counts()
    on_disk = Counter(p.parent.name for p in (tmp_path / "data").rglob("*.dcm"))
    listening = [e for e in _events(err) if e["event"] == "storage_scp_listening"]
    assert 0 == status, out + err
    assert [True] * (retrieve_method == "move") == [e["tls"] for e in listening]
    assert {"COMPLETE"} == {r["state"] for r in rows}
    assert truth == {r["SeriesInstanceUID"]: int(r["received_instances"]) for r in rows}
    assert {"1-TLS1": 3, "2-TLS2": 2} == dict(on_disk)


def test_pacsman_echo_over_tls(
    pki: Pki, tls_orthanc: OrthancServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``pacsman echo`` with ``pacs.orthanc.tls``: C-ECHO over TLS succeeds."""
    config = _config(tmp_path, tls_orthanc, node_tls=pki.files(PEER))
    status = main(["echo", "--config", str(config)])
    out, err = capfd.readouterr()
    assert 0 == status, err
    assert "OK" in out


# -- DCMTK into pacsman's Storage SCP over TLS ------------------------------------------------


class _TlsScp:
    """pacsman's StorageSCP on 127.0.0.1 with ``local.tls``-style settings; keeps what it
    stores (unsolicited instances kept, so storescu's file lands in ``_unrouted``)."""

    def __init__(self, root: Path, tls: TlsConfig) -> None:
        self.stored: list[StoredInstance] = []
        writer = InstanceWriter(
            unrouted_directory=root / "_unrouted",
            on_stored=self.stored.append,
            unsolicited="keep",
        )
        self.server = StorageSCP(
            writer,
            ae_title="PACSMAN",
            bind_host="127.0.0.1",
            port=0,
            allowed_calling_ae_titles=["STORESCU"],
            ssl_context=server_context(tls),
        ).start()

    def store(self, path: Path, files: TlsFiles | None) -> int:
        """storescu (over TLS with ``files``) → this SCP; storescu's exit status."""
        target = ("-aet", "STORESCU", "-aec", "PACSMAN", "127.0.0.1", str(self.server.port))
        return run_dcmtk("storescu", *target, str(path), tls=files).returncode


@pytest.fixture
def tls_scp(pki: Pki, tmp_path: Path) -> Iterator[_TlsScp]:
    """pacsman's Storage SCP requiring DICOM TLS and a client certificate signed by the CA."""
    _require_peers()
    tls = TlsConfig(ca=pki.ca, cert=pki.cert(PEER), key=pki.key(PEER), verify=True)
    scp = _TlsScp(tmp_path / "scp", tls)
    yield scp
    scp.server.stop()


def test_dcmtk_storescu_over_tls_stores_into_pacsmans_scp(
    pki: Pki, tls_scp: _TlsScp, tmp_path: Path
) -> None:
    """storescu +tls stores; a plain storescu is refused and logged ("TLS handshake failed"),
    and the SCP stores from the TLS peer again afterwards."""
    path = _dicom_file(tmp_path)
    with capture_logs() as logs:
        first = tls_scp.store(path, pki.files(PEER))
        plain = tls_scp.store(path, None)
        again = tls_scp.store(path, pki.files(PEER))
    refused = [e for e in logs if e["event"] == "association_request_refused"]
    assert (0, 0) == (first, again)
    assert 0 != plain
    assert 2 == len(tls_scp.stored)
    assert 1 == len(refused), logs
    assert refused[0]["reason"].startswith("TLS handshake failed")


def test_clients_without_a_trusted_certificate_are_refused_by_pacsmans_scp(
    pki: Pki, tls_scp: _TlsScp, tmp_path: Path
) -> None:
    """A client certificate from another CA, an expired one, and anonymous TLS (no client
    certificate): each refused in the handshake and logged; the trusted peer then stores."""
    path = _dicom_file(tmp_path)
    port = str(tls_scp.server.port)
    anonymous_tls = ("+tla", "+cf", str(pki.ca), "-aet", "STORESCU", "-aec", "PACSMAN")
    with capture_logs() as logs:
        untrusted = tls_scp.store(path, pki.files(UNTRUSTED))
        expired = tls_scp.store(path, pki.files(EXPIRED))
        anonymous = run_dcmtk("storescu", *anonymous_tls, "127.0.0.1", port, str(path))
        trusted = tls_scp.store(path, pki.files(PEER))
    refused = [e["reason"] for e in logs if e["event"] == "association_request_refused"]
    assert [False] * 3 == [status == 0 for status in (untrusted, expired, anonymous.returncode)]
    assert 0 == trusted
    assert 1 == len(tls_scp.stored)
    assert 3 == len(refused), logs
    assert all(reason.startswith("TLS handshake failed") for reason in refused), refused


# -- misconfigurations fail fast, naming the node and the fix ---------------------------------


def _echo(config: Path, capfd: pytest.CaptureFixture[str]) -> tuple[int, str, float]:
    """``pacsman echo``: exit status, stderr, seconds taken."""
    capfd.readouterr()
    started = time.monotonic()
    status = main(["echo", "--config", str(config)])
    elapsed = time.monotonic() - started
    return status, capfd.readouterr().err, elapsed


def _one_line(err: str) -> str:
    """The ``pacsman: ...`` message (the JSON log lines around it dropped)."""
    lines = [line for line in err.splitlines() if line.startswith("pacsman: ")]
    assert lines, err
    return lines[-1]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong-ca", ("pacs.orthanc.tls.ca", "not accepted")),
        ("untrusted-client", ("pacs.orthanc.tls.cert", "refused pacsman's certificate")),
        ("plain-client", ("pacs.orthanc.tls", "uses DICOM TLS")),
        ("expired-client", ("pacs.orthanc.tls",)),  # the wording: see the test after next
    ],
)
def test_client_misconfiguration_against_tls_orthanc_fails_fast(
    pki: Pki,
    tls_orthanc: OrthancServer,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    case: str,
    expected: tuple[str, str],
) -> None:
    """A CA that did not sign Orthanc's certificate, a client certificate Orthanc does not
    trust, no TLS at all, or pacsman's own certificate expired: exit 3 within seconds; the
    message names pacs.orthanc and the setting to fix."""
    node_tls = {
        "wrong-ca": pki.files(PEER, ca=pki.untrusted_ca),
        "untrusted-client": pki.files(UNTRUSTED),
        "plain-client": None,
        "expired-client": pki.files(EXPIRED),
    }[case]
    config = _config(tmp_path, tls_orthanc, node_tls=node_tls)
    status, err, elapsed = _echo(config, capfd)
    message = _one_line(err)
    assert 3 == status, err
    assert elapsed < FAIL_FAST_SECONDS
    assert f"'{NODE}'" in message
    for words in expected:
        assert words in message


def test_an_expired_pacs_certificate_fails_fast(
    pki: Pki, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Orthanc presenting an expired certificate: exit 3 within seconds; the message names
    the node, says the certificate expired and that the PACS's administrator must renew it."""
    _require_peers()
    with OrthancServer(ae_title=PACS_AE, tls=pki.files(EXPIRED)) as expired:
        config = _config(tmp_path, expired, node_tls=pki.files(PEER))
        status, err, elapsed = _echo(config, capfd)
    message = _one_line(err)
    assert 3 == status, err
    assert elapsed < FAIL_FAST_SECONDS
    assert f"'{NODE}'" in message
    assert "expired" in message
    assert "renew" in message


def test_tls_client_against_a_plain_pacs_fails_fast(
    pki: Pki, demo_orthanc: OrthancServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``pacs.orthanc.tls`` set but the PACS (the session's plain Orthanc) takes plain DICOM:
    exit 3 within seconds; the message says to remove pacs.orthanc.tls."""
    config = _config(tmp_path, demo_orthanc, node_tls=pki.files(PEER))
    status, err, elapsed = _echo(config, capfd)
    message = _one_line(err)
    assert 3 == status, err
    assert elapsed < FAIL_FAST_SECONDS
    assert f"'{NODE}'" in message
    assert "remove pacs.orthanc.tls" in message


def test_save_against_a_tls_pacs_without_tls_fails_fast(
    tls_orthanc: OrthancServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The whole run, not just echo: ``--save`` with no ``pacs.orthanc.tls`` against a TLS
    Orthanc ends at once with exit 3 and the fix, having retrieved nothing."""
    config = _config(tmp_path, tls_orthanc, node_tls=None)
    queryfile = tmp_path / "q.csv"
    queryfile.write_text(QUERY, encoding="utf-8")
    started = time.monotonic()
    status = main(["--queryfile", str(queryfile), "--save", "--config", str(config)])
    elapsed = time.monotonic() - started
    message = _one_line(capfd.readouterr().err)
    assert 3 == status, message
    assert elapsed < FAIL_FAST_SECONDS
    assert "pacs.orthanc.tls" in message
    assert [] == list((tmp_path / "data").rglob("*.dcm"))


def test_the_pacs_certificate_must_name_the_host_unless_check_hostname_is_off(
    pki: Pki, tls_orthanc: OrthancServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Orthanc's certificate names 127.0.0.1 and 127.0.0.2: reached as 127.0.0.2 it is
    accepted; as 127.0.0.3, exit 3 naming pacs.orthanc.tls.check_hostname; with
    ``check_hostname: false`` the chain alone is checked and C-ECHO succeeds."""
    results = []
    for name, host, extra in (
        ("named", SECOND_HOST, {}),
        ("unnamed", "127.0.0.3", {}),
        ("unchecked", "127.0.0.3", {"check_hostname": False}),
    ):
        (tmp_path / name).mkdir()
        config = _config(tmp_path / name, tls_orthanc, node_tls=pki.files(PEER), host=host, **extra)
        results.append(_echo(config, capfd))
    (named, _, _), (unnamed, err, elapsed), (unchecked, _, _) = results
    message = _one_line(err)
    assert (0, 3, 0) == (named, unnamed, unchecked), err
    assert elapsed < FAIL_FAST_SECONDS
    assert "not valid for '127.0.0.3'" in message


def test_a_host_the_pacs_certificate_does_not_name_is_told_to_use_check_hostname(
    pki: Pki, tls_orthanc: OrthancServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """An IP address the certificate does not hold: the fix offered is a name the certificate
    holds or ``pacs.orthanc.tls.check_hostname: false``, not a different CA."""
    config = _config(tmp_path, tls_orthanc, node_tls=pki.files(PEER), host="127.0.0.3")
    status, err, _ = _echo(config, capfd)
    message = _one_line(err)
    assert 3 == status, err
    assert "pacs.orthanc.tls.check_hostname: false" in message
    assert "tls.ca" not in message


def test_pacsmans_own_expired_certificate_is_named_with_the_fix(
    pki: Pki, tls_orthanc: OrthancServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Orthanc refuses pacsman's client certificate because it expired: the message says it
    is pacsman's certificate (pacs.orthanc.tls.cert) that expired and must be renewed."""
    config = _config(tmp_path, tls_orthanc, node_tls=pki.files(EXPIRED))
    status, err, _ = _echo(config, capfd)
    message = _one_line(err)
    assert 3 == status, err
    assert "pacs.orthanc.tls.cert" in message
    assert "expired" in message
    assert "renew" in message


@pytest.mark.parametrize("where", ["node", "local"])
def test_a_key_file_readable_by_others_is_refused_with_the_chmod_fix(
    pki: Pki,
    tls_orthanc: OrthancServer,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    where: str,
) -> None:
    """A private key of mode 0644 (``pacs.<node>.tls.key`` or ``local.tls.key``) is a config
    error naming the file, its mode and ``chmod 600``, before anything is sent (exit 2);
    0400, as systemd's LoadCredential= makes it, is accepted."""
    key = tmp_path / "keys" / "pacsman.key"
    key.parent.mkdir(mode=0o700)
    shutil.copyfile(pki.key(PEER), key)
    key.chmod(0o644)
    files = TlsFiles(cert=pki.cert(PEER), key=key, ca=pki.ca)
    local_tls = files if where == "local" else None
    node_tls = files if where == "node" else pki.files(PEER)
    config = _config(tmp_path, tls_orthanc, node_tls=node_tls, local_tls=local_tls)
    status, err, _ = _echo(config, capfd)
    key.chmod(0o400)
    status_0400, err_0400, _ = _echo(config, capfd)
    assert 2 == status, err
    assert str(key) in err
    assert "0644" in err
    assert f"chmod 600 {key}" in err
    assert 0 == status_0400, err_0400


# -- the dicom push target over TLS -----------------------------------------------------------


def _upload(tmp_path: Path) -> SessionUpload:
    directory = tmp_path / "session"
    directory.mkdir()
    for ds in iter_datasets(STUDY):
        dcmwrite(directory / f"{ds.SOPInstanceUID}.dcm", ds, enforce_file_format=True)
    return SessionUpload.from_directory(directory, project="P1", subject="S1", session="E1")


def test_dicom_push_target_stores_over_tls_into_storescp(
    pki: Pki, tmp_path: Path, tls_store_scp: Callable[..., StoreSCP]
) -> None:
    """``push.dicom.tls`` (read from the config) → ``storescp +tls``: every file stored."""
    scp = tls_store_scp()
    files = pki.files(PEER)
    tls = {"ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)}
    dicom = {"host": "127.0.0.1", "port": scp.port, "called_ae_title": scp.ae_title, "tls": tls}
    config = parse_config(
        {
            "pacs": {"main": {"host": "127.0.0.1", "port": 104, "called_ae_title": "PACS"}},
            "push": {"dicom": dicom},
        },
        source="test.yaml",
    )
    target_config = config.push.dicom
    assert isinstance(target_config, DicomTarget)
    assert TlsConfig(ca=files.ca, cert=files.cert, key=files.key) == target_config.tls
    upload = _upload(tmp_path)
    with DicomStoreTarget(target_config, calling_ae_title="PACSMAN") as target:
        outcomes = push_all([upload], target, retry=FAST)
    assert [("DONE", 5)] == [(o.state, o.files_on_target) for o in outcomes]
    assert 5 == len(scp.received())


def test_dicom_push_target_without_tls_against_storescp_tls_is_fatal_at_once(
    tmp_path: Path, tls_store_scp: Callable[..., StoreSCP]
) -> None:
    """No ``push.dicom.tls`` towards ``storescp +tls``: a FatalError naming push.dicom and
    the setting, at the first attempt (not retried as if the SCP were busy)."""
    scp = tls_store_scp()
    target_config = DicomTarget("127.0.0.1", scp.port, scp.ae_title)
    upload = _upload(tmp_path)
    started = time.monotonic()
    with (
        DicomStoreTarget(target_config, calling_ae_title="PACSMAN") as target,
        pytest.raises(FatalError, match=r"'push\.dicom'.*set push\.dicom\.tls"),
    ):
        push_all([upload], target, retry=FAST)
    assert time.monotonic() - started < FAIL_FAST_SECONDS
    assert [] == scp.received()
