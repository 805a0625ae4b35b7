"""DICOM TLS (PS3.15 Annex B, BCP 195): SSL contexts, and why a handshake failed.

Contexts follow the BCP 195 profile that DCMTK and Orthanc use by default: TLS 1.2 or
newer, the ``ssl`` module's default ciphers.  A client context checks the PACS's certificate
chain against ``tls.ca`` (the system trust store when absent) and, with ``check_hostname``,
that it names the node's ``host``.  A server context (the Storage SCP) presents
``tls.cert`` and, with ``verify``, requires every peer's certificate to be signed by
``tls.ca``.

Contexts are cached by their settings and the files' modification times, so a certificate
renewed on disk is picked up by the next association without a restart.

:func:`handshake_problem` explains an association that could not be opened: it connects
once more and performs the TLS handshake alone, so the message can say "the PACS's
certificate has expired" instead of "the association was aborted".
"""

from __future__ import annotations

import socket
import ssl
from functools import lru_cache

from pacsman.config import TlsConfig
from pacsman.config.tls import file_problem, key_file_problem
from pacsman.errors import ConfigError, Problem

__all__ = ["client_context", "handshake_problem", "server_context", "tls_args"]

#: How long the diagnosis waits for a peer's alert after its handshake (TLS 1.3 servers
#: refuse a client certificate only after the client has finished its side).
_ALERT_WAIT = 0.5
#: X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_MISMATCH, _IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = frozenset({62, 63, 64})


def client_context(tls: TlsConfig, where: str) -> ssl.SSLContext:
    """The context for associations towards a peer configured at ``where`` (a key path).

    Raises:
        ConfigError: a file is missing, has the wrong mode or does not hold what it should.
    """
    return _cached(tls, _stamps(tls), where, server=False)


def server_context(tls: TlsConfig, where: str = "local.tls") -> ssl.SSLContext:
    """The Storage SCP's context.

    Raises:
        ConfigError: as :func:`client_context`.
    """
    return _cached(tls, _stamps(tls), where, server=True)


