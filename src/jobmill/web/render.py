"""Templates: one Jinja2 environment over the package's templates, with autoescaping.

Parts of a page that change (a job list row, a job's status, a run grid cell) are macros of
``_parts.html``: a page renders them in place and the live stream (``live.py``) renders the same
macros again and sends a part whose HTML changed. Each part's root element carries
``data-v``, a short hash of its HTML, so the browser skips a part it already shows.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.responses import HTMLResponse

from jobmill import __version__

PHASE_CLASS = {
    "PENDING": "idle",
    "QUEUED": "wait",
    "HELD": "wait",
    "SUSPENDED": "wait",
    "EXECUTING": "run",
    "COMPLETED": "ok",
    "ERROR": "bad",
    "ABORTED": "bad",
    "UNKNOWN": "idle",
    "ARCHIVED": "idle",
}
ARP_COLOURS = {"green", "red", "yellow", "orange", "blue", "gray", "grey", "black"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chromium post Origin: null
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def when(value: Any) -> str:
    """A stored time as a page shows it: ``2026-12-06 22:31:14`` (UTC)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = value.astimezone(UTC) if value.tzinfo else value
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("T", " ").rstrip("Z").split(".")[0]


def counter(value: Any) -> tuple[str, str]:
    """An ARP counter's value and colour class (``[value, "red"]`` or a bare value)."""
    if isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[1], str):
        colour = value[1].strip().lower()
        return _text(value[0]), colour if colour in ARP_COLOURS else ""
    return _text(value), ""


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def dom_key(text: str) -> str:
    """A DOM id piece for any name (definitions may hold characters an id should not)."""
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def version_of(html: str) -> str:
    return hashlib.sha256(html.encode()).hexdigest()[:12]


def stamp(html: str) -> Markup:
    """The part's HTML with its version in its root's ``data-v=""``."""
    return Markup(html.replace(' data-v=""', f' data-v="{version_of(html)}"', 1))  # noqa: S704


env = Environment(
    loader=PackageLoader("jobmill.web", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.globals.update(
    version=__version__,
    phase_class=PHASE_CLASS,
    when=when,
    counter=counter,
    dom_key=dom_key,
    num=_text,
)


def part(name: str, *args: Any) -> Markup:
    """One macro of ``_parts.html``, rendered and stamped."""
    macro = getattr(env.get_template("_parts.html").module, name)
    return stamp(str(macro(*args)))


env.globals["part"] = part


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
