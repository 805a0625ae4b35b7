"""The other push targets (Orthanc as a C-STORE receiver, a folder), credentials, the push
config keys, the anonymization rule, and HTTPS verification towards XNAT.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import contextlib
import datetime
import io
import socket
import ssl
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from structlog.testing import capture_logs

from pacsman.config import Config, parse_config
from pacsman.config.push import DicomTarget, XnatConfig
from pacsman.errors import ConfigError, FatalError, InputError
from pacsman.push import (
    Credentials,
    SessionUpload,
    check_anonymization,
    open_target,
    push_all,
    resolve_credentials,
    retry_policy,
)
from pacsman.push.dicomstore import DicomStoreTarget
from pacsman.push.folder import FolderTarget
from pacsman.push.labels import ExistingSession, archive_problems
from pacsman.push.models import dicom_files
from pacsman.push.xnat import XnatTarget
from pacsman.push.zipper import session_zip
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.test_push_xnat import FAST, assert_complete, study_dir

URL = "https://xnat.example.org"


@pytest.fixture
def upload(tmp_path: Path) -> SessionUpload:
    """A 3+2 instance study on disk, for project P1."""
    directory = study_dir(tmp_path / "studies", "one")
    return SessionUpload.from_directory(directory, project="P1", subject="SUBJ01", session="SESS01")


def config_with(**sections: Any) -> Config:
    """A validated config with one PACS node plus ``sections``."""
    data: dict[str, Any] = {
        "pacs": {"main": {"host": "127.0.0.1", "port": 104, "called_ae_title": "PACS"}}
    }
    data.update(sections)
    return parse_config(data, source="test.yaml")


# -- DICOM target: Orthanc receives -------------------------------------------------------


def test_orthanc_receives_every_file_by_c_store(
    orthanc: OrthancServer, upload: SessionUpload
) -> None:
    """The dicom target C-STOREs the files unchanged; Orthanc's REST API counts them."""
    target = DicomStoreTarget(
        DicomTarget("127.0.0.1", orthanc.dicom_port, orthanc.ae_title), calling_ae_title="PACSMAN"
    )
    with target:
        outcomes = push_all([upload], target, retry=FAST)
    assert [("DONE", 5)] == [(o.state, o.files_on_target) for o in outcomes]
    expected: dict[str, int] = {}
    for path in dicom_files(upload.directory):
        uid = pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID
        expected[uid] = expected.get(uid, 0) + 1
    assert expected == orthanc.series_instance_counts()
    assert {upload.study_instance_uid} == orthanc.study_uids()


