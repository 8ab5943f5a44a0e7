"""
The container image, built and run for real: a Debian root from mmdebstrap imported as
the base (public registries are out of reach here), the Containerfile built on it with
podman, the sandbox demo reached from the host through a published port, the message
found in the state volume, the health status, and a clean stop on SIGTERM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Iterator

import attrs
import pytest

from tests.conftest import free_port
from tests.debian_root import CACHE, ROOT, cached_base, pip_settings, require_root_tools

#: podman here needs these: the sandbox forbids raising rlimits above the host's.
ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1000:1000")
CONTAINERFILE = (ROOT / "Containerfile").read_text()


def test_containerfile_promises() -> None:
    """What the image must keep whatever else changes (checked without podman)."""
    assert "ARG BASE_IMAGE=docker.io/library/python:3.12-slim" in CONTAINERFILE
    assert "FROM ${BASE_IMAGE} AS wheels" in CONTAINERFILE
    assert "--no-index --find-links /wheels" in CONTAINERFILE
    assert 'HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \\\n' \
        '    CMD ["xrelay", "health"]' in CONTAINERFILE
    assert "USER xrelay" in CONTAINERFILE
    assert 'VOLUME ["/var/lib/xrelay", "/etc/xrelay"]' in CONTAINERFILE
    assert 'ENTRYPOINT ["xrelay"]\nCMD ["run"]' in CONTAINERFILE


@attrs.frozen
class Podman:
    """podman with this test's own configuration and image store (cached in CACHE)."""

    env: dict[str, str]
    runtime: str

    def __call__(self, *args: str, timeout: float = 300, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", "--runtime", self.runtime, *args],
                                env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):"
                                 f"\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result


def podman_here(tmp_path: Path) -> tuple[dict[str, str], str]:
    """
    The environment for podman: a storage.conf of our own (so the test neither fills
    nor depends on the machine's image store), and containers.conf settings that work
    as root here.
    """
    storage = tmp_path / "storage.conf"
    storage.write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{CACHE / "containers"}"\n'
        f'runroot = "{tmp_path / "run"}"\n')
    containers = tmp_path / "containers.conf"
    containers.write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=1000:1000"]\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n')
    env = dict(os.environ, CONTAINERS_CONF=str(containers),
               CONTAINERS_STORAGE_CONF=str(storage))
    return env, str(containers)


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[tuple[Podman, str]]:
    """A podman that can run containers here, and the imported Debian base image."""
    require_root_tools("podman")
    env, _ = podman_here(tmp_path)
    info = subprocess.run(["podman", "info"], env=env, capture_output=True, text=True,
                          timeout=120)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    tarball = cached_base("container")
    digest = hashlib.sha256(tarball.name.encode()).hexdigest()[:12]
    base = f"localhost/xrelay-ci-base:{digest}"
    probe = None
    errors = []
    # crun refuses hosts with controllers on both cgroup v1 and v2 ("hybrid"); runc
    # copes with them.  Use the first runtime that starts a container.
    for runtime in ("crun", "runc"):
        if shutil.which(runtime) is None:
            continue
        candidate = Podman(env, runtime)
        if candidate("image", "exists", base, check=False).returncode != 0:
            candidate("import", str(tarball), base, timeout=600)
        started = candidate("run", "--rm", *ULIMITS, base, "/bin/true", check=False)
        if started.returncode == 0:
            probe = candidate
            break
        errors.append(f"{runtime}: {started.stderr.strip()[-300:]}")
    if probe is None:
        pytest.skip("podman cannot start a container here: " + "; ".join(errors))
    yield probe, base
    probe("image", "prune", "--force", check=False)


