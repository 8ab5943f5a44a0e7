"""
A throw-away certificate authority for the sandbox, made on the fly with C{cryptography}.

Everything the sandbox serves (the identity platform, Graph, the SMTP server after
STARTTLS) uses a certificate issued here, so clients verify real TLS against
L{CertificateAuthority.ca_file} instead of switching verification off.  Tests also issue
certificates for the relay's own listener, and certificates with a wrong name to check
that clients refuse them.

This module must never be used to secure anything real: keys are written unencrypted
(mode 0600) next to the certificates and live only as long as the sandbox directory.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Iterable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl
from twisted.python.filepath import FilePath

from xrelay.keyfiles import CERTIFICATE_MODE, KEY_MODE, write_new_file

#: The names every sandbox server certificate covers: clients may connect by either.
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


def _write_private(path: FilePath, data: bytes) -> None:
    """Write a key so that it is never readable by others, not even for an instant."""
    write_new_file(path.path, data, KEY_MODE)


def _write_public(path: FilePath, data: bytes) -> None:
    write_new_file(path.path, data, CERTIFICATE_MODE)


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _subject_alternative_names(names: Iterable[str]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(general)


@attrs.frozen
class IssuedCertificate:
    """
    A certificate and its key, as PEM files and as Twisted TLS options.

    @ivar cert_file: path of the certificate PEM (leaf only; the CA is separate).
    @ivar key_file: path of the private key PEM, mode 0600.
    @ivar chain_file: path of leaf + CA certificate, for servers that send the chain.
    """

    names: tuple[str, ...]
    cert_file: str
    key_file: str
    chain_file: str
    cert_pem: bytes = attrs.field(repr=False)
    key_pem: bytes = attrs.field(repr=False)

    def private_certificate(self) -> ssl.PrivateCertificate:
        return ssl.PrivateCertificate.loadPEM(self.cert_pem + self.key_pem)

    def server_options(self) -> ssl.CertificateOptions:
        """TLS options for a server presenting this certificate (listenSSL, startTLS)."""
        return self.private_certificate().options()


@attrs.define
class CertificateAuthority:
    """
    A CA certificate and key written under C{directory}; issues leaf certificates.

    Build it with L{CertificateAuthority.create}.
    """

    directory: FilePath
    ca_file: str
    _cert: x509.Certificate = attrs.field(repr=False)
    _key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)

    @classmethod
    def create(cls, directory: FilePath, common_name: str = "xrelay sandbox CA") -> "CertificateAuthority":
        """
        Make a new CA under C{directory} (created if needed).  A new one each time,
        so that a sandbox never trusts certificates left over from an earlier run.
        """
        if not directory.exists():
            directory.makedirs()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca_path = directory.child("ca.pem")
        _write_public(ca_path, cert.public_bytes(serialization.Encoding.PEM))
        _write_private(directory.child("ca.key"), _key_pem(key))
        return cls(directory, ca_path.path, cert, key)

    @property
    def ca_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def trust_root(self) -> ssl.Certificate:
        """For Twisted clients: C{optionsForClientTLS(name, trustRoot=ca.trust_root())}."""
        return ssl.Certificate.loadPEM(self.ca_pem)

    def issue(
        self,
        names: Iterable[str] = SERVER_NAMES,
        basename: str | None = None,
        days: int = 825,
        not_before: datetime.datetime | None = None,
        key_type: str = "rsa",
    ) -> IssuedCertificate:
        """
        Issue a server (and client) certificate for C{names} (DNS names or IP
        addresses), written as C{<basename>.pem}, C{<basename>.key} (0600) and
        C{<basename>-chain.pem}.  Give a name that is not the one a client dials to
        make the certificate a client must refuse; give C{not_before}/C{days} in the
        past to make an expired one.  C{key_type} is C{"rsa"} (2048 bits; what Entra ID
        requires of an app's client-assertion certificate and what msal signs with) or
        C{"ec"} (P-256; quicker, fine for TLS).
        """
        names = tuple(names)
        if not names:
            raise ValueError("a certificate needs at least one name")
        basename = basename or names[0].replace(":", "_")
        key: PrivateKey
        if key_type == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif key_type == "ec":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"key_type must be 'rsa' or 'ec', not {key_type!r}")
        start = not_before or (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(_subject_alternative_names(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = _key_pem(key)
        cert_path = self.directory.child(basename + ".pem")
        chain_path = self.directory.child(basename + "-chain.pem")
        key_path = self.directory.child(basename + ".key")
        _write_public(cert_path, cert_pem)
        _write_public(chain_path, cert_pem + self.ca_pem)
        _write_private(key_path, key_pem)
        return IssuedCertificate(names, cert_path.path, key_path.path, chain_path.path, cert_pem, key_pem)
