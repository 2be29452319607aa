"""End-to-end fixtures for the web UI: real server processes and Debian's headless Chromium,
driven by Playwright's sync API (plain tests, no event loop of ours to clash with).

The browser is Debian's ``chromium`` package (``/usr/bin/chromium``); Playwright never
downloads one here. Without it, or without the ``playwright`` package, every test of this
folder is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.http.conftest import Server, launch_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = pathlib.Path(os.environ.get("CHATSTREAM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = pathlib.Path(__file__).parent / "screenshots"

# Mock replies: "round" answers one short line per turn; "long" streams a long story, so that
# there is time to stop it, or to wait behind it.
FAST = {"mock_params": {"type": "round", "time_per_token_sec": 0.06}}
SLOW = {"mock_params": {"type": "long", "time_per_token_sec": 0.05}}


def start_web_server(
    loop: str,
    options: dict[str, Any],
    web_ui: dict[str, Any] | None = None,
    factory: str = "tests.web.apps:web_app",
    prefix: str = "",
) -> Server:
    """``python -m chatstream.server`` serving an app of ``tests.web.apps``, as the HTTP tests
    start theirs; returns once ``{prefix}/health`` answers."""
    env = {
        "CHATSTREAM_TEST_OPTIONS": json.dumps(options),
        "CHATSTREAM_TEST_WEB_UI": json.dumps(web_ui or {}),
    }
    return launch_server(
        factory=factory, loop=loop, env=env, drain_timeout=2, health_path=f"{prefix}/health"
    )


def wait_idle(server: Server, timeout: float = 10.0) -> None:
    """Wait until the server runs and queues nothing (stopped streams are cancelled)."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(f"{server.base_url}/health", timeout=5).json()
        if health["running"] == 0 and health["waiting"] == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the server is still busy: {health}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def asyncio_server() -> Iterator[Server]:
    """Short replies under uvicorn; the page's language follows the browser."""
    server = start_web_server("asyncio", FAST, {"title": "chatstream demo"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trio_server() -> Iterator[Server]:
    """Short replies under hypercorn/trio; the init params force a Japanese page."""
    server = start_web_server("trio", FAST, {"lang": "ja", "title": "チャット"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def busy_server() -> Iterator[Server]:
    """Long replies, one slot and one place in the queue, and a real 429 when both are taken."""
    options = {
        **SLOW,
        "num_of_concurrent_executions": 1,
        "max_queue_size": 1,
        "too_many_request_as_http_error": True,
    }
    server = start_web_server("trio", options, {"title": "chatstream (busy)"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mounted_server() -> Iterator[Server]:
    """The app mounted under ``/chat`` of another app (the page at ``/chat/``)."""
    server = start_web_server("asyncio", FAST, factory="tests.web.apps:mounted_app", prefix="/chat")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


PageFactory = Callable[..., "Page"]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[PageFactory]:
    """``open_page(server, path="/", **context_options)``: a page of the UI in a fresh browser
    context (so a fresh session cookie), loaded and with its history shown. Uncaught script
    errors fail the test."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def open_(server: Server, path: str = "/", **context_options: Any) -> Page:
        context_options.setdefault("viewport", {"width": 1280, "height": 800})
        context_options.setdefault("locale", "en-US")
        context = browser.new_context(base_url=server.base_url, **context_options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(path)
        page.wait_for_selector("body[data-history]", state="attached")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="session")
def screenshot_dirs() -> list[pathlib.Path]:
    dirs = [SCREENSHOTS]
    extra = os.environ.get("CHATSTREAM_SCREENSHOT_DIR")
    if extra:
        dirs.append(pathlib.Path(extra))
    for folder in dirs:
        folder.mkdir(parents=True, exist_ok=True)
    return dirs


@pytest.fixture
def screenshot(screenshot_dirs: list[pathlib.Path]) -> Callable[[Page, str], pathlib.Path]:
    """``screenshot(page, name)``: save ``name.png`` in tests/web/screenshots/ and in
    ``$CHATSTREAM_SCREENSHOT_DIR`` when set; returns the first path."""

    def take(page: Page, name: str) -> pathlib.Path:
        first = screenshot_dirs[0] / f"{name}.png"
        page.screenshot(path=first)
        for folder in screenshot_dirs[1:]:
            shutil.copyfile(first, folder / first.name)
        assert first.stat().st_size > 1000
        return first

    return take
