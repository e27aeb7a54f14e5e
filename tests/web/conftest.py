"""A real Chromium driven by Playwright against a real jobmill server (the ``live`` fixture).

The browser is the system's Chromium (``/usr/bin/chromium``, or ``JOBMILL_CHROMIUM``), never
one Playwright downloads. Without it the browser tests skip, naming Chromium; in CI
(``CI=true``) they fail. Each test saves a screenshot under ``test-artifacts/screenshots``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, LiveServer, require_service

CHROMIUM = os.environ.get("JOBMILL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the session."""
    require_service(Path(CHROMIUM).is_file(), f"Chromium ({CHROMIUM}; scripts/services)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the dev extras pin it
        require_service(False, "Playwright for Python (pip install -e '.[dev]')")
        raise
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


class Recorder:
    """Every URL the page asked for."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, request: Any) -> None:
        self.urls.append(request.url)


@pytest.fixture
def browser_page(
    chromium: Any, live: LiveServer, request: pytest.FixtureRequest
) -> Iterator[tuple[Any, Recorder]]:
    """A fresh browser context on the live server (no cookies), its requests recorded; a
    screenshot of the page as the test left it is saved, passed or failed."""
    context = chromium.new_context(base_url=live.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    recorder = Recorder()
    page.on("request", recorder)
    try:
        yield page, recorder
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = request.node.name.replace("[", "-").replace("]", "")
        try:
            page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        finally:
            context.close()


HIDE_TEXT = """([from, to]) => {
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) {
    walk.currentNode.nodeValue = walk.currentNode.nodeValue.split(from).join(to);
  }
}"""


def shot(page: Any, name: str, hide: dict[str, str] | None = None) -> None:
    """A screenshot of the page now (docs/web.md shows some of them); ``hide`` replaces text
    in the picture only (a test's temporary directory by a neutral path)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old, new in (hide or {}).items():
        page.evaluate(HIDE_TEXT, [old, new])
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, live: LiveServer) -> None:
    """Sign in through the form, with the keyboard (type the token, press Enter)."""
    token = live.headers["Authorization"].removeprefix("Bearer ")
    page.goto("/ui/signin")
    page.get_by_label("Token").fill(token)
    page.get_by_label("Token").press("Enter")
    page.wait_for_url(f"{live.url}/")