def wait_for_banner(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.noop()
            return
        except (OSError, smtplib.SMTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def send(port: int) -> None:
    """From the host, as a person trying the image: swaks when it is there."""
    swaks = shutil.which("swaks")
    if swaks:
        result = subprocess.run(
            [swaks, "--server", f"127.0.0.1:{port}", "--from", "printer@example.com",
             "--to", "client@example.net", "--header", "Subject: from the host"],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "<-  250 2.0.0 Ok: queued as " in result.stdout
        return
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail("printer@example.com", ["client@example.net"],
                        b"Subject: from the host\r\n\r\nhello\r\n")


@pytest.mark.timeout(1500)
def test_image_builds_runs_the_sandbox_and_stops_on_sigterm(
        podman: tuple[Podman, str], tmp_path: Path) -> None:
    run, base = podman
    image = f"localhost/xrelay-test:{os.getpid()}"
    build = ["build", "--format", "docker", "--no-cache", *ULIMITS,
             "--build-arg", f"BASE_IMAGE={base}", "--file", str(ROOT / "Containerfile"),
             "--tag", image]
    pip = pip_settings()
    if "PIP_INDEX_URL" in pip:
        build += ["--build-arg", f"PIP_INDEX={pip['PIP_INDEX_URL']}"]
    if "PIP_CERT" in pip:
        build += ["--secret", f"id=pip-ca,src={pip['PIP_CERT']}"]
    started = time.monotonic()
    run(*build, str(ROOT), timeout=1200)
    build_seconds = time.monotonic() - started
    name = f"xrelay-test-{os.getpid()}"
    volume = f"xrelay-test-state-{os.getpid()}"
    try:
        (config,) = json.loads(run("image", "inspect", image).stdout)
        size = config["Size"]
        report = (f"container image: {size / 1e6:.0f} MB, built in {build_seconds:.0f} s "
                  f"(--no-cache, base {base})")
        print(report)
        (CACHE / "last-image.txt").write_text(report + "\n")
        settings = config["Config"]
        assert settings["User"] == "xrelay"
        # podman puts it beside Config, docker inside; either way it must be there
        # (podman keeps it only with --format docker).
        healthcheck = config.get("Healthcheck") or settings.get("Healthcheck")
        assert healthcheck["Test"] == ["CMD", "xrelay", "health"], config
        assert set(settings["Volumes"]) == {"/var/lib/xrelay", "/etc/xrelay"}
        assert {"2525/tcp", "8025/tcp"} <= set(settings["ExposedPorts"])
        assert settings.get("StopSignal") in ("SIGTERM", "15")

        # No configuration mounted: the sandbox demo, published on a port of the host.
        port = free_port()
        run("volume", "create", volume)
        run("run", "--detach", "--name", name, *ULIMITS, "--stop-timeout", "60",
            "--publish", f"127.0.0.1:{port}:2525", "--volume", f"{volume}:/var/lib/xrelay",
            "--env", "XRELAY_LOG_FORMAT=json", image)
        wait_for_banner(port)
        send(port)
        mountpoint = Path(run("volume", "inspect", volume, "--format",
                              "{{.Mountpoint}}").stdout.strip())
        mailbox = mountpoint / "xrelay-sandbox" / "mailbox"
        deadline = time.monotonic() + 120
        while not list(mailbox.rglob("*.eml")) and time.monotonic() < deadline:
            time.sleep(0.5)
        (eml,) = mailbox.rglob("*.eml")
        assert b"Subject: from the host" in eml.read_bytes()
        assert eml.stat().st_uid == 10001  # written by the image's non-root user

        # Health: `xrelay health` where this branch has it, else the TCP probe above.
        has_health = run("exec", name, "xrelay", "health", "--help",
                         check=False).returncode == 0
        if has_health:
            deadline = time.monotonic() + 120
            while run("healthcheck", "run", name, check=False).returncode != 0:
                assert time.monotonic() < deadline, "the container never became healthy"
                time.sleep(2)
            state = json.loads(run("inspect", name).stdout)[0]["State"]
            health = state.get("Health") or state.get("Healthcheck")
            assert health["Status"] == "healthy"
        else:
            print("health: `xrelay health` is not in this branch; checked by a TCP "
                  "probe (SMTP banner and a delivered message)")

        # SIGTERM (podman stop), then the relay's own shutdown: no SIGKILL needed.
        run("stop", "--time", "60", name, timeout=120)
        state = json.loads(run("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] != 137, "the relay ignored SIGTERM and was killed"
        logs = run("logs", name).stdout + run("logs", name).stderr
        events = [json.loads(line) for line in logs.splitlines() if line.strip()]
        assert any(e.get("log_format") == "Server Shut Down." for e in events)
        assert any(str(e.get("log_namespace", "")).startswith("xrelay") for e in events)
    finally:
        run("rm", "--force", name, check=False)
        run("volume", "rm", "--force", volume, check=False)
        run("rmi", "--force", image, check=False)


def test_sandbox_default_stays_on_loopback_outside_containers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the image's XRELAY_SANDBOX_INTERFACE opens the sandbox demo to a network."""
    from xrelay.config import ConfigError, sandbox_default

    monkeypatch.delenv("XRELAY_SANDBOX_INTERFACE", raising=False)
    config = sandbox_default()
    assert [listener.endpoint for listener in config.server.listen] == ["tcp:2525:interface=127.0.0.1"]
    assert [str(n) for n in config.relay.allow_networks] == ["127.0.0.0/8", "::1/128"]
    assert "ENV PATH=/opt/xrelay/bin:$PATH \\\n    PYTHONUNBUFFERED=1 \\\n" \
        "    XRELAY_SANDBOX_INTERFACE=0.0.0.0" in CONTAINERFILE
    monkeypatch.setenv("XRELAY_SANDBOX_INTERFACE", "0.0.0.0")
    config = sandbox_default()
    assert [listener.endpoint for listener in config.server.listen] == ["tcp:2525:interface=0.0.0.0"]
    # A published port's connections come from the container network's gateway.
    assert "10.0.0.0/8" in [str(n) for n in config.relay.allow_networks]
    assert "0.0.0.0/0" not in [str(n) for n in config.relay.allow_networks]
    monkeypatch.setenv("XRELAY_SANDBOX_INTERFACE", "everywhere")
    with pytest.raises(ConfigError, match="'everywhere' is not an IP address"):
        sandbox_default()
