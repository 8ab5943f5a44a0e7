"""
Which certificate authorities the token requests trust, made explicit.

C{ca_file} adds to the usual public roots (certifi's bundle): national clouds and the
sandbox need it.  requests lets C{$REQUESTS_CA_BUNDLE} silently replace a session's
C{verify}, so L{TrustedSession} passes the bundle on every single request; msal receives
it as its C{http_client}.  L{https_policy} gives treq (Google) the same trust.

Never weaken verification here: there is no "insecure" switch.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import certifi
import requests
from twisted.internet import ssl
from twisted.web.client import BrowserLikePolicyForHTTPS

#: Seconds before a token request is abandoned as a temporary failure.
REQUEST_TIMEOUT = 30.0


def trust_bundle(state_dir: str, ca_file: str | None) -> str:
    """
    A PEM file with the public roots plus C{ca_file}: certifi's own path when there is
    no C{ca_file}, else a combined copy under C{state_dir/trust/} (certificates are
    public; the file is rewritten only when its contents change).
    """
    if ca_file is None:
        return certifi.where()
    with open(certifi.where(), "rb") as f:
        public = f.read()
    with open(ca_file, "rb") as f:
        extra = f.read()
    combined = public.rstrip(b"\n") + b"\n" + extra
    folder = os.path.join(state_dir, "trust")
    os.makedirs(folder, mode=0o755, exist_ok=True)
    path = os.path.join(folder, hashlib.sha256(combined).hexdigest()[:16] + ".pem")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(combined)
        os.replace(tmp, path)
    return path


class TrustedSession(requests.Session):
    """
    A requests session whose trust cannot be overridden by the environment: every request
    verifies against C{bundle} (and times out), whatever C{REQUESTS_CA_BUNDLE} or
    C{CURL_CA_BUNDLE} say.  Proxies from the environment still apply.
    """

    def __init__(self, bundle: str, timeout: float = REQUEST_TIMEOUT) -> None:
        super().__init__()
        self.bundle = bundle
        self.verify = bundle
        self.timeout = timeout

    def request(self, method: str, url: str | bytes,
                *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["verify"] = self.bundle
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)


def _certificates(path: str) -> list[ssl.Certificate]:
    with open(path, "rb") as f:
        text = f.read()
    marker = b"-----END CERTIFICATE-----"
    certificates = []
    for block in text.split(marker)[:-1]:
        start = block.find(b"-----BEGIN CERTIFICATE-----")
        if start == -1:
            continue
        try:
            certificates.append(ssl.Certificate.loadPEM(block[start:] + marker + b"\n"))
        except Exception:  # one odd entry in a public bundle must not stop the rest
            continue
    return certificates


def https_policy(bundle: str) -> BrowserLikePolicyForHTTPS:
    """A treq/Agent TLS policy that trusts exactly the roots in C{bundle}."""
    return BrowserLikePolicyForHTTPS(
        trustRoot=ssl.trustRootFromCertificates(_certificates(bundle)))
