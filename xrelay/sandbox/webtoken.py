"""
JSON Web Tokens as the sandbox identity platform issues and checks them.

Access tokens and id tokens are signed RS256 JWTs like Microsoft's, so that code under
test can decode their claims (C{exp}, C{aud}, C{upn}) exactly as it would in production;
client assertions (certificate credentials) are verified with RS256 or PS256 as msal sends
them.  Hand-written on C{cryptography} so the sandbox needs no JWT library of its own.

Nothing here may log or keep a token: callers own them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MalformedToken(ValueError):
    """Not a JWT, or its signature does not verify."""


def encode(claims: dict[str, Any], key: rsa.RSAPrivateKey, kid: str, header: dict[str, Any] | None = None) -> str:
    """Sign C{claims} with RS256 under key id C{kid}."""
    head = {"typ": "JWT", "alg": "RS256", "kid": kid, **(header or {})}
    signing_input = (
        b64url_encode(json.dumps(head, separators=(",", ":")).encode())
        + "."
        + b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url_encode(signature)


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of C{token}, without checking its signature."""
    try:
        head, body, _ = token.split(".")
        return json.loads(b64url_decode(head)), json.loads(b64url_decode(body))
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedToken("not a JWT") from e


def verify(token: str, public_key: rsa.RSAPublicKey) -> dict[str, Any]:
    """
    The claims of C{token} if its RS256 or PS256 signature verifies with
    C{public_key}; raise L{MalformedToken} otherwise.  Time claims are the
    caller's business: they differ per use (assertion vs access token).
    """
    header, claims = unverified(token)
    signing_input, _, signature = token.rpartition(".")
    alg = header.get("alg")
    if alg == "RS256":
        pad: padding.AsymmetricPadding = padding.PKCS1v15()
    elif alg == "PS256":
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    else:
        raise MalformedToken(f"unsupported alg {alg!r}")
    try:
        public_key.verify(b64url_decode(signature), signing_input.encode("ascii"), pad, hashes.SHA256())
    except (InvalidSignature, ValueError) as e:
        raise MalformedToken("bad signature") from e
    return claims


def jwk(public_key: rsa.RSAPublicKey, kid: str) -> dict[str, Any]:
    """The public key as a JWKS entry, for the C{jwks_uri} of the OpenID configuration."""
    numbers = public_key.public_numbers()

    def _int(n: int) -> str:
        return b64url_encode(n.to_bytes((n.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "use": "sig", "kid": kid, "n": _int(numbers.n), "e": _int(numbers.e)}
