"""
`xrelay doctor` (the installed command, a subprocess) against the sandbox in this process:
all ok; then with the sandbox switched to each failure (wrong secret, SMTP AUTH disabled,
no mailbox permission, Send As missing) the failed step and its fix, exact text.
"""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted

from tests.operations.test_commands import delivered_to, xrelay
from xrelay.sandbox import DEFAULT_MAILBOX

MAILBOX = DEFAULT_MAILBOX
SENDER = "printer@sandbox.example"

#: Exchange Online's reply with SMTP AUTH off for the tenant, as quoted in
#: https://github.com/simonrob/email-oauth2-proxy/issues/193 (and in the measurements).
TENANT_SMTP_AUTH_DISABLED = (
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
    "Tenant. Visit https://aka.ms/smtp_auth_disabled for more information. "
    "[SB1PR01CA0001.outlook.office365.com]")


async def doctor(world: Any, *args: str) -> tuple[int, list[str], str]:
    code, out, err = await xrelay(world, "doctor", *args, "sandbox")
    return code, out.splitlines(), err


def line(lines: list[str], start: str) -> str:
    found = [ln for ln in lines if ln.startswith(start)]
    assert found, (start, "\n".join(lines))
    return found[0]


def fixes_after(lines: list[str], start: str) -> list[str]:
    i = lines.index(line(lines, start))
    fixes = []
    for following in lines[i + 1:]:
        if not following.startswith(" " * 8):
            break
        fixes.append(following.strip())
    return fixes


@pytest_twisted.ensureDeferred
async def test_all_steps_ok_against_the_sandbox(world) -> None:
    code, lines, err = await doctor(world, "--send-as-check")
    assert code == 0, "\n".join(lines) + err
    assert lines[0] == f"# xrelay doctor: account sandbox (microsoft, client_credentials, {MAILBOX})"
    assert [ln.split(":")[0] for ln in lines[1:-1]] == [
        "ok      configuration", f"ok      authority {world.sandbox.authority.split(':')[0]}",
        "ok      upstream localhost", "ok      token request",
        f"ok      XOAUTH2 login as {MAILBOX}", f"ok      test message to {MAILBOX}",
        f"ok      Send As {SENDER}"]
    assert line(lines, "ok      authority").endswith("TLSv1.3, certificate for 127.0.0.1 "
                                                    "valid until " + line(
                                                        lines, "ok      authority").split(
                                                        "valid until ")[1])
    assert line(lines, "ok      token request: ") == (
        "ok      token request: access token for https://outlook.office365.com/.default, "
        "valid 3599 s")
    assert line(lines, "ok      XOAUTH2 login as").endswith(": 235 2.7.0 Authentication successful")
    assert line(lines, f"ok      Send As {SENDER}: 250 2.6.0 ")
    assert lines[-1] == "# all steps ok"
    to_self = delivered_to(world, MAILBOX)
    assert sorted(m.mail_from for m in to_self) == [SENDER, MAILBOX]
    secret = world.sandbox.default_app.client_secret
    assert secret not in "\n".join(lines) + err


@pytest_twisted.ensureDeferred
async def test_without_send_as_check_the_senders_are_listed_with_the_grant(world) -> None:
    code, lines, err = await doctor(world)
    assert code == 0, "\n".join(lines)
    assert line(lines, f"skipped Send As {SENDER}") == (
        f"skipped Send As {SENDER}: not checked (run with --send-as-check to send one test "
        f"message as <{SENDER}> to {MAILBOX})")
    assert fixes_after(lines, f"skipped Send As {SENDER}") == [
        f'fix: Add-RecipientPermission -Identity "{SENDER}" -Trustee "{MAILBOX}" '
        "-AccessRights SendAs -Confirm:$false"]


@pytest_twisted.ensureDeferred
async def test_wrong_secret(world) -> None:
    path = world.tmp / "wrong-secret.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b"8Q~wrong\n")
    os.close(fd)
    original = world.sandbox.default_account()["client_secret_file"]
    world.config_path.write_text(world.config_path.read_text().replace(original, str(path)))
    code, lines, err = await doctor(world)
    assert code == 1
    client_id = world.sandbox.default_app.client_id
    failed = line(lines, "FAILED  token request: ")
    assert failed.startswith(
        "FAILED  token request: client secret rejected (the client secret is not one of the "
        "app's secrets): invalid_client: AADSTS7000215: Invalid client secret provided. "
        "Ensure the secret being sent in the request is the client secret value, not the "
        f"client secret ID, for a secret added to app '{client_id}'.")
    assert fixes_after(lines, "FAILED  token request: ") == [
        "fix: put the secret's Value (not its Secret ID) from Entra ID > App registrations "
        f"> {client_id} > Certificates & secrets into {path}; xrelay reads it again by "
        "itself within seconds (or run `xrelay reload`)"]
    assert line(lines, "skipped XOAUTH2 login") == (
        f"skipped XOAUTH2 login as {MAILBOX}: not tried: an earlier step failed")
    assert lines[-1] == "# 1 failed: token request"


