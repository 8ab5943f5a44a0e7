"""
What Exchange Online, Gmail and Microsoft Graph really answer, and what xrelay does about
it: one table, L{KNOWN_REPLIES}, of the provider replies xrelay recognises.

Each row is pattern -> meaning -> decision -> account state -> operator text with the
exact fix.  Judging replies one message at a time bounced whole queues when it was the
I{account} that was in trouble (a mailbox restricted for outbound spam, SMTP AUTH turned
off for the tenant); the decision column says which of the five things is true:

- L{Decision.DELIVER}: accepted.
- L{Decision.RETRY_MESSAGE}: this message, later (its own back-off).
- L{Decision.HOLD_SENDER}: this envelope sender may not use the account (Send As): its
  messages wait, with the fix, while other senders' mail goes on.
- L{Decision.HOLD_ACCOUNT}: nothing of this account can go until the cause is gone: the
  queue keeps everything and one message probes on the account's own schedule.
- L{Decision.BOUNCE_RECIPIENT}: will never succeed for this recipient as sent.

Pure data and matching: no I/O, no clock, no secrets.  The reply texts in the comments
are the providers' documented wording (the source is cited next to each row); the
sandbox (L{xrelay.sandbox.exchange}) answers with exactly these texts.

Token-endpoint errors (AADSTS codes) are the other table, L{xrelay.tokens.aadsts}: they
decide token states (C{client secret expired}, C{admin consent missing}, ...), not what
happens to a message, so they live beside the token lifecycle they drive.
"""

from __future__ import annotations

import enum
import re
from typing import Iterable

import attrs

from xrelay.envelope import Reply


class Decision(enum.Enum):
    DELIVER = "deliver"
    RETRY_MESSAGE = "retry this message"
    HOLD_SENDER = "hold this sender"
    HOLD_ACCOUNT = "hold the whole account"
    BOUNCE_RECIPIENT = "bounce this recipient"


class Hold(enum.Enum):
    """
    Why a whole account is held (the account states beyond the token states).  The
    values are what C{xrelay accounts}, the admin page and the metrics show.
    """

    BLOCKED = "blocked by provider"
    SMTP_AUTH_DISABLED = "SMTP AUTH disabled"
    APP_NOT_AUTHORISED = "app not authorised for the mailbox"
    DAILY_LIMIT = "daily limit reached"
    THROTTLED = "throttled"
    UNREACHABLE = "upstream unreachable"
    MAILBOX_FULL = "mailbox full"
    MAILBOX_UNAVAILABLE = "mailbox not usable"
    NOT_AUTHENTICATED = "not authenticated upstream"


@attrs.frozen
class KnownReply:
    """
    One row of the table.

    @ivar codes: the basic reply codes this row matches.
    @ivar enhanced: a regular expression the enhanced status code must match in full
        (C{None}: any, or none).
    @ivar text: a regular expression searched in the reply text (C{None}: any).
    @ivar app_only: C{True}: only for app-only (client credentials) accounts;
        C{False}: only for delegated ones; C{None}: both.
    @ivar fix: the operator text; C{{user}}, C{{sender}}, C{{client_id}} and
        C{{account}} are filled in by L{KnownReply.advice}.
    """

    name: str
    provider: str
    codes: tuple[int, ...]
    enhanced: str | None
    text: str | None
    meaning: str
    decision: Decision
    hold: Hold | None
    fix: str
    app_only: bool | None = None
    #: The upstream refused a good token for a reason that is not the token's: the
    #: transport keeps the token (no refresh, no new token request).
    keeps_token: bool = False

    def matches(self, reply: Reply, app_only: bool | None = None) -> bool:
        if reply.code not in self.codes:
            return False
        if self.app_only is not None and app_only is not None and app_only != self.app_only:
            return False
        if self.enhanced is not None:
            if reply.enhanced is None or not re.fullmatch(self.enhanced, reply.enhanced):
                return False
        if self.text is not None and not re.search(self.text, reply.text, re.IGNORECASE):
            return False
        return True

    def advice(self, user: str = "", sender: str = "", client_id: str = "",
               account: str = "") -> str:
        """The operator text with the names of this account filled in."""
        return self.fix.format(user=user or "<mailbox>", sender=sender or "<sender>",
                               client_id=client_id or "<application id>",
                               account=account or "<account>")


_RESTRICTED_FIX = (
    "Microsoft has restricted the mailbox {user} from sending (outbound spam or sending "
    "limits exceeded).  Check it for compromise, then in the Microsoft Defender portal "
    "go to Email & collaboration > Review > Restricted entities "
    "(https://security.microsoft.com/restrictedusers), select {user} and Unblock (the "
    "restriction is usually gone within an hour); or in Exchange Online PowerShell: "
    "Remove-BlockedSenderAddress -SenderAddress {user}.  "
    "xrelay keeps the mail queued and tries one message per probe interval; it resumes "
    "by itself once the mailbox may send again.")

