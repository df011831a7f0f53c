"""Who may change what every user of the app shares: the model, the ControlNet, the LoRA.

One engine serves every session, so switching it changes the app for everyone (detaching the
ControlNet ends every live stream). Such changes belong to the person running the app: a request
from this machine itself (not relayed by a proxy or a share link's tunnel, which also connect from
localhost), or from an admin who logged in (``python app.py --auth user:pass``: every account, or
only those named with ``--admin user``). Anonymous remote clients and logged-in users who
are not admins keep their own choices (prompt, seed, style, control type, strength), which travel
with each request and never touch the engine. Training jobs are the operator's too: a job holds the
machine's cores for minutes to hours, so no one else may start, cancel or resume one.
"""

import ipaddress

# headers a reverse proxy or Gradio's share tunnel adds: the request only looks local
FORWARDED = ("x-forwarded-for", "x-forwarded-host", "x-real-ip", "forwarded")


def is_local(request) -> bool:
    """A request made on this machine, directly (a loopback client address and no proxy headers)."""
    client = getattr(request, "client", None)
    host = getattr(client, "host", None) if client is not None else None
    if not host:
        return False
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
    headers = getattr(request, "headers", None) or {}
    return loopback and not any(h in headers for h in FORWARDED)


def may_change_shared(request, admins: frozenset[str] | None = None) -> bool:
    """The operator: a local request, or a logged-in admin (any logged-in user when ``admins`` is
    None). ``None`` (a call from Python, not over HTTP) is the operator too."""
    if request is None or is_local(request):
        return True
    username = getattr(request, "username", None)
    return bool(username) and (admins is None or username in admins)


def refusal(request, action: str, admins: frozenset[str] | None = None) -> str | None:
    """None when ``request`` may ``action`` (e.g. "switch the model"); else the message to show."""
    if may_change_shared(request, admins):
        return None
    if getattr(request, "username", None):
        return (f"Only an admin may {action}: it changes the app for every user, and "
                f"{request.username!r} is not one of this app's admins (--admin).")
    return (f"Only the person running the app may {action}: it changes the app for every user. Open the "
            "app on its own machine (localhost), or log in as an admin (start it with --auth user:pass).")


def parse_auth(values: list[str] | None) -> list[tuple[str, str]] | None:
    """``--auth user:pass`` (repeatable) -> Gradio's ``auth`` list; ValueError names a bad entry."""
    if not values:
        return None
    pairs = []
    for value in values:
        user, sep, password = value.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"--auth: expected user:password, got {value!r}")
        pairs.append((user, password))
    return pairs


def parse_admins(values: list[str] | None, auth: list[tuple[str, str]] | None) -> frozenset[str] | None:
    """``--admin user`` (repeatable) -> the accounts that may change shared state; None (every
    ``--auth`` account) when none is named. ValueError when a name has no ``--auth`` account."""
    if not values:
        return None
    users = {user for user, _ in auth or ()}
    unknown = [v for v in values if v not in users]
    if unknown:
        raise ValueError(f"--admin {unknown[0]!r}: not an account of --auth "
                         f"({', '.join(sorted(users)) or 'none given'})")
    return frozenset(values)
