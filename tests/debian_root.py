"""
Test support: minimal Debian roots made with mmdebstrap, cached under /var/tmp between
runs, for the tests that install xrelay the way an administrator does (in a container
image built on such a root, or with contrib/install.sh in a throw-away root).

Public image registries cannot be reached from CI; Debian's mirror and PyPI can.  pip
inside those roots needs what pip on this machine uses to reach its index (a CA bundle
for a TLS-inspecting proxy, an index URL): L{pip_settings} finds them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("XRELAY_TEST_CACHE", "/var/tmp/xrelay-ci"))
SUITE = "bookworm"
#: What every root holds: Python with its venv module, CA certificates, useradd.
PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
_TRIM = ("--dpkgopt=path-exclude=/usr/share/doc/*",
         "--dpkgopt=path-include=/usr/share/doc/*/copyright",
         "--dpkgopt=path-exclude=/usr/share/man/*",
         "--dpkgopt=path-exclude=/usr/share/locale/*")
#: The parts of the source tree that make the package (what Containerfile copies).
PACKAGE_FILES = ("pyproject.toml", "setup.cfg", "README.md", "twisted", "xrelay")
ROOT = Path(__file__).resolve().parents[1]


def require_root_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mmdebstrap, chroot and podman run as root here)")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian packages; .ci/run "
                    "installs them)")


def cached_base(name: str, extra: tuple[str, ...] = ()) -> Path:
    """
    A tarball of a minimal Debian root with L{PACKAGES} and C{extra}, made once with
    mmdebstrap and kept in L{CACHE}; its name says what is in it, so a changed package
    list makes a new one.
    """
    packages = sorted(PACKAGES + extra)
    digest = hashlib.sha256(" ".join(packages).encode()).hexdigest()[:12]
    tarball = CACHE / f"{SUITE}-{name}-{digest}.tar"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        if shutil.which("mmdebstrap") is None:
            pytest.skip("mmdebstrap is not installed and no cached root exists; "
                        "apt-get install mmdebstrap (.ci/run does)")
        partial = tarball.with_suffix(".partial.tar")
        result = subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=essential",
             f"--include={','.join(packages)}", *_TRIM, SUITE, str(partial)],
            capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise AssertionError(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
        partial.rename(tarball)
    return tarball


def pip_settings() -> dict[str, str]:
    """
    How pip on this machine reaches its index: the C{PIP_INDEX_URL} and C{PIP_CERT}
    it uses (environment, else pip's configuration files), for pip inside a root.
    """
    found: dict[str, str] = {}
    for name, key in (("PIP_INDEX_URL", "global.index-url"), ("PIP_CERT", "global.cert")):
        value = os.environ.get(name)
        if not value:
            result = subprocess.run([sys.executable, "-m", "pip", "config", "get", key],
                                    capture_output=True, text=True)
            value = result.stdout.strip() if result.returncode == 0 else ""
        if value and not value.startswith("file:"):
            found[name] = value
    if "PIP_CERT" not in found and os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
        found["PIP_CERT"] = "/etc/ssl/certs/ca-certificates.crt"
    return found


def copy_source(destination: Path, *more: str) -> None:
    """The package's files (and C{more} of the tree) into C{destination}."""
    destination.mkdir(parents=True, exist_ok=True)
    for part in PACKAGE_FILES + more:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, destination / part,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, destination / part)
