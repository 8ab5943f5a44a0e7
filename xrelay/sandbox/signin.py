"""
The HTML pages a person (or headless Chromium in a test) uses on the sandbox identity
platform: the C{/authorize} sign-in page and the C{/devicelogin} page.

Plain forms with stable element ids (C{username}, C{password}, C{accept}, C{cancel},
C{user_code}) so automation can drive them; every value shown is HTML-escaped.  The pages
must never echo a password or show a code other than the one the person typed.
"""

from __future__ import annotations

from html import escape

_STYLE = "body{font-family:sans-serif;max-width:28em;margin:3em auto}label,input{display:block;margin:.3em 0}.error{color:#a00}"


def _page(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>\n"
    ).encode("utf-8")


def _error(message: str | None) -> str:
    return f'<p class="error" id="error">{escape(message)}</p>' if message else ""


def sign_in_page(action: str, fields: dict[str, str], app_name: str, login_hint: str = "", error: str | None = None,
                 title: str = "Sign in to your account") -> bytes:
    """
    The authorize page (Microsoft's, or Google's with C{title="Sign in with Google"}):
    the original request rides along in hidden fields.
    """
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in sorted(fields.items())
    )
    return _page(
        title,
        f"<p>{escape(app_name)} wants to send mail as you.</p>{_error(error)}"
        f'<form method="post" action="{escape(action)}" id="signin">{hidden}'
        f'<label for="username">Email or phone</label><input id="username" name="login" type="email" value="{escape(login_hint)}" autocomplete="username">'
        '<label for="password">Password</label><input id="password" name="passwd" type="password" autocomplete="current-password">'
        '<button id="accept" name="action" value="accept" type="submit">Accept</button>'
        '<button id="cancel" name="action" value="cancel" type="submit">Cancel</button></form>',
    )


def error_page(message: str) -> bytes:
    return _page("Sorry, but we're having trouble signing you in.", _error(message))


def google_error_page(status: int, error: str, description: str) -> bytes:
    """Google's page for a request it will not redirect back: C{Error 400: redirect_uri_mismatch}."""
    return _page("Access blocked: This app's request is invalid",
                 f'<p class="error" id="error">Error {status}: {escape(error)}</p><p id="details">{escape(description)}</p>')


def device_login_page(action: str, user_code: str = "", error: str | None = None) -> bytes:
    return _page(
        "Enter code",
        f"<p>Enter the code displayed on your app or device.</p>{_error(error)}"
        f'<form method="post" action="{escape(action)}" id="devicelogin">'
        f'<label for="user_code">Code</label><input id="user_code" name="otc" value="{escape(user_code)}">'
        '<label for="username">Email or phone</label><input id="username" name="login" type="email" autocomplete="username">'
        '<label for="password">Password</label><input id="password" name="passwd" type="password" autocomplete="current-password">'
        '<button id="accept" name="action" value="accept" type="submit">Accept</button>'
        '<button id="cancel" name="action" value="cancel" type="submit">Cancel</button></form>',
    )


def device_declined_page() -> bytes:
    return _page("Sign-in declined", '<p id="declined">You declined to sign in to the application on your device. You may now close this window.</p>')


def device_done_page(app_name: str) -> bytes:
    return _page(
        "You're signed in",
        f'<p id="done">You have signed in to the {escape(app_name)} application on your device. You may now close this window.</p>',
    )
