"""
The app's credential, made on this host: a self-signed certificate whose private key is
written once, mode 0600 from its first byte (L{xrelay.durable.write_durably}), and never
leaves the machine (only the public certificate goes to Entra ID); or, on request, a
client secret kept the same way.  Also the proof-of-possession JWT that Graph's
C{addKey}/C{removeKey} want, signed with the current key.

Never logs or returns a private key or a secret in a message.
"""

from __future__ import annotations

import base64
import datetime
import os
import time
import uuid

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from xrelay.durable import fsync_directory, write_durably

__all__ = ["Certificate", "make_certificate", "proof_of_possession", "write_secret"]

#: How long a made certificate is valid; `xrelay setup rotate` replaces it before then
#: (the expiry warnings point there).
VALIDITY_DAYS = 730
#: Graph's audience for the proof JWT of addKey/removeKey
#: (https://learn.microsoft.com/en-us/graph/application-rollkey-prooftoken).
PROOF_AUDIENCE = "00000002-0000-0000-c000-000000000000"


@attrs.frozen
class Certificate:
    """A certificate on disk: its files and its public DER (what Entra gets)."""

    certificate_file: str
    key_file: str
    der: bytes = attrs.field(repr=False)
    not_after: datetime.datetime

    @property
    def thumbprint(self) -> bytes:
        return x509.load_der_x509_certificate(self.der).fingerprint(hashes.SHA1())  # noqa: S303


def make_certificate(folder: str, name: str, hostname: str) -> Certificate:
    """A new key and self-signed certificate under C{folder} (0700), key mode 0600."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            f"xrelay {name} on {hostname}"[:64])])
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
                   .sign(key, hashes.SHA256()))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    key_file = os.path.join(folder, f"{name}-{stamp}.key")
    certificate_file = os.path.join(folder, f"{name}-{stamp}.pem")
    write_durably(key_file, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), exclusive=True)
    write_durably(certificate_file, certificate.public_bytes(serialization.Encoding.PEM),
                  exclusive=True)
    fsync_directory(folder)
    return Certificate(certificate_file, key_file,
                       certificate.public_bytes(serialization.Encoding.DER),
                       certificate.not_valid_after_utc)


def load_certificate(certificate_file: str, key_file: str) -> Certificate:
    with open(certificate_file, "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    return Certificate(certificate_file, key_file,
                       certificate.public_bytes(serialization.Encoding.DER),
                       certificate.not_valid_after_utc)


def write_secret(folder: str, name: str, secret: str) -> str:
    """A client secret in its own file, mode 0600 before the first byte."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.secret")
    write_durably(path, (secret + "\n").encode("utf-8"), exclusive=True)
    fsync_directory(folder)
    return path


def proof_of_possession(application_object_id: str, certificate: Certificate) -> str:
    """
    The JWT that proves we hold C{certificate}'s key: RS256, header x5t, claims aud
    00000002-0000-0000-c000-000000000000, iss the application's object id, nbf/exp
    ten minutes apart
    (https://learn.microsoft.com/en-us/graph/application-rollkey-prooftoken).
    """
    import jwt

    with open(certificate.key_file, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    now = int(time.time())
    x5t = base64.urlsafe_b64encode(certificate.thumbprint).decode("ascii").rstrip("=")
    return jwt.encode({"aud": PROOF_AUDIENCE, "iss": application_object_id,
                       "nbf": now, "exp": now + 600},
                      key, algorithm="RS256",  # type: ignore[arg-type]
                      headers={"x5t": x5t, "typ": "JWT"})
