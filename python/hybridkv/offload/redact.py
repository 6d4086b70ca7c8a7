"""Credentials out of everything shown: URLs in messages, logs, reprs and reports.

A Redis URL may carry a password (``redis://user:secret@host``) or credentials in its
query (``?password=secret``). Every place that shows a URL (the outage warning, tier
and config descriptions, ``simulate --json``, error messages) shows
:func:`redact_url`'s form instead: the whole user-info part and every query value
become ``***``. The URL itself is kept only where the client needs it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# scheme://[userinfo@]rest: userinfo is everything up to the last '@' before the path.
_SECRET_NAME = re.compile(r"(?i)pass|secret|token|auth|cred|key")
_URL_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^\s'\"<>]*)")


def _redact_rest(rest: str) -> str:
    authority_end = len(rest)
    for sep in "/?#":
        pos = rest.find(sep)
        if pos != -1:
            authority_end = min(authority_end, pos)
    authority, tail = rest[:authority_end], rest[authority_end:]
    # An '@' in the path or query is no user info; the last '@' of the authority is.
    if "@" in authority:
        authority = f"{MASK}@{authority.rsplit('@', 1)[1]}"
    elif "@" in tail.split("?", 1)[0]:
        # A malformed URL ("redis://host/pa@ss"): hide what precedes the '@' too.
        head, _, after = tail.partition("@")
        tail = f"{MASK}@{after}" if head else tail
    path, q, query = tail.partition("?")
    if q:
        parts = []
        for pair in query.split("&"):
            name, eq, _ = pair.partition("=")
            parts.append(f"{name}={MASK}" if eq else pair)
        tail = f"{path}?{'&'.join(parts)}"
    return authority + tail


def redact_url(url: str) -> str:
    """``url`` with its user info and query values masked (``redis://***@h:6379/0``).

    Anything that is not ``scheme://...`` is masked whole when it holds an ``@`` (it
    might be a mistyped URL with a password in it) and kept otherwise.
    """
    m = _URL_RE.fullmatch(url.strip())
    if m is None:
        return MASK if "@" in url else url
    return m.group(1) + _redact_rest(m.group(2))


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with every URL in it redacted and each of ``secrets`` (and its
    percent-decoded form) replaced by ``***``: for messages that may quote a URL or a
    client error that echoes a password."""
    out = _URL_RE.sub(lambda m: m.group(1) + _redact_rest(m.group(2)), text)
    for secret in secrets:
        for form in {secret, unquote(secret)}:
            if form:
                out = out.replace(form, MASK)
    return out


def url_secrets(url: str) -> tuple[str, ...]:
    """The secret parts of ``url`` (user info, query values), to scrub from messages
    of a client that might quote them."""
    m = _URL_RE.fullmatch(url.strip())
    if m is None:
        return (url,) if "@" in url else ()
    rest = m.group(2)
    out: list[str] = []
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        info = authority.rsplit("@", 1)[0]
        out.append(info)
        out.extend(p for p in info.split(":", 1)[1:] if p)  # the password
    _, q, query = rest.partition("?")
    if q:
        for pair in query.split("&"):
            name, _, value = pair.partition("=")
            if _SECRET_NAME.search(name) and value:
                out.append(value)
    # Strings under 4 characters would garble every message they occur in by chance
    # (and such a password is no secret against a guess anyway).
    return tuple(s for s in dict.fromkeys(out) if len(s) >= 4)
