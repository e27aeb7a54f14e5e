"""The web face: server-rendered pages for people (docs/web.md).

``install`` mounts it on the app: the job list at ``/``, every other page under ``/ui/``, its
static files (CSS, a few lines of plain JavaScript) under ``/ui/static/``, and the OpenAPI
page ``/docs`` (Swagger UI) with assets served by jobmill (from the ``fastapi-offline``
package), so nothing a page loads comes from another server. There is no ``/redoc``: ReDoc
loads its logo from its own CDN.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

from jobmill.web import live, pages, signin
from jobmill.web.session import Sessions

STATIC = Path(str(files("jobmill.web") / "static"))
DOCS_STATIC = "/ui/static/docs"


def _docs_assets() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def install(app: FastAPI) -> Sessions:
    """Mount the web face on ``app`` (built with ``docs_url=None, redoc_url=None``); returns
    its sessions (``jobmill serve`` issues the one-time sign-in link there)."""
    sessions = Sessions(app.state.jobmill.tokens)  # in the database: shared by the processes
    app.state.web_sessions = sessions
    app.state.web_streams = 0
    app.mount(DOCS_STATIC, StaticFiles(directory=_docs_assets()), name="web-docs-static")
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="web-static")
    app.include_router(signin.router)
    app.include_router(live.router)
    app.include_router(pages.router)

    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title="jobmill API",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url="/ui/static/favicon.svg",
            # No badge from the public validator service: nothing leaves the server.
            swagger_ui_parameters={"validatorUrl": None},
        )

    return sessions


def signin_link(app: FastAPI | Sessions, base_url: str, token: str) -> str:
    """A one-time link that signs a browser in with ``token`` (printed by ``jobmill serve``),
    issued through an app's sessions or a ``Sessions`` of the site's database: any process of
    the site redeems it, once."""
    sessions: Sessions = app if isinstance(app, Sessions) else app.state.web_sessions
    return f"{base_url.rstrip('/')}/ui/signin?once={sessions.issue_link(token)}"
