"""
The configuration reference (docs/configuration.md) against the code: every key the
reader accepts is documented, every documented key is accepted, and the file is what
the generator writes today.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from xrelay import config as config_module
from xrelay import reference
from xrelay.passwords import hash_password

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "configuration.md"


def documented_keys(text: str) -> dict[str, set[str]]:
    """Section heading -> the keys in its table, parsed from the Markdown."""
    found: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        heading = re.match(r"## `(.+)`$", line)
        if heading:
            current = found.setdefault(heading.group(1), set())
            continue
        row = re.match(r"\| `([a-z_]+)` \|", line)
        if row and current is not None:
            current.add(row.group(1))
    return found


def reader_known_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                      ) -> dict[str, set[str]]:
    """
    The known-keys list each section of the reader checks against, captured while it
    reads a file that has every section.
    """
    (tmp_path / "secret.txt").write_text("s3cret\n")
    digest = hash_password("correct horse")
    (tmp_path / "xrelay.toml").write_text(f"""
[server]
listen = [{{ endpoint = "tcp:2525:interface=127.0.0.1" }}]
hostname = "relay.test"
[relay]
allow_networks = ["192.168.10.0/24"]
[[users]]
name = "scanner"
password_hash = "{digest}"
[[accounts]]
name = "main"
user = "relay@example.com"
tenant = "example.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
client_secret_file = "secret.txt"
[delivery]
first_retry = 60
[admin]
password_hash = "{digest}"
""")
    seen: dict[str, set[str]] = {}
    original = config_module._Reader.known_keys

    def recording(self: Any, raw: dict[str, Any], prefix: str, allowed: Any,
                  hints: Any = None) -> None:
        allowed = list(allowed)
        section = re.sub(r'\[\d+\]$|\."[^"]*"$', "", prefix)
        seen.setdefault(section, set()).update(allowed)
        original(self, raw, prefix, allowed, hints)

    monkeypatch.setattr(config_module._Reader, "known_keys", recording)
    config_module.read_config(str(tmp_path / "xrelay.toml"))
    return seen


def test_reference_is_what_the_generator_writes() -> None:
    """docs/configuration.md is regenerated whenever the schema changes."""
    generated = subprocess.run([sys.executable, "-m", "xrelay.reference"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    assert generated == DOCUMENT.read_text(), (
        f"docs/configuration.md is out of date; run: {reference.REGENERATE}")


def test_every_key_the_reader_knows_is_in_the_reference_and_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    known = reader_known_keys(tmp_path, monkeypatch)
    documented = documented_keys(DOCUMENT.read_text())
    sections = {s.name: s for s in reference.SECTIONS}
    # The top level: every table the reader accepts has a section in the reference.
    assert known.pop("") == {name for name in sections if "." not in name}
    assert set(known) == set(sections), "a section the reader checks is not in SECTIONS"
    problems = []
    for name, section in sections.items():
        in_reader = known[name]
        in_schema = set(reference.keys(section))
        in_document = documented.get(section.heading, set())
        for key in sorted(in_reader - in_document):
            problems.append(f"{name}.{key}: accepted by the reader, not in the reference")
        for key in sorted(in_document - in_reader):
            problems.append(f"{name}.{key}: in the reference, not accepted by the reader")
        for key in sorted(in_reader ^ in_schema):
            problems.append(f"{name}.{key}: the reader's known keys and the attrs class "
                            f"{section.schema.__name__} differ")
    assert not problems, "\n".join(problems + [f"fix the code, then: {reference.REGENERATE}"])


def test_reference_gives_type_default_and_meaning() -> None:
    text = DOCUMENT.read_text()
    assert "| `max_line_length` | integer | `4096` | Longest command" in text
    assert "| `allow_networks` | list of networks (CIDR) | `[\"127.0.0.0/8\", \"::1/128\"]` |" in text
    assert "| `tenant` | string | required for Microsoft |" in text
    assert "| `endpoint` | string | required |" in text


def test_a_key_without_a_meaning_is_refused() -> None:
    @attrs.frozen
    class Undocumented:
        mystery: int = 3

    (field,) = attrs.fields(Undocumented)
    with pytest.raises(ValueError, match="mystery has no metadata"):
        reference.doc_of(field)


def test_reference_explains_the_managed_dropins() -> None:
    """The generated reference says where managed drop-ins live and that yours wins."""
    from xrelay.reference import render

    text = "\n".join(render())
    for words in ("state_dir/managed/accounts/NAME.toml", "state_dir/managed/devices.toml",
                  "Your file wins", "changes.log"):
        assert words in text