_SMTP_AUTH_FIX = (
    "SMTP AUTH is turned off for {user}.  In Exchange Online PowerShell enable it for "
    "this mailbox: Set-CASMailbox -Identity {user} -SmtpClientAuthenticationDisabled "
    "$false (or Microsoft 365 admin center > Users > Active users > {user} > Mail > "
    "Manage email apps > Authenticated SMTP).  The token is fine and is kept; xrelay "
    "probes one message per probe interval and resumes by itself.")

_SEND_AS_FIX = (
    "The upstream mailbox {user} may not send as {sender} (Send As permission missing).  "
    "Grant it in Exchange Online PowerShell: Add-RecipientPermission -Identity {sender} "
    "-Trustee {user} -AccessRights SendAs (it can take up to an hour to apply), or set "
    "rewrite_from = true on account {account} so that xrelay sends from {user} and puts "
    "{sender} in Reply-To.  Messages from {sender} stay queued until then (bounced after "
    "max_age); other senders are not affected.")

_THROTTLED_FIX = (
    "The provider asks xrelay to slow down.  Nothing to do if it is rare; if it lasts, "
    "lower messages_per_minute or max_connections on account {account}.  xrelay waits, "
    "probes one message, and resumes by itself.")

_MAILBOX_FULL_FIX = (
    "The mailbox {user} is full, so Exchange Online refuses to submit mail from it: every "
    "message sent through SMTP AUTH or Graph is kept in its Sent Items.  Make room "
    "(empty Sent Items and Deleted Items), and stop it filling again with a retention "
    "policy that deletes Sent Items after a few days (Microsoft Purview > Data lifecycle "
    "management > Retention policies, or a Messaging Records Management tag: "
    "New-RetentionPolicyTag -Type SentItems -RetentionAction DeleteAndAllowRecovery "
    "-AgeLimitForRetention 7); for a shared mailbox sending through Graph, "
    "Set-Mailbox -Identity {user} -MessageCopyForSentAsEnabled $false also helps.  "
    "xrelay keeps the mail queued and probes one message per probe interval.")

_BLOCKED_SENDER_FIX = (
    "Microsoft has banned the mailbox {user} from sending (spam abuse detected).  Check "
    "it for compromise (reset its credentials and the app's secret), then release it in "
    "the Microsoft Defender portal > Email & collaboration > Review > Restricted "
    "entities (https://security.microsoft.com/restrictedusers), or open a service "
    "request in the Microsoft 365 admin center if it is not listed there.  xrelay keeps "
    "the mail queued and probes one message per probe interval.")

_GRAPH_MAILBOX_FIX = (
    "Microsoft Graph cannot use the mailbox {user}: it has no Exchange Online licence, is "
    "inactive or soft-deleted, or is hosted on-premises (a newly licensed mailbox can "
    "take a while).  Assign an Exchange Online licence in the Microsoft 365 admin center "
    "> Users > Active users > {user} > Licenses and apps, or check Get-Mailbox -Identity "
    "{user}; an on-premises mailbox cannot send through Graph: use transport = \"smtp\" "
    "on account {account}.  xrelay keeps the mail queued and probes one message per "
    "probe interval.")

