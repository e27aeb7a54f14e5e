"""Browser safety (DESIGN rule 11): the ``Host`` check, the same-origin check, OCPS CORS.

``BrowserGuard`` is a pure ASGI middleware in front of every face:

* **Host.** A request whose ``Host`` names a server jobmill does not know is refused with 400
  before anything else runs: a web page that re-binds its own DNS name to this machine's
  address (DNS rebinding) would otherwise be same-origin with jobmill. Known names are the
  loopback names, the address jobmill listens on, the host of ``JOBMILL_PUBLIC_URL`` and of the
  callback URL jobs use, the machine's own names when listening on every interface, and
  ``JOBMILL_ALLOWED_HOSTS`` (``*`` turns the check off).
* **Origin.** A state-changing request (POST, PUT, PATCH, DELETE) a browser sends from another
  site is refused with 403: ``Sec-Fetch-Site: cross-site`` or ``same-site``, or an ``Origin``
  (``null`` included) that is neither this server as named in ``Host`` nor a configured origin
  (``JOBMILL_ALLOWED_ORIGINS``, the public URL). Requests with neither header (curl, scripts,
  pyvo, the CLI) pass: only browsers send them, and browsers always do.
* **CORS, OCPS face only.** Origins listed in ``JOBMILL_OCPS_CORS_ORIGINS`` get CORS headers,
  preflights and cross-origin posts on the OCPS paths; ``*`` answers every origin with
  ``Access-Control-Allow-Origin: *`` as the OCPS prototype did. Nothing else answers CORS.

Refusals use the JSON error shape (plain text under ``/uws/``, like every UWS error).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from jobmill.config import Settings

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CROSS_SITE = frozenset({"cross-site", "same-site"})
LOOPBACK_NAMES = frozenset({"localhost"})
WILDCARD_BIND = frozenset({"0.0.0.0", "::", ""})
DEFAULT_PORTS = {"http": 80, "https": 443}
HOST_STATUS = 400
"""A foreign ``Host`` is a bad request (as Django and Starlette answer it); 421 would invite
HTTP/2 clients to retry on another connection, which cannot help here."""
ORIGIN_STATUS = 403

CORS_ALLOW_HEADERS = "Origin, X-Requested-With, Content-Type, Accept, Authorization"
CORS_ALLOW_METHODS = "POST, PUT, DELETE, OPTIONS, GET"
CORS_MAX_AGE = "600"

_NAME = re.compile(r"^[a-z0-9_.-]+$")
_PORT = re.compile(r"^[0-9]{1,5}$")

Origin = tuple[str, str, int]
"""``(scheme, host name, port)``, the port made explicit from the scheme's default."""


def split_host(value: str) -> tuple[str, int | None] | None:
    """The name and port of a ``Host`` value (``name``, ``name:port``, ``[v6]:port``).

    The name is lower case, without a trailing dot, an IPv6 address without brackets. None
    when the value is not a host.
    """
    value = value.strip().lower()
    port = ""
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else ""
        if not _ipv6(name):
            return None
        name = str(ipaddress.IPv6Address(name))
    elif value.count(":") > 1:  # a bare IPv6 address (not valid in Host, but unambiguous)
        name = value
        if not _ipv6(name):
            return None
        name = str(ipaddress.IPv6Address(name))
    else:
        name, colon, port = value.partition(":")
        if colon and not port:
            return None
        name = name.rstrip(".")
        if not _NAME.match(name):
            return None
    if port and (not _PORT.match(port) or int(port) > 65535):
        return None
    return name, int(port) if port else None


def _ipv6(name: str) -> bool:
    try:
        ipaddress.IPv6Address(name)
    except ValueError:
        return False
    return True


