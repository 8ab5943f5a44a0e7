"""
The admin page's queue with N deferred entries (issue 24): the relay's start until it
listens, its RSS after start and after the pages, and the time and size of /queue
(first page, last page, a search).  Entries are written straight into the spool's
layout (bench/queue_scale.py's fill).

    .venv/bin/python bench/admin_queue_page.py [--entries 40000] [--dir /var/tmp]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import queue_scale  # noqa: E402
from xrelay.passwords import hash_password  # noqa: E402

PASSWORD = "bench admin password"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def measure(count: int, base: Path) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="xrelay-page-", dir=base))
    port, admin = queue_scale.free_port(), queue_scale.free_port()
    config = queue_scale.write_config(work, port)
    config.write_text(config.read_text() + f'\n[admin]\nlisten = "tcp:{admin}:interface='
                      f'127.0.0.1"\npassword_hash = "{hash_password(PASSWORD, log2_n=4)}"\n')
    queue_scale.fill(work / "state" / "spool", count)
    started = time.perf_counter()
    process = subprocess.Popen(
        [os.path.join(queue_scale.BIN, "twistd"), "-n", "--pidfile=",
         f"--logfile={work / 'twistd.log'}", "xrelay", "--config", str(config)],
        cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)

    def rss_mb() -> int:
        with open(f"/proc/{process.pid}/status") as f:
            return next(int(line.split()[1]) // 1024 for line in f
                        if line.startswith("VmRSS"))

    result: dict[str, object] = {"entries": count}
    try:
        queue_scale.wait_listening(port, process, 300)
        result["startup_until_listening_s"] = round(time.perf_counter() - started, 2)
        result["rss_after_start_mb"] = rss_mb()
        queue_scale.wait_listening(admin, process, 60)
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect)
        url = f"http://127.0.0.1:{admin}"
        login = opener.open(url + "/login").read().decode()
        token = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)  # type: ignore[union-attr]
        try:
            opener.open(url + "/login", urllib.parse.urlencode(
                {"csrf_token": token, "password": PASSWORD}).encode())
        except urllib.error.HTTPError:
            pass  # the 303 after signing in
        for name, path in (("first", "/queue"), ("last", f"/queue?state=deferred&offset="
                                                         f"{max(count - 100, 0)}"),
                           ("search", "/queue?q=example.org")):
            begin = time.perf_counter()
            body = opener.open(url + path).read()
            result[f"page_{name}_s"] = round(time.perf_counter() - begin, 3)
            result[f"page_{name}_bytes"] = len(body)
        result["rss_after_pages_mb"] = rss_mb()
    finally:
        process.terminate()
        process.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    result["load"] = round(os.getloadavg()[0], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=40000)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    print(json.dumps(measure(args.entries, Path(args.dir))), flush=True)


if __name__ == "__main__":
    main()