def tls_args(tls: TlsConfig | None, host: str, where: str) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``AE.associate(tls_args=...)`` for a peer at ``host``; None = plain TCP."""
    if tls is None:
        return None
    return client_context(tls, where), host


def _stamps(tls: TlsConfig) -> tuple[int, ...]:
    stamps: list[int] = []
    for path in (tls.ca, tls.cert, tls.key):
        try:
            stamps.append(path.stat().st_mtime_ns if path is not None else 0)
        except OSError:
            stamps.append(-1)
    return tuple(stamps)


@lru_cache(maxsize=32)
def _cached(tls: TlsConfig, stamps: tuple[int, ...], where: str, *, server: bool) -> ssl.SSLContext:
    del stamps  # part of the cache key only
    _check_files(tls, where)
    purpose = ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        _load(context, tls, server=server)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise _unusable(tls, where, exc) from None
    return context


def _load(context: ssl.SSLContext, tls: TlsConfig, *, server: bool) -> None:
    if tls.cert is not None and tls.key is not None:
        context.load_cert_chain(tls.cert, tls.key)
    if server:
        context.verify_mode = ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE
    else:
        context.check_hostname = tls.verify and tls.check_hostname
        context.verify_mode = ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE
    if tls.ca is not None:
        context.load_verify_locations(cafile=tls.ca)
    elif not server and tls.verify:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)


def _check_files(tls: TlsConfig, where: str) -> None:
    """The same rules as at config load: the files may have changed since."""
    problems = [
        Problem(source=f"{where}.{key}", message=message)
        for key, message in (
            ("ca", file_problem(tls.ca) if tls.ca else None),
            ("cert", file_problem(tls.cert) if tls.cert else None),
            ("key", key_file_problem(tls.key) if tls.key else None),
        )
        if message is not None
    ]
    if problems:
        raise ConfigError(problems)


def _unusable(tls: TlsConfig, where: str, exc: BaseException) -> ConfigError:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    if reason == "KEY_VALUES_MISMATCH":
        fix = f"{where}.key does not belong to {where}.cert; give the key of that certificate"
    elif tls.ca is not None and "ca" in str(exc).lower():
        fix = f"{where}.ca must hold PEM CA certificates"
    else:
        fix = f"{where}.cert and .key must be PEM files (an encrypted key is not supported)"
    files = ", ".join(str(p) for p in (tls.cert, tls.key, tls.ca) if p is not None)
    return ConfigError([Problem(source=where, message=f"TLS files {files}: {reason}; {fix}")])


def handshake_problem(
    tls: TlsConfig | None, host: str, port: int, *, timeout: float, where: str
) -> str | None:
    """Why DICOM TLS towards ``host:port`` fails, or None if it is not a TLS matter.

    With ``tls`` None (plain TCP configured), says so when the peer turns out to speak TLS.
    A refused or unreachable connection is not a TLS matter: None.
    """
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    with raw:
        if tls is None:
            return _speaks_tls(raw, host, where)
        return _handshake(client_context(tls, where), raw, host, where)


def _handshake(context: ssl.SSLContext, raw: socket.socket, host: str, where: str) -> str | None:
    try:
        with context.wrap_socket(raw, server_hostname=host) as tls_socket:
            return _alert_after_handshake(tls_socket, where)
    except ssl.SSLCertVerificationError as exc:
        return _verify_failure(exc, where)
    except ssl.SSLError as exc:
        return _protocol_failure(exc, where)
    except TimeoutError:
        return (
            "no TLS answer within the connect timeout: the peer may not use TLS on this "
            f"port; remove {where} if it takes plain DICOM, or ask for its TLS port"
        )
    except OSError:
        return (
            "the peer closed the connection during the TLS handshake: it may not use TLS "
            f"on this port; remove {where} if it takes plain DICOM, or ask for its TLS port"
        )


def _alert_after_handshake(tls_socket: ssl.SSLSocket, where: str) -> str | None:
    tls_socket.settimeout(_ALERT_WAIT)
    try:
        tls_socket.recv(1)
    except ssl.SSLError as exc:
        return _protocol_failure(exc, where)
    except OSError:
        return None  # a timeout: the peer waits for an association request, as it should
    return None


def _verify_failure(exc: ssl.SSLCertVerificationError, where: str) -> str:
    reason = exc.verify_message or exc.reason or str(exc)
    if exc.verify_code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        fix = "its administrator must renew it (check this host's clock too)"
    elif exc.verify_code == 9:  # X509_V_ERR_CERT_NOT_YET_VALID
        fix = "check this host's clock and the PACS's"
    elif exc.verify_code in _NAME_MISMATCH:
        fix = (
            "connect by a name the certificate holds, or set "
            f"{where}.check_hostname: false if the certificate cannot name it"
        )
    else:
        fix = f"set {where}.ca to the CA certificate that signed the PACS's certificate"
    return f"the PACS's certificate was not accepted: {reason}; {fix}"


def _protocol_failure(exc: ssl.SSLError, where: str) -> str:
    reason = str(exc.reason or exc)
    if "CERTIFICATE_EXPIRED" in reason:
        return (
            f"the peer refused pacsman's certificate: it has expired ({reason}); renew the "
            f"certificate in {where}.cert (check this host's clock too)"
        )
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE_REQUIRED" in reason:
        return (
            f"the peer refused pacsman's certificate ({reason}); set {where}.cert and "
            f"{where}.key to a certificate the peer trusts, or have it trust pacsman's CA"
        )
    if "WRONG_VERSION_NUMBER" in reason or "EOF" in reason or "RECORD" in reason:
        return (
            f"the peer does not answer with TLS ({reason}): it may take plain DICOM on this "
            f"port; remove {where}, or ask for its TLS port"
        )
    return f"the TLS handshake failed ({reason}); check {where} against the peer's TLS settings"


def _speaks_tls(raw: socket.socket, host: str, where: str) -> str | None:
    """A plain-TCP node that answers a TLS ClientHello with a ServerHello uses TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a probe only: no data is ever sent over it
    try:
        with context.wrap_socket(raw, server_hostname=host):
            pass
    except ssl.SSLError as exc:
        if "ALERT" not in str(exc.reason or ""):
            return None  # no ServerHello: not a TLS peer
    except OSError:
        return None
    return (
        f"the peer uses DICOM TLS on this port; set {where}: {{ca: <the CA that signed its "
        "certificate>} (and cert/key if it requires a client certificate)"
    )