def is_loopback(name: str) -> bool:
    """``localhost``, ``::1`` or an address in 127.0.0.0/8 (also IPv4-mapped)."""
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` as an ``Origin``; None for ``null`` or anything else."""
    value = value.strip().lower()
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or "@" in parts.netloc or not parts.hostname:
        return None
    host = split_host(parts.netloc)
    if host is None:
        return None
    return parts.scheme, host[0], port if port is not None else DEFAULT_PORTS[parts.scheme]


def _origins(entries: Iterable[str], setting: str) -> frozenset[Origin]:
    found = set()
    for entry in entries:
        origin = parse_origin(entry)
        if origin is None:
            raise ValueError(f"{setting}: '{entry}' is not an origin (scheme://host[:port])")
        found.add(origin)
    return frozenset(found)


def ocps_prefix(basepath: str) -> str:
    """The OCPS routes' prefix, as ``api.ocps.make_router`` computes it."""
    return "/" + basepath.strip("/") if basepath.strip("/") else ""


@dataclass(frozen=True)
class BrowserPolicy:
    """What ``BrowserGuard`` lets through, computed once from the settings."""

    hosts: frozenset[str]
    domains: tuple[str, ...]  # ".example.org" for an allowed "*.example.org"
    any_host: bool
    origins: frozenset[Origin]
    cors_origins: frozenset[Origin]
    cors_any: bool
    ocps: str  # the OCPS prefix

    @classmethod
    def from_settings(cls, settings: Settings) -> BrowserPolicy:
        hosts: set[str] = set()
        domains: list[str] = []
        for entry in settings.allowed_hosts:
            entry = entry.strip().lower()
            if entry.startswith(("*.", ".")):  # the subdomains of a domain
                domain = split_host(entry.lstrip("*."))
                if domain is None:
                    raise ValueError(f"allowed_hosts: '{entry}' is not a domain")
                domains.append("." + domain[0])
            elif entry != "*":
                host = split_host(entry)
                if host is None:
                    raise ValueError(f"allowed_hosts: '{entry}' is not a host name")
                hosts.add(host[0])
        own = [settings.host, settings.callback_url, settings.public_url or ""]
        if settings.host.strip("[]") in WILDCARD_BIND:  # every interface: the machine's names
            own += [socket.gethostname(), socket.getfqdn()]
        for value in own:
            name = _host_name(value)
            if name is not None and name not in WILDCARD_BIND:
                hosts.add(name)
        origins = _origins(settings.allowed_origins, "allowed_origins")
        servers = [settings.callback_url] + ([settings.public_url] if settings.public_url else [])
        own_origins = {parse_origin(_origin_of(url)) for url in servers}
        cors = [o for o in settings.ocps_cors_origins if o.strip() != "*"]
        return cls(
            hosts=frozenset(hosts),
            domains=tuple(domains),
            any_host="*" in (h.strip() for h in settings.allowed_hosts),
            origins=origins | frozenset(o for o in own_origins if o is not None),
            cors_origins=_origins(cors, "ocps_cors_origins"),
            cors_any=len(cors) != len(settings.ocps_cors_origins),
            ocps=ocps_prefix(settings.ocps_basepath),
        )

    def host_allowed(self, name: str) -> bool:
        if self.any_host or name in self.hosts or is_loopback(name):
            return True
        return any(name.endswith(domain) for domain in self.domains)

    def is_ocps(self, path: str) -> bool:
        path = path.rstrip("/")
        base = self.ocps
        return path in (f"{base}/job", f"{base}/monitor/complete") or path.startswith(
            (f"{base}/schema/", f"{base}/job/")  # not the native /jobs: "job/" needs the slash
        )

    def cors_allows(self, origin: str | None) -> bool:
        """Whether the OCPS face answers this ``Origin`` with CORS."""
        if self.cors_any:
            return True
        parsed = parse_origin(origin) if origin is not None else None
        return parsed is not None and parsed in self.cors_origins

    def cross_origin(
        self, origin: str | None, fetch_site: str | None, host: tuple[str, int | None] | None
    ) -> str | None:
        """Why a state-changing request comes from another site; None when it does not."""
        parsed = parse_origin(origin) if origin is not None else None
        if parsed is not None and parsed in self.origins:
            return None
        if fetch_site in CROSS_SITE:
            return f"a {fetch_site} request (Sec-Fetch-Site) may not change anything here"
        if origin is None:
            return None
        if parsed is None:
            return f"a request from Origin '{_shown(origin)}' may not change anything here"
        scheme, name, port = parsed
        if host is not None and name == host[0]:
            own_port = host[1] if host[1] is not None else DEFAULT_PORTS[scheme]
            if port == own_port:
                return None
        return (
            f"a cross-origin request from '{_shown(origin)}' may not change anything here "
            "(JOBMILL_ALLOWED_ORIGINS lists the origins allowed)"
        )


def _host_name(value: str) -> str | None:
    """The host name in a URL or in a bare name or address (``Settings.host``)."""
    if "://" in value:
        value = urlsplit(value).netloc.rpartition("@")[2]
    host = split_host(value)
    return host[0] if host is not None else None


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _shown(value: str) -> str:
    return value if len(value) <= 200 else value[:200] + "..."


class BrowserGuard:
    """Checks ``Host`` and, on state-changing requests, ``Origin``/``Sec-Fetch-Site``; answers
    CORS on the OCPS paths for configured origins. See the module docstring."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.policy = BrowserPolicy.from_settings(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        path: str = scope["path"]
        text = path == "/uws" or path.startswith("/uws/")
        hosts = headers.get("host", [])
        host = split_host(hosts[0]) if hosts else None
        refusal = self.host_problem(hosts, host)
        if refusal is not None:
            await _refuse(scope, send, HOST_STATUS, "bad_request", refusal, "Host", text=text)
            return
        origin = _one(headers, "origin")
        ocps = scope["type"] == "http" and self.policy.is_ocps(path)
        cors = ocps and self.policy.cors_allows(origin)
        method = scope.get("method", "GET")
        problem = None
        if ocps and method == "OPTIONS" and origin is not None:
            if "access-control-request-method" in headers and not cors:
                problem = f"no CORS for Origin '{_shown(origin)}' (JOBMILL_OCPS_CORS_ORIGINS)"
        elif (method in STATE_CHANGING or scope["type"] == "websocket") and not cors:
            problem = self.policy.cross_origin(origin, _one(headers, "sec-fetch-site"), host)
        if problem is not None:
            await _refuse(scope, send, ORIGIN_STATUS, "forbidden", problem, "Origin", text=text)
            return
        if ocps and (self.policy.cors_any or self.policy.cors_origins):
            send = self._with_cors(send, origin if cors else None)
        await self.app(scope, receive, send)

    def host_problem(self, hosts: list[str], host: tuple[str, int | None] | None) -> str | None:
        """Why the ``Host`` header is refused; None when it is fine (or absent: not a browser)."""
        if not hosts:
            return None
        if len(set(hosts)) > 1:
            return "several Host headers"
        if host is None or not self.policy.host_allowed(host[0]):
            return (
                f"unknown Host '{_shown(hosts[0])}' (JOBMILL_ALLOWED_HOSTS lists the names this "
                "server answers to)"
            )
        return None

    def _with_cors(self, send: Send, origin: str | None) -> Send:
        """Adds the CORS headers (for ``origin``; all answers when ``*``) to the answer."""
        added = [(b"vary", b"Origin")] if not self.policy.cors_any else []
        if self.policy.cors_any or origin is not None:
            allowed = "*" if self.policy.cors_any else origin
            added += [
                (b"access-control-allow-origin", str(allowed).encode("latin-1")),
                (b"access-control-allow-headers", CORS_ALLOW_HEADERS.encode()),
                (b"access-control-allow-methods", CORS_ALLOW_METHODS.encode()),
                (b"access-control-max-age", CORS_MAX_AGE.encode()),
            ]

        async def cors_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *added]
            await send(message)

        return cors_send


def _headers(scope: Scope) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in scope.get("headers", []):
        found.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return found


def _one(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0].strip() if values else None


async def _refuse(
    scope: Scope, send: Send, status: int, code: str, message: str, field: str, *, text: bool
) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    if text:
        body, media = message.encode(), b"text/plain; charset=utf-8"
    else:
        error = {"error": {"code": code, "message": message, "field": field}}
        body, media = json.dumps(error).encode(), b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", media), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