@pytest_twisted.ensureDeferred
async def test_smtp_auth_disabled_for_the_tenant(world) -> None:
    world.sandbox.exchange.fail_next("AUTH", TENANT_SMTP_AUTH_DISABLED)
    code, lines, err = await doctor(world)
    assert code == 1
    assert line(lines, "FAILED  XOAUTH2 login") == (
        f"FAILED  XOAUTH2 login as {MAILBOX}: SMTP AUTH is disabled for the whole tenant: "
        + TENANT_SMTP_AUTH_DISABLED)
    assert fixes_after(lines, "FAILED  XOAUTH2 login") == [
        "fix: Set-TransportConfig -SmtpClientAuthenticationDisabled $false",
        "(or leave it off for the tenant and allow the relay's mailbox alone: "
        f'Set-CASMailbox -Identity "{MAILBOX}" -SmtpClientAuthenticationDisabled $false)']
    assert line(lines, f"skipped test message to {MAILBOX}")


@pytest_twisted.ensureDeferred
async def test_no_mailbox_permission(world) -> None:
    client_id = world.sandbox.default_app.client_id
    del world.sandbox.exchange.app_mailboxes[client_id]
    code, lines, err = await doctor(world)
    assert code == 1
    assert line(lines, "FAILED  XOAUTH2 login") == (
        f"FAILED  XOAUTH2 login as {MAILBOX}: Exchange refused the app's token for {MAILBOX}: "
        "the app's service principal is not registered in Exchange Online or has no "
        "FullAccess on the mailbox (or SMTP.SendAsApp lacks admin consent): "
        "535 5.7.3 Authentication unsuccessful [SB1PR01CA0001.outlook.office365.com]")
    assert fixes_after(lines, "FAILED  XOAUTH2 login") == [
        f"fix: $ObjectId = (Get-MgServicePrincipal -Filter \"appId eq '{client_id}'\").Id",
        f'New-ServicePrincipal -AppId "{client_id}" -ObjectId $ObjectId -DisplayName '
        '"xrelay sandbox"',
        f'Add-MailboxPermission -Identity "{MAILBOX}" -User $ObjectId -AccessRights FullAccess',
        "(`xrelay doctor --script sandbox` prints the whole script)"]


@pytest_twisted.ensureDeferred
async def test_send_as_missing(world) -> None:
    client_id = world.sandbox.default_app.client_id
    world.sandbox.exchange.grant_app_mailbox(client_id, MAILBOX, send_as_anyone=False)
    code, lines, err = await doctor(world, "--send-as-check")
    assert code == 1
    failed = line(lines, f"FAILED  Send As {SENDER}")
    assert failed.startswith(
        f"FAILED  Send As {SENDER}: {MAILBOX} may not send as {SENDER}: 554 5.2.252 "
        f"SendAsDenied; {MAILBOX} not allowed to send as {SENDER}; ")
    assert fixes_after(lines, f"FAILED  Send As {SENDER}") == [
        f'fix: Add-RecipientPermission -Identity "{SENDER}" -Trustee "{MAILBOX}" '
        "-AccessRights SendAs -Confirm:$false"]
    assert line(lines, f"ok      test message to {MAILBOX}")  # its own address still works
    assert lines[-1] == f"# 1 failed: Send As {SENDER}"


@pytest_twisted.ensureDeferred
async def test_script_has_the_accounts_values(world) -> None:
    code, lines, err = await doctor(world, "--script")
    assert code == 0, err
    client_id = world.sandbox.default_app.client_id
    script = "\n".join(lines)
    assert 'Connect-ExchangeOnline -Organization "sandbox.onmicrosoft.com"' in lines
    assert f'Set-CASMailbox -Identity "{MAILBOX}" -SmtpClientAuthenticationDisabled $false' in lines
    assert f"$ObjectId = (Get-MgServicePrincipal -Filter \"appId eq '{client_id}'\").Id" in lines
    assert (f'New-ServicePrincipal -AppId "{client_id}" -ObjectId $ObjectId -DisplayName '
            '"xrelay sandbox"') in lines
    assert (f'Add-MailboxPermission -Identity "{MAILBOX}" -User $ObjectId -AccessRights '
            "FullAccess") in lines
    assert (f'Add-RecipientPermission -Identity "{SENDER}" -Trustee "{MAILBOX}" '
            "-AccessRights SendAs -Confirm:$false") in lines
    assert "*@example.com" not in script  # a pattern is not an address to grant
    assert world.sandbox.default_app.client_secret not in script