#: The provider replies xrelay knows, most specific first (the first match wins).
KNOWN_REPLIES: tuple[KnownReply, ...] = (
    # "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException...
    # Cannot submit message." (the SENDING mailbox is full: Sent Items keeps every send)
    # https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission
    # https://learn.microsoft.com/exchange/troubleshoot/email-delivery/cannot-send-mail-mepf
    KnownReply("sender-mailbox-full", "exchange", (554, 552, 452, 451), None,
               r"STOREDRV\.Submission\.Exception:QuotaExceeded",
               "the relay's own mailbox is full (Sent Items), so Exchange submits nothing "
               "from it",
               Decision.HOLD_ACCOUNT, Hold.MAILBOX_FULL, _MAILBOX_FULL_FIX),
    # "550 5.7.501 Access denied, spam abuse detected", "550 5.7.502/5.7.503 Access
    # denied, banned sender" (Exchange Online NDRs: the sender is banned for spam)
    # https://learn.microsoft.com/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online
    KnownReply("banned-sender", "exchange", (550, 554), r"5\.7\.50[123]", None,
               "the mailbox is banned from sending (spam abuse detected)",
               Decision.HOLD_ACCOUNT, Hold.BLOCKED, _BLOCKED_SENDER_FIX),
    # "530 5.7.57 Client not authenticated to send mail. [...]" at MAIL FROM ("5.7.57
    # SMTP; Client was not authenticated to send anonymous mail during MAIL FROM")
    # https://learn.microsoft.com/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365
    KnownReply("not-authenticated-5.7.57", "exchange", (530, 550), r"5\.7\.57", None,
               "Exchange Online took the session as anonymous: SMTP AUTH did not happen "
               "or did not count",
               Decision.HOLD_ACCOUNT, Hold.NOT_AUTHENTICATED,
               "Exchange Online refused to take mail from {user} without authentication "
               "(530 5.7.57).  Check that account {account} sends to the client "
               "submission endpoint (smtp_host = \"smtp.office365.com\", smtp_port = "
               "587; not the domain's MX host), that SMTP AUTH is on for the mailbox "
               "(Set-CASMailbox -Identity {user} -SmtpClientAuthenticationDisabled "
               "$false) and that security defaults or a Conditional Access policy do "
               "not block it.  xrelay probes one message per probe interval."),
    # Gmail "530-5.7.0 Authentication Required. Learn more at
    # https://support.google.com/mail/?p=WantAuthError"
    # https://support.google.com/a/answer/3726730
    KnownReply("gmail-auth-required", "gmail", (530,), r"5\.7\.0", None,
               "Gmail took the session as unauthenticated",
               Decision.HOLD_ACCOUNT, Hold.NOT_AUTHENTICATED,
               "Gmail refused mail from {user} without authentication (530 5.7.0).  "
               "Check that account {account} sends to smtp.gmail.com port 587 (or 465) "
               "and signs in: its refresh token may have been revoked (sign in again "
               "with `xrelay login {account}` or on the admin page), and the Google "
               "Workspace admin must allow the OAuth client (Admin console > Security > "
               "Access and data control > API controls).  xrelay probes one message per "
               "probe interval."),
    # Gmail "450-4.2.1 The user you are trying to contact is receiving mail at a rate
    # that prevents additional messages from being delivered. ..." (one busy RECIPIENT)
    # https://support.google.com/a/answer/3726730
    KnownReply("gmail-recipient-rate", "gmail", (450, 451), r"4\.2\.1",
               r"receiving mail at a rate|receiving email at a rate",
               "this recipient receives too much mail just now",
               Decision.RETRY_MESSAGE, None,
               "One recipient's Gmail mailbox receives mail too fast just now; that "
               "recipient is retried later, the account keeps delivering."),
    # "554 5.2.0 STOREDRV.Submission.Exception:OutboundSpamException; Failed to process
    # message due to a permanent exception with message [BeginDiagnosticData]WASCL
    # UserAction verdict is not None. Actual verdict is Suspend, ShowTierUpgrade.
    # OutboundSpamException: WASCL UserAction verdict is not None. ..."
    # https://learn.microsoft.com/exchange/troubleshoot/email-delivery/send-receive-emails-socialmedia/outboundspamexception-error
    # https://learn.microsoft.com/defender-office-365/outbound-spam-restore-restricted-users
    KnownReply("outbound-spam", "exchange", (554, 550), r"5\.2\.0",
               r"OutboundSpamException|WASCL UserAction",
               "the mailbox is restricted for outbound spam or exceeded sending limits",
               Decision.HOLD_ACCOUNT, Hold.BLOCKED, _RESTRICTED_FIX),
    # "550 5.1.8 Access denied, bad outbound sender" (Microsoft's NDR article: "generated
    # if a user tries to send an email message after their account exceeds the sending
    # limits"; unblock on the Restricted entities page)
    # https://learn.microsoft.com/exchange/troubleshoot/email-delivery/ndr/fix-error-code-550-5-1-8-in-exchange-online
    KnownReply("bad-outbound-sender", "exchange", (550,), r"5\.1\.8",
               r"bad outbound sender",
               "the mailbox is on Microsoft's restricted senders list",
               Decision.HOLD_ACCOUNT, Hold.BLOCKED, _RESTRICTED_FIX),
    # "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.
    # For more information please go to http://go.microsoft.com/fwlink/?LinkId=526653
    # AS(7230) [...prod.outlook.com ...]" (as seen in real NDRs)
    # https://learn.microsoft.com/exchange/troubleshoot/email-delivery/ndr/fix-error-code-5-7-700-through-5-7-750
    KnownReply("tenant-blocked", "exchange", (550,), r"5\.7\.7[0-4]\d|5\.7\.750",
               None,
               "the tenant is blocked from sending (Microsoft's 5.7.700-5.7.750 tenant "
               "blocks: a new or suspicious tenant, or a bad IP reputation)",
               Decision.HOLD_ACCOUNT, Hold.BLOCKED,
               "Microsoft blocks the tenant of {user} from sending.  Open a service "
               "request in the Microsoft 365 admin center (Support > Help & support > "
               "New service request, quoting the NDR code) to have the tenant unblocked; "
               "for a new tenant, add a verified domain and licensed mailboxes first.  "
               "xrelay keeps the mail queued and probes one message per probe interval."),
    # "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for
    # the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."
    # https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission
    KnownReply("smtp-auth-tenant", "exchange", (535,), r"5\.7\.139",
               r"SmtpClientAuthentication is disabled for the Tenant",
               "SMTP AUTH is disabled for the whole tenant",
               Decision.HOLD_ACCOUNT, Hold.SMTP_AUTH_DISABLED,
               "SMTP AUTH is turned off for the whole tenant of {user}.  In Exchange "
               "Online PowerShell: Set-TransportConfig -SmtpClientAuthenticationDisabled "
               "$false (or Exchange admin center > Settings > Mail flow: clear \"Turn off "
               "SMTP AUTH protocol for your organization\"), or enable it for this "
               "mailbox alone: Set-CASMailbox -Identity {user} "
               "-SmtpClientAuthenticationDisabled $false.  The token is fine and is "
               "kept; xrelay probes one message per probe interval and resumes by itself.",
               keeps_token=True),
    # "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for
    # the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information."
    # https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission
    KnownReply("smtp-auth-mailbox", "exchange", (535,), r"5\.7\.139",
               r"SmtpClientAuthentication is disabled for the Mailbox",
               "SMTP AUTH is disabled for this mailbox",
               Decision.HOLD_ACCOUNT, Hold.SMTP_AUTH_DISABLED, _SMTP_AUTH_FIX,
               keeps_token=True),
    # "535 5.7.139 Authentication unsuccessful, user is locked by your organization's
    # security defaults policy. Contact your administrator."
    # https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission
    # https://learn.microsoft.com/entra/fundamentals/security-defaults
    KnownReply("smtp-auth-security-defaults", "exchange", (535,), r"5\.7\.139",
               r"security defaults",
               "Microsoft Entra security defaults block SMTP AUTH for the tenant",
               Decision.HOLD_ACCOUNT, Hold.SMTP_AUTH_DISABLED,
               "Microsoft Entra security defaults block SMTP AUTH for {user}.  In the "
               "Microsoft Entra admin center go to Identity > Overview > Properties > "
               "Manage security defaults and set them to Disabled (replace them with "
               "Conditional Access policies), then enable SMTP AUTH for the mailbox: "
               "Set-CASMailbox -Identity {user} -SmtpClientAuthenticationDisabled $false.  "
               "The token is kept; xrelay probes one message per probe interval.",
               keeps_token=True),
    # "535 5.7.139 Authentication unsuccessful, the request did not meet the criteria to
    # be authenticated successfully. Contact your administrator." (a Conditional Access
    # policy, e.g. one blocking "other clients", refused the sign-in)
    # https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission
    # https://learn.microsoft.com/entra/identity/conditional-access/policy-block-legacy-authentication
    KnownReply("smtp-auth-conditional-access", "exchange", (535,), r"5\.7\.139",
               r"did not meet the criteria",
               "a Conditional Access policy refuses this sign-in",
               Decision.HOLD_ACCOUNT, Hold.SMTP_AUTH_DISABLED,
               "A Conditional Access policy refuses SMTP sign-ins of {user} (\"did not "
               "meet the criteria\").  In the Microsoft Entra admin center > Protection "
               "> Conditional Access, find the policy in the user's sign-in logs (Users "
               "> {user} > Sign-in logs > Conditional Access tab) and exclude {user} (or "
               "app {client_id}) from it, e.g. from a \"Block legacy authentication\" "
               "policy that covers other clients.  The token is kept; xrelay probes one "
               "message per probe interval.",
               keeps_token=True),
    # "535 5.7.139 Authentication unsuccessful, the user account is locked/disabled"
    # (the account itself is blocked from signing in, or locked by smart lockout)
    # https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission
    # https://learn.microsoft.com/entra/identity/authentication/howto-password-smart-lockout
    KnownReply("smtp-auth-account-locked", "exchange", (535,), r"5\.7\.139",
               r"account (?:is )?(?:locked|disabled|blocked)|locked out|user is locked\b"
               r"(?! by your organization's security defaults)",
               "the mailbox's user account is locked or blocked from signing in",
               Decision.HOLD_ACCOUNT, Hold.SMTP_AUTH_DISABLED,
               "The user account {user} is locked or blocked from signing in.  In the "
               "Microsoft 365 admin center > Users > Active users > {user}, unblock "
               "sign-in (Block sign-in: off) and reset its password if it was locked "
               "by smart lockout; check the Entra sign-in logs for who locked it.  The "
               "token is kept; xrelay probes one message per probe interval.",
               keeps_token=True),
    # Any other "535 5.7.139 Authentication unsuccessful, ..." (e.g. "the request did not
    # meet the criteria to be authenticated successfully"): SMTP AUTH is off somewhere.
    # https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission
    KnownReply("smtp-auth-disabled", "exchange", (535,), r"5\.7\.139", None,
               "SMTP AUTH is not allowed for this mailbox or tenant",
               Decision.HOLD_ACCOUNT, Hold.SMTP_AUTH_DISABLED, _SMTP_AUTH_FIX,
               keeps_token=True),
    # "535 5.7.3 Authentication unsuccessful" after a fresh token, app-only: the app's
    # service principal is not registered in Exchange or has no permission on the mailbox.
    # https://learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
    KnownReply("app-not-authorised", "exchange", (535,), r"5\.7\.3", None,
               "the app's service principal is not registered in Exchange Online or has "
               "no permission on the mailbox",
               Decision.HOLD_ACCOUNT, Hold.APP_NOT_AUTHORISED,
               "Exchange Online does not let app {client_id} send as {user}.  In Exchange "
               "Online PowerShell register the app's service principal and grant it the "
               "mailbox: New-ServicePrincipal -AppId {client_id} -ObjectId <object id of "
               "the enterprise application, not of the app registration>; then "
               "Add-MailboxPermission -Identity {user} -User <that service principal's "
               "id> -AccessRights FullAccess.  Also check that the app has the "
               "SMTP.SendAsApp permission with admin consent and that SMTP AUTH is on "
               "for the mailbox (Set-CASMailbox -Identity {user} "
               "-SmtpClientAuthenticationDisabled $false).  xrelay probes one message "
               "per probe interval and resumes by itself.",
               app_only=True),
    # "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
    # https://learn.microsoft.com/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365
    KnownReply("send-as-5.7.60", "exchange", (550,), r"5\.7\.60", None,
               "the mailbox has no Send As permission for this sender",
               Decision.HOLD_SENDER, None, _SEND_AS_FIX),
    # "554 5.2.252 SendAsDenied; <mailbox> not allowed to send as <sender>;
    # STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; ..."
    # (Graph: HTTP 403 ErrorSendAsDenied, reported by xrelay's Graph transport as 5.2.252)
    # https://learn.microsoft.com/exchange/troubleshoot/email-delivery/ndr/fix-error-code-5-2-252
    KnownReply("send-as-denied", "exchange", (554, 550), r"5\.2\.252", None,
               "the mailbox has no Send As permission for this sender",
               Decision.HOLD_SENDER, None, _SEND_AS_FIX),
    # The same refusal when the enhanced code is missing or different ("SendAsDenied" in
    # the text, as Exchange and xrelay's Graph transport write it).
    # https://learn.microsoft.com/exchange/troubleshoot/email-delivery/ndr/fix-error-code-5-2-252
    KnownReply("send-as-denied-text", "exchange", (554, 550), None, r"SendAsDenied",
               "the mailbox has no Send As permission for this sender",
               Decision.HOLD_SENDER, None, _SEND_AS_FIX),
    # "550 5.7.520 Access denied, Your organization does not allow external forwarding.
    # Please contact your administrator for further assistance. AS(7555)"
    # https://learn.microsoft.com/defender-office-365/outbound-spam-policies-external-email-forwarding
    KnownReply("external-forwarding", "exchange", (550,), r"5\.7\.520", None,
               "the outbound spam policy forbids automatic forwarding to outside "
               "recipients",
               Decision.BOUNCE_RECIPIENT, None,
               "The tenant's outbound spam filter policy blocks automatic forwarding to "
               "external recipients.  If this relay's mail is meant to go out, set "
               "Automatic forwarding rules to On for {user} in the Microsoft Defender "
               "portal > Email & collaboration > Policies & rules > Threat policies > "
               "Anti-spam > Outbound policy."),
    # "550 5.7.233 Your message can't be sent because your tenant exceeded its daily limit
    # for sending email to external recipients" (tenant external recipient rate limit;
    # matched on the code only: this wording is from a third-party EOP stand-in, not
    # from a Microsoft page)
    # https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits#sending-limits
    KnownReply("tenant-external-recipient-limit", "exchange", (550,), r"5\.7\.233", None,
               "the tenant reached its daily limit of external recipients",
               Decision.HOLD_ACCOUNT, Hold.DAILY_LIMIT,
               "The tenant of {user} reached its external recipient rate limit for the "
               "last 24 hours (Exchange Online sending limits).  Nothing to do but wait "
               "(or spread bulk mail over more days); xrelay holds the account until the "
               "rolling day allows it and resumes by itself."),
    # "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; ..."
    # https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits#sending-limits
    KnownReply("submission-quota", "exchange", (554, 550, 452, 451), None,
               r"SubmissionQuotaExceeded",
               "the mailbox exceeded its recipient rate limit (10,000 recipients a day)",
               Decision.HOLD_ACCOUNT, Hold.DAILY_LIMIT,
               "The mailbox {user} exceeded Exchange Online's recipient rate limit (10,000 "
               "recipients per day).  Lower recipients_per_day on account {account} so "
               "that xrelay stops before the provider does; xrelay holds the account until "
               "the rolling day allows it."),
    # "452 4.3.1 Insufficient system resources" (RFC 5321 452; Exchange: transient)
    # https://learn.microsoft.com/exchange/mail-flow/non-delivery-reports-and-bounce-messages/non-delivery-reports-and-bounce-messages
    KnownReply("insufficient-resources", "exchange", (452,), r"4\.3\.1", None,
               "the upstream is temporarily short of resources",
               Decision.RETRY_MESSAGE, None,
               "A temporary problem at the provider; nothing to do, the message is retried."),
    # "451 4.7.500 Server busy. Please try again later from [192.0.2.2]. (AS761)"
    # (4.7.500-4.7.699; wording as logged from Exchange Online Protection)
    # https://learn.microsoft.com/exchange/troubleshoot/email-delivery/ndr/fix-error-code-451-4-7-500-699-asxxx
    KnownReply("server-busy", "exchange", (451,), r"4\.7\.(5\d\d|6\d\d)", None,
               "Exchange Online defers this message (server busy, IP or tenant "
               "reputation); other messages may well go through",
               Decision.RETRY_MESSAGE, None,
               "A temporary refusal by Exchange Online; the message is retried with "
               "back-off.  If it lasts for hours, check the tenant's sending reputation "
               "in the Microsoft Defender portal (Email & collaboration > Review > "
               "Restricted entities)."),
    # "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
    # https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits
    KnownReply("thread-limit", "exchange", (432,), r"4\.3\.2", None,
               "more concurrent connections for this mailbox than Exchange allows (3)",
               Decision.HOLD_ACCOUNT, Hold.THROTTLED,
               "Exchange Online allows 3 concurrent connections per mailbox; set "
               "max_connections = 3 (or fewer) on account {account} and make sure no "
               "other program sends as {user}.  xrelay waits and resumes by itself."),
    # "421 4.4.2 Message submission rate for this client has exceeded the configured limit"
    # https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission
    KnownReply("submission-rate", "exchange", (421,), r"4\.4\.2", r"submission rate",
               "more than 30 messages a minute for this mailbox",
               Decision.HOLD_ACCOUNT, Hold.THROTTLED,
               "Exchange Online accepts 30 messages a minute per mailbox; keep "
               "messages_per_minute = 30 (or lower) on account {account}.  xrelay waits "
               "and resumes by itself."),
    # "552 5.3.4 Message size exceeds fixed maximum message size"
    # Gmail: "552-5.3.4 Your message exceeded Google's message size limits. ..."
    # https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits#message-limits
    # https://support.google.com/a/answer/3726730
    KnownReply("too-big", "any", (552,), r"5\.3\.4|5\.2\.3", None,
               "the message is larger than the provider accepts",
               Decision.BOUNCE_RECIPIENT, None,
               "The message is larger than the provider accepts (Exchange Online: 35 MB by "
               "default, up to 150 MB; Gmail: 25 MB).  Ask the sender to send it smaller, "
               "or raise the mailbox's MaxSendSize: Set-Mailbox -Identity {user} "
               "-MaxSendSize 150MB."),
    # Gmail "452-4.2.2 The recipient's inbox is out of storage space. Please direct the
    # recipient to https://support.google.com/mail/?p=OverQuotaTemp" (for now)
    # https://support.google.com/a/answer/3726730
    KnownReply("recipient-over-quota", "gmail", (452, 450, 552), r"4\.2\.2", None,
               "the recipient's mailbox is full for now",
               Decision.RETRY_MESSAGE, None,
               "The recipient's mailbox is full; the message is retried until max_age "
               "(the recipient must make room)."),
    # Gmail "552-5.2.2 The recipient's inbox is out of storage space and inactive. ..."
    # and "552-5.2.2 The email account that you tried to reach is over quota.": permanent
    # https://support.google.com/a/answer/3726730
    KnownReply("recipient-over-quota-permanent", "gmail", (552, 550), r"5\.2\.2", None,
               "the recipient's mailbox is full and inactive",
               Decision.BOUNCE_RECIPIENT, None,
               "The recipient's mailbox is full (and, at Gmail, inactive): the message "
               "bounces; the recipient must make room before mail can reach them."),
    # Gmail "550-5.4.5 Daily user sending limit exceeded. For more information on
    # Gmail's sending limits, go to https://support.google.com/a/answer/166852"
    # https://support.google.com/a/answer/3726730
    KnownReply("gmail-daily-limit", "gmail", (550,), r"5\.4\.5", None,
               "the Gmail account reached its daily sending limit (a rolling 24 hours)",
               Decision.HOLD_ACCOUNT, Hold.DAILY_LIMIT,
               "The Gmail account {user} reached its daily sending limit (Google "
               "Workspace: 2,000 recipients in a rolling 24 hours).  Set "
               "recipients_per_day on account {account} below Google's limit so xrelay "
               "stops first; it holds the account until the rolling day allows it."),
    # Gmail "535-5.7.8 Username and Password not accepted. For more information, go to
    # https://support.google.com/mail/?p=BadCredentials"
    # https://support.google.com/a/answer/3726730
    KnownReply("gmail-bad-credentials", "gmail", (535,), r"5\.7\.8", None,
               "Gmail refused the OAuth token",
               Decision.HOLD_ACCOUNT, None,
               "Gmail refused the token of {user} even after a refresh: check that the "
               "OAuth client may use the https://mail.google.com/ scope and that the "
               "user is allowed IMAP/SMTP (Admin console > Apps > Google Workspace > "
               "Gmail > End User Access); sign in again with `xrelay login {account}` "
               "or on the admin page."),
    # Gmail "534-5.7.9 Application-specific password required. Learn more at
    # https://support.google.com/mail/?p=InvalidSecondFactor"
    # https://support.google.com/a/answer/3726730
    KnownReply("gmail-app-password", "gmail", (534,), r"5\.7\.9", None,
               "Gmail wants an app password: password sign-in is refused (2-Step "
               "Verification)",
               Decision.HOLD_ACCOUNT, Hold.SMTP_AUTH_DISABLED,
               "Gmail refused password sign-in for {user}.  xrelay signs in with OAuth: "
               "use provider = \"google\" with a refresh token (`xrelay login "
               "{account}` or the admin page), and allow the OAuth client in the Admin "
               "console > Security > Access and data control > API controls."),
    # Gmail "454 4.7.0 Too many login attempts, please try again later." and
    # "454 4.7.0 Cannot authenticate due to a temporary system problem. Try again later."
    # https://support.google.com/a/answer/3726730
    KnownReply("gmail-auth-temporary", "gmail", (454,), r"4\.7\.0", None,
               "Gmail refuses sign-ins for a while (too many, or a temporary problem)",
               Decision.HOLD_ACCOUNT, Hold.THROTTLED, _THROTTLED_FIX),
    # Gmail "421-4.7.0 Try again later, closing connection." (and the IP-rate variants)
    # https://support.google.com/a/answer/3726730
    KnownReply("gmail-try-later", "gmail", (421,), r"4\.7\.0", None,
               "Gmail asks to come back later",
               Decision.HOLD_ACCOUNT, Hold.THROTTLED, _THROTTLED_FIX),
    # Microsoft Graph HTTP 404 MailboxNotEnabledForRESTAPI "The mailbox is either
    # inactive, soft-deleted, or is hosted on-premise." / "REST API is not yet supported
    # for this mailbox." (no Exchange Online licence, or an on-premises mailbox)
    # https://github.com/MicrosoftDocs/OfficeDocs-Support/pull/1036 (Microsoft's
    # article "REST API is not yet supported for this mailbox"; licence needed:
    # https://github.com/microsoftgraph/microsoft-graph-docs-contrib/issues/717)
    # https://learn.microsoft.com/graph/hybrid-rest-support
    KnownReply("graph-mailbox-not-enabled", "graph", (554, 451), None,
               r"Microsoft Graph: HTTP 404 MailboxNotEnabledForRESTAPI",
               "the mailbox cannot be used through Graph (unlicensed, inactive or "
               "on-premises)",
               Decision.HOLD_ACCOUNT, Hold.MAILBOX_UNAVAILABLE, _GRAPH_MAILBOX_FIX),
    # Graph HTTP 404 ErrorInvalidUser "The requested user '<user>' is invalid." (no
    # such user, no mailbox, or not its primary address)
    # https://learn.microsoft.com/graph/api/user-sendmail
    # https://github.com/microsoftgraph/microsoft-graph-docs/issues/7580
    KnownReply("graph-invalid-user", "graph", (554, 451), None,
               r"Microsoft Graph: HTTP 404 ErrorInvalidUser",
               "Graph does not know the account's user as a mailbox",
               Decision.HOLD_ACCOUNT, Hold.MAILBOX_UNAVAILABLE,
               "Microsoft Graph does not know {user} as a user with a mailbox.  Check "
               "that user on account {account} is the mailbox's primary SMTP address or "
               "user principal name (Get-Mailbox -Identity {user} | Format-List "
               "PrimarySmtpAddress,UserPrincipalName) and that the user has an Exchange "
               "Online licence.  xrelay keeps the mail queued and probes one message per "
               "probe interval."),
    # Graph ErrorQuotaExceeded "Mailbox has exceeded maximum mailbox size." (Exchange's
    # response code, passed through: the sending mailbox is full)
    # https://learn.microsoft.com/exchange/client-developer/web-service-reference/responsecode
    # https://github.com/microsoftgraph/microsoft-graph-docs/issues/2927
    KnownReply("graph-mailbox-full", "graph", (451, 554), None,
               r"Microsoft Graph: HTTP \d+ ErrorQuotaExceeded",
               "the relay's own mailbox is full",
               Decision.HOLD_ACCOUNT, Hold.MAILBOX_FULL, _MAILBOX_FULL_FIX),
    # Graph HTTP 401 InvalidAuthenticationToken for a fresh token too (xrelay's Graph
    # transport: 535 5.7.3 "Graph refused the token twice"): not a stale token
    # https://learn.microsoft.com/graph/resolve-auth-errors
    KnownReply("graph-token-refused", "graph", (535,), None, r"Graph refused the token",
               "Graph refuses the app's tokens",
               Decision.HOLD_ACCOUNT, Hold.APP_NOT_AUTHORISED,
               "Microsoft Graph refuses the tokens of app {client_id} for {user}.  In the "
               "Microsoft Entra admin center > App registrations > the app > API "
               "permissions, add Microsoft Graph > Application permissions > Mail.Send "
               "(delegated: Mail.Send) and Grant admin consent; check that the tenant and "
               "cloud of account {account} are the mailbox's.  xrelay probes one message "
               "per probe interval."),
    # Microsoft Graph sendMail throttling: HTTP 429 "ApplicationThrottled" /
    # "MailboxConcurrency", reported by xrelay's Graph transport as 451 4.7.0.
    # https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits
    KnownReply("graph-throttled", "graph", (451,), r"4\.7\.0",
               r"Microsoft Graph: HTTP (429|503)",
               "Microsoft Graph throttles this mailbox or app",
               Decision.HOLD_ACCOUNT, Hold.THROTTLED, _THROTTLED_FIX),
    # Microsoft Graph HTTP 403 ErrorAccessDenied "Access is denied. Check credentials and
    # try again." (an application access policy excludes the mailbox, or no Mail.Send)
    # https://learn.microsoft.com/graph/auth-limit-mailbox-access
    KnownReply("graph-access-denied", "graph", (451,), r"4\.7\.0",
               r"Microsoft Graph: HTTP 403",
               "the app may not send as this mailbox through Graph",
               Decision.HOLD_ACCOUNT, Hold.APP_NOT_AUTHORISED,
               "Microsoft Graph denies app {client_id} access to {user}: grant the "
               "application permission Mail.Send with admin consent (and Mail.ReadWrite "
               "when account {account} has graph_large_messages = \"upload_session\": "
               "drafts and upload sessions need it), and if an application access "
               "policy limits the app, add {user} to its group "
               "(Test-ApplicationAccessPolicy -Identity {user} -AppId {client_id})."),
    # Any other Exchange/Gmail/Graph "throttled" wording, kept from the old rules.
    KnownReply("throttled-text", "any", tuple(range(400, 500)), None,
               r"\brate\b|too many (?:connections|messages|sessions|concurrent)|"
               r"try again later|throttl|limit exceeded|exceeded the|server busy|"
               r"thread limit",
               "the provider asks to slow down",
               Decision.HOLD_ACCOUNT, Hold.THROTTLED, _THROTTLED_FIX),
)


def recognise(reply: Reply, app_only: bool | None = None,
              table: Iterable[KnownReply] = KNOWN_REPLIES) -> KnownReply | None:
    """The first row that matches C{reply}, or C{None} for a reply xrelay does not know."""
    for row in table:
        if row.matches(reply, app_only):
            return row
    return None


def decision_of(reply: Reply, app_only: bool | None = None) -> Decision:
    """What to do: the table's decision, else what the reply code says."""
    row = recognise(reply, app_only)
    if row is not None:
        return row.decision
    if 200 <= reply.code < 300:
        return Decision.DELIVER
    if 500 <= reply.code < 600:
        return Decision.BOUNCE_RECIPIENT
    return Decision.RETRY_MESSAGE
