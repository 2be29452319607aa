"""Replies rendered as markdown, in Chromium: the elements, highlighted code and its copy button,
inert HTML, incremental rendering while a reply streams, and the vendored libraries' routes.

The mock backend's "echo" mode answers the user's message back, so a test types the markdown it
wants the model to write (the user's own message stays plain text).
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable, Iterator
from importlib import resources

import httpx
import pytest

from chatstream.adapters.http.web_ui import VENDOR
from tests.http.conftest import Server

from .conftest import CHROMIUM, PageFactory, start_web_server
from .test_web_ui import last_reply, send, sse, wait_replies

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"
)
pytest.importorskip("playwright.sync_api", reason="the web UI tests need `pip install playwright`")

from playwright.sync_api import Page, Route, expect  # noqa: E402

Screenshot = Callable[[Page, str], pathlib.Path]

REPLY_TEXT = "#messages > .msg.assistant:last-child .text"

CODE = 'def greet(name: str) -> str:\n    """Say hello."""\n    return f"Hello, {name}!"'

SAMPLE = f"""## Shopping list

Buy **bread** and ~~cake~~ at [the shop](https://example.com/shop).

| item | count |
|---|---|
| bread | 2 |
| milk | 1 |

- [x] write the list
- [ ] go shopping

```python
{CODE}
```

Done."""


@pytest.fixture(scope="module")
def echo_server() -> Iterator[Server]:
    """The mock answers each message back, a piece every 20 ms."""
    server = start_web_server(
        "asyncio", {"mock_params": {"type": "echo", "time_per_token_sec": 0.02}}
    )
    yield server
    server.stop()


def source_of(page: Page) -> str:
    return str(page.locator(REPLY_TEXT).get_attribute("data-source"))


def test_a_reply_renders_as_markdown(echo_server: Server, open_page: PageFactory) -> None:
    page = open_page(echo_server)
    send(page, SAMPLE)
    wait_replies(page, 1)
    reply = last_reply(page).locator(".text")
    assert source_of(page) == SAMPLE  # the source is kept as it came
    expect(reply.locator("h2")).to_have_text("Shopping list")
    expect(reply.locator("p strong")).to_have_text("bread")
    expect(reply.locator("p del")).to_have_text("cake")
    link = reply.locator("a")
    expect(link).to_have_text("the shop")
    expect(link).to_have_attribute("href", "https://example.com/shop")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    assert reply.locator("table th").all_text_contents() == ["item", "count"]
    assert reply.locator("table td").all_text_contents() == ["bread", "2", "milk", "1"]
    boxes = reply.locator("li > input[type=checkbox][disabled]")
    expect(boxes).to_have_count(2)
    assert [box.is_checked() for box in boxes.all()] == [True, False]
    code = reply.locator(".code-block pre > code.hljs")
    expect(code).to_have_text(CODE)
    assert code.locator("span.hljs-keyword").count() >= 2  # def, return
    expect(code.locator("span.hljs-string").first).to_be_visible()
    expect(reply.locator(".code-block .code-lang")).to_have_text("python")
    expect(reply.locator("p").last).to_have_text("Done.")
    # The highlighter's colours follow the page's theme.
    keyword = code.locator("span.hljs-keyword").first
    colour = "k => getComputedStyle(k).color"
    before = keyword.evaluate(colour)
    theme = page.locator("html").get_attribute("data-theme")
    page.get_by_role("button", name="Dark mode").click()
    expect(page.locator("html")).not_to_have_attribute("data-theme", str(theme))
    assert keyword.evaluate(colour) != before
    page.get_by_role("button", name="Dark mode").click()
    assert keyword.evaluate(colour) == before
    # What the user typed is shown as typed.
    user = page.locator("#messages > .msg.user .text")
    assert user.text_content() == SAMPLE
    assert user.locator("*").count() == 0
    # From the history after a reload: the same rendering.
    html = reply.inner_html()
    page.reload()
    page.wait_for_selector("body[data-history=loaded]", state="attached")
    expect(last_reply(page).locator("code.hljs")).to_have_count(1)
    assert last_reply(page).locator(".text").inner_html() == html
    assert source_of(page) == SAMPLE


def test_the_copy_button_copies_the_code(echo_server: Server, open_page: PageFactory) -> None:
    page = open_page(echo_server, permissions=["clipboard-read", "clipboard-write"])
    send(page, SAMPLE)
    wait_replies(page, 1)
    button = last_reply(page).get_by_role("button", name="Copy code")
    expect(button).to_have_count(1)
    # By keyboard: it is a button in the tab order.
    assert button.evaluate("b => b.tagName === 'BUTTON' && b.tabIndex === 0")
    button.focus()
    page.keyboard.press("Enter")
    copied = last_reply(page).get_by_role("button", name="Copied")
    expect(copied).to_be_focused()
    assert page.evaluate("navigator.clipboard.readText()") == CODE
    expect(last_reply(page).get_by_role("button", name="Copy code")).to_be_visible()  # back
    # The reply's own copy button copies the whole markdown source.
    last_reply(page).get_by_role("button", name="Copy", exact=True).click()
    assert page.evaluate("navigator.clipboard.readText()") == SAMPLE


def test_html_in_a_reply_stays_inert(echo_server: Server, open_page: PageFactory) -> None:
    page = open_page(echo_server)
    # Block-level HTML, streamed in pieces that cut the tags (the mock's prompt would stop an
    # echo at a line that starts with "<").
    blocks = (
        "<img src=x onerror=\"window.pwned='img'\">\n\n"
        "<script>window.pwned = 'script'</script>\n\n"
        "<div onclick=\"window.pwned='div'\">a div</div>\n"
    )

    def model(route: Route) -> None:
        body = sse(
            ("started", {"message_id": "fake"}),
            *[("delta", {"text": blocks[i : i + 7]}) for i in range(0, len(blocks), 7)],
            ("done", {"message_id": "fake", "finish_reason": "stop", "usage": {}}),
        )
        route.fulfill(status=200, content_type="text/event-stream", body=body)

    page.route("**/chat_stream", model)
    send(page, "blocks, please")
    wait_replies(page, 1)
    reply = last_reply(page).locator(".text")
    assert source_of(page) == blocks
    expect(reply).to_contain_text("<img src=x onerror=")
    expect(reply).to_contain_text("<script>window.pwned = 'script'</script>")
    expect(reply).to_contain_text("<div onclick=\"window.pwned='div'\">a div</div>")
    page.unroute("**/chat_stream")
    # Inline HTML and links, from the server (and its history).
    inline = (
        "Inline <b>bold</b>, <img src=y onerror=\"window.pwned='inline'\"> and "
        "<svg onload=\"window.pwned='svg'\"></svg>; "
        "[click me](javascript:window.pwned='link') and ![pic](https://example.com/pic.png)"
    )
    send(page, inline)
    wait_replies(page, 2)
    reply = last_reply(page).locator(".text")
    assert source_of(page) == inline
    expect(reply).to_contain_text("Inline <b>bold</b>, <img src=y onerror=")
    link = reply.get_by_text("click me")
    assert link.get_attribute("href") is None  # the javascript: URL was dropped
    link.click()
    # An image is a link to it, never loaded.
    picture = reply.get_by_role("link", name="pic")
    expect(picture).to_have_attribute("href", "https://example.com/pic.png")
    expect(picture).to_have_attribute("rel", "noopener noreferrer")
    for selector in ("img", "script", "svg", "b", "div"):
        assert page.locator(f"#messages .text {selector}").count() == 0, selector
    page.reload()
    page.wait_for_selector("body[data-history=loaded]", state="attached")
    expect(last_reply(page).locator(".text")).to_contain_text("Inline <b>bold</b>")
    for selector in ("img", "script", "svg", "b", "div"):
        assert page.locator(f"#messages .text {selector}").count() == 0, selector
    page.wait_for_timeout(200)
    assert page.evaluate("typeof window.pwned") == "undefined"


STREAMED = (
    "The first paragraph is finished early.\n\n"
    "```python\nfor i in range(3):\n    total = i * 2\n"
    "    print(total, 'items', 'are', 'ready')\n```\n\n" + " ".join(f"word{i}" for i in range(40))
)


def test_a_streaming_reply_renders_incrementally(
    echo_server: Server, open_page: PageFactory
) -> None:
    page = open_page(echo_server)
    send(page, STREAMED)
    # The first paragraph is done once the next block has begun: mark its node.
    page.wait_for_function(
        """(selector) => {
            const text = document.querySelector(selector);
            return text && text.children.length >= 2 && text.firstElementChild.tagName === "P";
        }""",
        arg=REPLY_TEXT,
    )
    page.eval_on_selector(f"{REPLY_TEXT} > p", "p => { p.seenEarly = true; }")
    expect(last_reply(page)).to_have_attribute("data-status", "streaming")
    # A code block that is still open is plain text; highlighted once its fence is closed.
    page.wait_for_function(
        """(selector) => {
            const code = document.querySelector(selector + " pre > code");
            return code && !code.classList.contains("hljs") && code.textContent.includes("for");
        }""",
        arg=REPLY_TEXT,
        polling="raf",
    )
    page.wait_for_function(
        """(selector) => {
            const code = document.querySelector(selector + " pre > code");
            return code && code.classList.contains("hljs");
        }""",
        arg=REPLY_TEXT,
        polling="raf",
    )
    expect(last_reply(page)).to_have_attribute("data-status", "streaming")
    page.eval_on_selector(f"{REPLY_TEXT} .code-block", "b => { b.seenEarly = true; }")
    wait_replies(page, 1)
    # The same nodes at the end: the finished blocks were not rendered again.
    assert page.eval_on_selector(f"{REPLY_TEXT} > p", "p => p.seenEarly === true")
    assert page.eval_on_selector(f"{REPLY_TEXT} .code-block", "b => b.seenEarly === true")
    assert source_of(page) == STREAMED
    expect(page.locator(f"{REPLY_TEXT} > p").last).to_have_text(STREAMED.rsplit("\n\n", 1)[1])


def test_a_code_reply_screenshot(
    echo_server: Server, open_page: PageFactory, screenshot: Screenshot
) -> None:
    """docs/web-ui-code.png: a question and a reply with a code block, in the light theme."""
    page = open_page(echo_server, color_scheme="light", viewport={"width": 1000, "height": 780})
    reply = (
        "Read it line by line with a `with` block, so the file is closed even on an error:\n\n"
        "```python\n"
        "from pathlib import Path\n\n"
        "def count_lines(path: Path, word: str) -> int:\n"
        '    """How many lines of the file contain the word."""\n'
        "    count = 0\n"
        '    with path.open(encoding="utf-8") as lines:\n'
        "        for line in lines:\n"
        "            if word in line:\n"
        "                count += 1\n"
        "    return count\n"
        "```\n\n"
        "| argument | meaning |\n|---|---|\n"
        "| `path` | the file |\n| `word` | what to look for |\n\n"
        "The file is read **one line at a time**, so even a large log fits in memory."
    )

    def answer(route: Route) -> None:
        body = sse(
            ("started", {"message_id": "m1"}),
            ("delta", {"text": reply}),
            ("done", {"message_id": "m1", "finish_reason": "stop", "usage": {}}),
        )
        route.fulfill(status=200, content_type="text/event-stream", body=body)

    page.route("**/chat_stream", answer)
    send(page, "How do I count the lines of a file that contain a word, in Python?")
    wait_replies(page, 1)
    expect(last_reply(page).locator("code.hljs")).to_have_count(1)
    page.mouse.move(0, 0)
    page.locator("#input").blur()
    screenshot(page, "code")


# ---------------------------------------------------------------------- the vendored files


def test_the_vendored_files_are_served(echo_server: Server) -> None:
    page = resources.files("chatstream.web").joinpath("index.html").read_text(encoding="utf-8")
    loaded = re.findall(r'(?:src|href)="vendor/([^"]+)"', page)
    assert sorted(loaded) == sorted(VENDOR)  # everything the page loads, nothing more
    for name, (path, media_type) in VENDOR.items():
        response = httpx.get(f"{echo_server.base_url}/vendor/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media_type
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        vendored = resources.files("chatstream.web").joinpath("vendor", *path.split("/"))
        assert response.content == vendored.read_bytes()
        assert re.search(r"-\d+\.\d+\.\d+\.", name)  # the version is in the URL
    for name in (
        "README.md",
        "marked.umd.js",
        "marked%2Fmarked.umd.js",
        "..%2F..%2Fweb_ui.py",
        "marked-18.3.0.umd.js.map",
    ):
        response = httpx.get(f"{echo_server.base_url}/vendor/{name}")
        assert response.status_code == 404, name
    traversal = httpx.get(f"{echo_server.base_url}/vendor/marked/LICENSE")
    assert traversal.status_code == 404


def test_the_vendored_files_follow_the_script_s_role_and_selection() -> None:
    from starlette.testclient import TestClient

    from chatstream import ChatStream
    from chatstream.adapters.starlette import create_app

    name = next(iter(VENDOR))
    no_script = {
        "user": {
            "apis": {
                "allow": ["chat_stream", "webui_index"],
                "auth_method": "nothing",
                "use_session": True,
            },
        },
    }
    denied = ChatStream(use_mock_response=True, client_roles=no_script)
    with TestClient(create_app(denied, secret_key="test secret")) as client:
        assert client.get("/chatstream.js").status_code == 403
        response = client.get(f"/vendor/{name}")
        assert response.status_code == 403
        assert response.json()["detail"] == "Denied on role layer."
    # An API selection without the script has no vendor route either.
    chat = ChatStream(use_mock_response=True)
    app = create_app(chat, apis={"exclude": ["webui_js"]}, secret_key="test secret")
    with TestClient(app) as client:
        assert client.get(f"/vendor/{name}").status_code == 404
    # The original's append_apis gets the route with the script.
    from starlette.applications import Starlette

    original = ChatStream(use_mock_response=True)
    plain = Starlette()
    original.append_apis(plain, {"all": True})
    original.append_middlewares(plain, {"fast_session": {"secret_key": "test secret"}})
    with TestClient(plain) as client:
        response = client.get(f"/vendor/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"] == VENDOR[name][1]
