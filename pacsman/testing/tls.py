"""A throw-away PKI for DICOM TLS tests: one CA, peer certificates it signs, and the bad ones.

:func:`make_pki` writes PEM files into a directory (0700; key files 0600):

- ``ca.crt`` (and ``ca.key``): the CA every peer trusts;
- ``<peer>.crt`` / ``<peer>.key`` for each name in ``peers``: signed by the CA, valid now, for
  ``DNS:localhost`` and ``IP:127.0.0.1`` (plus ``ip_addresses``), usable as a TLS server and a
  TLS client certificate (extended key usage serverAuth and clientAuth);
- ``expired.crt`` / ``expired.key``: signed by the CA, same names, ``not_valid_after`` a day ago;
- ``untrusted.crt`` / ``untrusted.key``: valid, but signed by a second CA
  (``untrusted-ca.crt``) that no peer trusts.

RSA 2048 with SHA-256, which DCMTK's default (non-downgrading BCP 195) profile accepts.

Usage::

    pki = make_pki(tmp_path / "pki")
    StoreSCP(tls=TlsFiles(cert=pki.cert("peer"), key=pki.key("peer"), ca=pki.ca))
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["EXPIRED", "PEER", "UNTRUSTED", "Pki", "TlsFiles", "make_pki"]

PEER = "peer"
EXPIRED = "expired"
UNTRUSTED = "untrusted"

_KEY_BITS = 2048
_VALID = dt.timedelta(days=30)
_SKEW = dt.timedelta(hours=1)  # not_valid_before an hour ago: clocks need not agree exactly


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files one TLS peer uses: its certificate and key, and the CA it trusts."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Pki:
    """The files :func:`make_pki` wrote into ``directory``."""

    directory: Path

    @property
    def ca(self) -> Path:
        """The CA certificate every peer trusts."""
        return self.directory / "ca.crt"

    @property
    def untrusted_ca(self) -> Path:
        """The second CA, which signed ``untrusted`` and which no peer trusts."""
        return self.directory / "untrusted-ca.crt"

    def cert(self, name: str) -> Path:
        """The certificate ``name`` (``peer``, ``expired``, ``untrusted``, ...)."""
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        """The private key of certificate ``name`` (0600)."""
        return self.directory / f"{name}.key"

    def files(self, name: str, *, ca: Path | None = None) -> TlsFiles:
        """Certificate and key ``name`` with the trusted CA (``ca`` overrides it)."""
        return TlsFiles(cert=self.cert(name), key=self.key(name), ca=ca or self.ca)


@dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: rsa.RSAPrivateKey


def make_pki(
    directory: Path,
    *,
    peers: Sequence[str] = (PEER,),
    ip_addresses: Sequence[str] = (),
) -> Pki:
    """Write a CA, a certificate per peer name, an expired and an untrusted one (see module).

    ``ip_addresses`` are added to ``127.0.0.1`` in every leaf certificate's SubjectAltName
    (e.g. ``"127.0.0.2"`` for a second host on loopback).

    Raises:
        OSError: if ``directory`` cannot be created or written.
    """
    pki = Pki(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    now = dt.datetime.now(dt.UTC)
    ips = ("127.0.0.1", *ip_addresses)
    ca = _write_ca(pki, "ca", "pacsman test CA", now)
    other_ca = _write_ca(pki, "untrusted-ca", "pacsman untrusted test CA", now)
    for name in peers:
        _write_leaf(pki, name, ca, ips, now - _SKEW, now + _VALID)
    _write_leaf(pki, EXPIRED, ca, ips, now - 2 * _VALID, now - dt.timedelta(days=1))
    _write_leaf(pki, UNTRUSTED, other_ca, ips, now - _SKEW, now + _VALID)
    return pki


def _write_ca(pki: Pki, name: str, common_name: str, now: dt.datetime) -> _Issuer:
    key = _new_key()
    subject = _name(common_name)
    builder = (
        _builder(subject, subject, key, now - _SKEW, now + _VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
    )
    _write(pki, name, builder.sign(key, hashes.SHA256()), key)
    return _Issuer(subject, key)


def _write_leaf(
    pki: Pki,
    name: str,
    issuer: _Issuer,
    ip_addresses: Sequence[str],
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> None:
    key = _new_key()
    san = [
        x509.DNSName("localhost"),
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses),
    ]
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        _builder(_name(name), issuer.name, key, not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    _write(pki, name, builder.sign(issuer.key, hashes.SHA256()), key)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: rsa.RSAPrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)


def _write(pki: Pki, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_file(pki.key(name), key_pem, 0o600)
    _write_file(pki.cert(name), cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` created with ``mode`` whatever the umask (replacing it)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fd, mode)
        fh.write(data)
