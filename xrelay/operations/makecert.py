"""
C{xrelay make-cert}: a self-signed certificate and key for the relay's own listeners,
with the names devices use to reach it, for a LAN without its own certificate
authority.

Devices rarely check a relay's certificate (and those that do can be given this one
to trust, by its SHA-256 fingerprint, which is printed).  The key is RSA 2048 because
old printers know no other kind, and it is written with mode 0600 from the first byte,
under a new name renamed into place, never through a symlink (L{xrelay.keyfiles}).
The sandbox's certificate authority (L{xrelay.sandbox.ca}) is for tests only; this is
the one meant for real use.  This command must never overwrite a file unless told to
(C{--force}), nor print the key.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xrelay.subcommands import EXIT_OK, EXIT_PROBLEM, command, config_from
from xrelay.config import ConfigError
from xrelay.keyfiles import CERTIFICATE_MODE, KEY_MODE, write_new_file

__all__ = ["make_certificate"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", action="append", default=[], metavar="NAME",
                        help="a DNS name or IP address devices use for the relay (repeat "
                        "for more); default: server.hostname from the configuration")
    parser.add_argument("--cert", default="xrelay.pem", metavar="FILE",
                        help="certificate file to write (default: xrelay.pem)")
    parser.add_argument("--key", default="xrelay.key", metavar="FILE",
                        help="private key file to write, mode 0600 (default: xrelay.key)")
    parser.add_argument("--days", type=int, default=825,
                        help="days the certificate is valid (default: 825)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite existing files")


def make_certificate(names: list[str], days: int = 825
                     ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A self-signed server certificate for C{names} (the first is its subject)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


@command("make-cert", "write a self-signed certificate and key for the relay's "
         "listeners (for devices on the LAN)", _arguments)
def make_cert(args: argparse.Namespace) -> int:
    names = list(args.name)
    if not names:
        try:
            names = [config_from(args).server.hostname]
        except ConfigError as e:
            print(f"xrelay: {e}; or name the relay with --name relay.example.lan",
                  file=sys.stderr)
            return EXIT_PROBLEM
    if args.days < 1:
        print("xrelay: --days must be at least 1", file=sys.stderr)
        return EXIT_PROBLEM
    for path in (args.cert, args.key):
        if os.path.lexists(path) and not args.force:
            print(f"xrelay: {path} exists; pass --force to overwrite it", file=sys.stderr)
            return EXIT_PROBLEM
    certificate, key = make_certificate(names, args.days)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        write_new_file(args.key, key_pem, KEY_MODE, replace=args.force)
        write_new_file(args.cert, certificate.public_bytes(serialization.Encoding.PEM),
                       CERTIFICATE_MODE, replace=args.force)
    except FileExistsError as e:
        print(f"xrelay: {e.filename2 or e.filename} exists; pass --force to overwrite it",
              file=sys.stderr)
        return EXIT_PROBLEM
    except OSError as e:
        print(f"xrelay: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_PROBLEM
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex(":").upper()
    print(f"wrote {args.cert} (self-signed, for {', '.join(names)}, valid {args.days} "
          f"days) and {args.key} (mode 0600)")
    print(f"SHA-256 fingerprint: {fingerprint}")
    print("add to [server] in xrelay.toml:")
    print(f'tls_cert = "{os.path.abspath(args.cert)}"')
    print(f'tls_key = "{os.path.abspath(args.key)}"')
    return EXIT_OK