def test_an_scp_that_is_not_there_fails_the_item_after_the_attempts(upload: SessionUpload) -> None:
    """Connection refused is transient: retried, then FAILED with the reason."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = DicomStoreTarget(DicomTarget("127.0.0.1", port, "NOBODY"), calling_ae_title="PACSMAN")
    outcomes = push_all(
        [upload], target, retry=FAST.__class__(max_attempts=3, initial=0.01, cap=0.01, jitter=0)
    )
    assert ("FAILED", 3) == (outcomes[0].state, outcomes[0].attempts)
    assert "gave up after 3 attempt(s)" in outcomes[0].detail


# -- folder target --------------------------------------------------------------------------


def test_folder_copy_is_atomic_idempotent_and_never_overwritten(
    tmp_path: Path, upload: SessionUpload
) -> None:
    """The copy lands at root/project/subject/session; a second push sees it and copies
    nothing; a leftover partial copy is replaced; a different copy there is refused."""
    root = tmp_path / "out"
    leftover = root / "P1" / "SUBJ01" / ".SESS01.partial"
    leftover.mkdir(parents=True)
    (leftover / "junk.dcm").write_bytes(b"x")
    target = FolderTarget(root)
    first = push_all([upload], target, retry=FAST)
    final = root / "P1" / "SUBJ01" / "SESS01"
    assert ("DONE", 5, final.as_uri()) == (first[0].state, first[0].files_on_target, first[0].uri)
    assert not leftover.exists()
    assert "already copied" in push_all([upload], target, retry=FAST)[0].detail
    next(final.rglob("*.dcm")).unlink()
    refused = push_all([upload], target, retry=FAST)
    assert "already holds a different copy (4 file(s))" in refused[0].detail


# -- credentials ----------------------------------------------------------------------------


def test_credentials_from_the_environment_win(tmp_path: Path) -> None:
    """XNAT_USER/XNAT_PASS come first; the password never shows in repr or str."""
    found = resolve_credentials(URL, environ={"XNAT_USER": "u", "XNAT_PASS": "s3cret"})
    assert ("u", "s3cret") == (found.user, found.password)
    assert "s3cret" not in repr(found) + str(found)
    with pytest.raises(InputError, match="XNAT_PASS is not set"):
        resolve_credentials(URL, environ={"XNAT_USER": "u"})


def test_credentials_from_netrc_for_the_urls_host(tmp_path: Path) -> None:
    """~/.netrc (here $NETRC) gives the login for the URL's host; a netrc readable by
    others is refused; no entry for the host is an error naming the fixes."""
    netrc = tmp_path / "netrc"
    netrc.write_text(
        "machine other.org login x password y\nmachine xnat.example.org login n password p\n"
    )
    netrc.chmod(0o600)
    found = resolve_credentials(URL, environ={"NETRC": str(netrc)})
    assert ("n", "p") == (found.user, found.password)
    netrc.chmod(0o644)
    with pytest.raises(InputError, match=r"readable by others; run 'chmod 600"):
        resolve_credentials(URL, environ={"NETRC": str(netrc)})
    with pytest.raises(InputError, match=r"no XNAT credentials found for xnat\.example\.org"):
        resolve_credentials(URL, environ={"NETRC": str(tmp_path / "none")})


@pytest.mark.parametrize(
    ("text", "user"), [("alias-1:se:cret\n", "alias-1"), ("alias-2\nse:cret\n", "alias-2")]
)
def test_credentials_file_needs_mode_600(tmp_path: Path, text: str, user: str) -> None:
    """xnat.credentials_file: 'user:password' or two lines; refused unless mode 600."""
    path = tmp_path / "xnat.cred"
    path.write_text(text)
    path.chmod(0o600)
    found = resolve_credentials(URL, credentials_file=path, environ={})
    assert (user, "se:cret") == (found.user, found.password)
    path.chmod(0o640)
    with pytest.raises(InputError, match="readable by others") as caught:
        resolve_credentials(URL, credentials_file=path, environ={})
    assert "se:cret" not in str(caught.value)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# -- config, anonymization rule, open_target ------------------------------------------------


def test_push_and_xnat_config_keys() -> None:
    """The new keys parse with their defaults; bad values name the key and the fix."""
    config = config_with(
        xnat={
            "url": URL,
            "overwrite": "append",
            "destination": "/prearchive",
            "import_timeout": 60,
        },
        push={
            "max_concurrent": 2,
            "interval": 60,
            "dicom": {"host": "127.0.0.1", "port": 4242, "called_ae_title": "R"},
        },
    )
    assert ("append", "/prearchive", 60.0) == (
        config.xnat.overwrite,
        config.xnat.destination,
        config.xnat.import_timeout,
    )
    assert (2, 60.0, 50) == (
        config.push.max_concurrent,
        config.push.interval,
        config.push.max_attempts,
    )
    assert DicomTarget("127.0.0.1", 4242, "R") == config.push.dicom
    assert 60.0 == retry_policy(config.push).cap
    with pytest.raises(ConfigError) as caught:
        config_with(
            xnat={"overwrite": "always"}, push={"max_concurrent": 0, "dicom": {"host": "h"}}
        )
    message = str(caught.value)
    assert "xnat.overwrite: 'always' is not one of 'none', 'append', 'delete'" in message
    assert "push.max_concurrent: 0 is out of range; use a whole number 1-8" in message
    assert "push.dicom.port: required; e.g. port: 4242" in message


def test_identified_data_never_reaches_xnat_unless_allowed() -> None:
    """anonymization.enabled false: XNAT refused; allow_identified: warns on every call;
    the folder and dicom targets are not concerned."""
    off = {"enabled": False}
    with pytest.raises(InputError, match=r"set xnat\.allow_identified: true"):
        check_anonymization(config_with(anonymization=off))
    check_anonymization(config_with(anonymization=off), kind="folder")
    allowed = config_with(anonymization=off, xnat={"url": URL, "allow_identified": True})
    with capture_logs() as logs:
        check_anonymization(allowed)
        check_anonymization(allowed)
    assert ["push_identified_data"] * 2 == [e["event"] for e in logs]


def test_open_target_names_what_is_missing(tmp_path: Path) -> None:
    """open_target: unset url, dicom or folder are InputErrors; XNAT credentials resolved."""
    bare = config_with()
    for kind, fix in (
        ("xnat", "xnat.url is not set"),
        ("dicom", "push.dicom is not set"),
        ("folder", "push.folder is not set"),
    ):
        with pytest.raises(InputError, match=fix):
            open_target(bare, kind=kind)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no XNAT credentials"):
        open_target(
            config_with(xnat={"url": URL}), kind="xnat", environ={"NETRC": str(tmp_path / "x")}
        )
    env = {"XNAT_USER": "u", "XNAT_PASS": "p"}
    with open_target(config_with(xnat={"url": URL}), kind="xnat", environ=env) as target:
        assert isinstance(target, XnatTarget)
    assert isinstance(
        open_target(config_with(push={"folder": str(tmp_path)}), kind="folder"), FolderTarget
    )


def test_archive_label_rules(upload: SessionUpload) -> None:
    """A resumed session (same subject and study) is fine; another study needs replace."""
    same = {"SESS01": ExistingSession("SUBJ01", upload.study_instance_uid)}
    assert [] == archive_problems([upload], same, ["SUBJ01"], replace=False)
    other = {"SESS01": ExistingSession("SUBJ01", "1.2.3")}
    assert 1 == len(archive_problems([upload], other, [], replace=False))
    assert [] == archive_problems([upload], other, [], replace=True)


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"]
)
def test_session_headers_are_pydicoms_in_every_encoding(tmp_path: Path, name: str) -> None:
    """The study and scan of a session are pydicom's, whether read raw or by pydicom."""
    source = Path(get_testdata_file(name) or "")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "a.dcm").write_bytes(source.read_bytes())
    upload = SessionUpload.from_directory(tmp_path, project="P1", subject="S", session="E")
    ds = pydicom.dcmread(source)
    assert str(ds.StudyInstanceUID) == upload.study_instance_uid
    assert {str(ds.get("SeriesNumber") or "0"): 1} == dict(upload.expected_scans)


def test_session_zip_holds_only_dicom_and_leaves_nothing(
    upload: SessionUpload, tmp_path: Path
) -> None:
    """The zip has one entry per *.dcm (paths below the session folder), stored, in a
    temporary file on disk (never in memory) that is gone afterwards."""
    (upload.directory / "notes.txt").write_text("not DICOM")
    work = tmp_path / "work"
    work.mkdir()
    files = dicom_files(upload.directory)
    with session_zip(upload.directory, files, work_dir=work) as stream:
        archive = zipfile.ZipFile(stream)
        names = archive.namelist()
        assert {zipfile.ZIP_STORED} == {i.compress_type for i in archive.infolist()}
        assert files[0].read_bytes() == archive.read(names[0])
        assert not isinstance(stream, io.BytesIO)
    assert 5 == len(names)
    assert all(n.endswith(".dcm") and not n.startswith("/") for n in names)
    assert [] == list(work.iterdir())


# -- HTTPS ----------------------------------------------------------------------------------


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA): (cert.pem, key.pem)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacsman test CA")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for end in (source, sink):
        with contextlib.suppress(OSError):
            end.close()


@contextlib.contextmanager
def tls_proxy(backend_port: int, cert: Path, key: Path) -> Iterator[int]:
    """Terminate TLS on an OS-chosen port and forward to 127.0.0.1:``backend_port``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(client: socket.socket) -> None:
        try:
            secure = context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()
            return
        backend = socket.create_connection(("127.0.0.1", backend_port))
        threading.Thread(target=_pump, args=(backend, secure), daemon=True).start()
        _pump(secure, backend)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                threading.Thread(target=serve, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_https_is_verified_and_a_ca_bundle_can_be_trusted(
    tmp_path: Path, upload: SessionUpload
) -> None:
    """An XNAT behind HTTPS with a private CA: refused by default (FatalError naming
    xnat.ca_bundle); trusted with ca_bundle, and the push goes through over TLS."""
    cert, key = _certificate(tmp_path)
    with (
        XnatEmulator(tmp_path / "xnat", projects=["P1"]) as emulator,
        tls_proxy(emulator.port, cert, key) as port,
    ):
        url = f"https://127.0.0.1:{port}"
        credentials = Credentials("admin", "secret", "test")
        with (
            XnatTarget(XnatConfig(url=url), credentials) as untrusted,
            pytest.raises(FatalError, match=r"set xnat\.ca_bundle"),
        ):
            push_all([upload], untrusted, retry=FAST)
        with XnatTarget(XnatConfig(url=url, ca_bundle=cert), credentials) as trusted:
            outcomes = push_all([upload], trusted, retry=FAST)
        assert ["DONE"] == [o.state for o in outcomes]
        assert_complete(emulator, upload)
